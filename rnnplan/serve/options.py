"""How a replica serves, checked where it is given (`rnnplan serve`'s flags, `rnnplan.serve.app`'s
arguments): a bad value is one line naming the field, before Ray starts anything."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field("auto", pattern="^(auto|numpy|cupy)$")
    max_batch: int = Field(32, ge=1, description="sequences a call, at most")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for more after its first request")
    max_body_mb: float = Field(64.0, gt=0, description="larger bodies get HTTP 413")
    # sequence counts a call is padded up to (ServedModel.batch_buckets); None: (8, max_batch) on a GPU
    batch_buckets: tuple[int, ...] | None = None
    bucket: int | None = Field(None, ge=1, description="lengths padded to multiples of this many steps")
    warm_up_steps: int = Field(0, ge=0, description="build every shape up to this length at start (needs bucket)")
    # "background": a new shape's executor builds on a worker thread, its calls run torch's module meanwhile
    build: str = Field("blocking", pattern="^(blocking|background)$")

    @model_validator(mode="after")
    def _consistent(self) -> ServeOptions:
        if self.batch_buckets is not None and (not self.batch_buckets or min(self.batch_buckets) < 1):
            raise ValueError(f"batch_buckets must be positive sequence counts, got {self.batch_buckets}")
        if self.warm_up_steps and self.bucket is None:
            raise ValueError("warm_up_steps needs bucket: without one every length up to it is a shape of its own")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def buckets_on(self, device: str) -> tuple[int, ...]:
        """The batch buckets a model on `device` uses."""
        if self.batch_buckets is not None:
            return tuple(sorted(set(self.batch_buckets)))
        return tuple(sorted({min(8, self.max_batch), self.max_batch})) if device == "cuda" else ()

"""`SharedResources`: what the executors of one network (one set of weights, many call shapes) hold
in common, so that an executor for a new shape costs little more than its plan.

- Param buffers: each weight laid out (`Weights.layout`) and moved to the backend once per
  (backend, device, dtype, tensor, transform), then shared read-only by every executor that binds
  it (`verify_plan` proves steps never write a param buffer). Without this, each new shape copied
  every weight to the device again (28 MiB for the paper configuration in fp32).
- On the NumPy backend, one workspace for every other buffer: executors run one at a time (`lock`)
  and every call writes what it reads before reading it (`verify_plan` proves that too, and `_load`
  writes inputs and states), so their activations can share memory. A fresh allocation of a new
  shape's buffers costs page faults on first touch (about 0.4 s for the 130 MB of the paper
  configuration on a slow host); the shared workspace is touched once, at the largest shape's size.

The owner (`rnnplan.compile`'s CompiledRNN) makes one, passes it to each Executor it builds, and
drops it when its weights change.
"""

from __future__ import annotations

import threading


class SharedResources:
    def __init__(self):
        self.params: dict[tuple, object] = {}  # (backend, device, dtype, source, transform) -> flat array
        self.workspaces: dict[str, object] = {}  # NumPy dtype name -> flat host array, grown as needed
        self._touched: dict[str, int] = {}  # bytes of each workspace that executors use (the rest is unmapped)
        self.lock = threading.Lock()  # held by a NumPy call that uses the workspace

    def param(self, key: tuple, make):
        """The flat array of `key`, made by `make()` the first time."""
        found = self.params.get(key)
        if found is None:
            found = self.params[key] = make()
        return found

    def workspace(self, dtype, size: int, empty):
        """A flat host array of at least `size` elements of `dtype` (`empty(n, dtype)` allocates), the
        same one for every executor while it is large enough. Allocated at twice the size asked for:
        the host maps pages as they are first touched, so the headroom costs nothing until a larger
        shape uses it, and then only its own growth. An executor made earlier keeps the array it was
        given alive, so the total stays within twice the largest shape's."""
        found = self.workspaces.get(dtype.name)
        if found is None or found.size < size:
            found = self.workspaces[dtype.name] = empty(2 * max(size, 0 if found is None else found.size), dtype)
        self._touched[dtype.name] = max(self._touched.get(dtype.name, 0), size * dtype.itemsize)
        return found

    @property
    def nbytes(self) -> int:
        # (lists: a build on `rnnplan.background`'s worker may add to the dicts meanwhile)
        return sum(a.nbytes for a in list(self.params.values())) + sum(list(self._touched.values()))

"""The cost model against a measured matrix: every plan a results.json (`rnnplan bench --out DIR`)
timed, planned again for the device as data and predicted by `rnnplan.lowering.cost`. Needs no GPU;
`benchmarks/cost_fit.py` prints it, tests/test_cost.py keeps the model's constants honest with it."""

from __future__ import annotations

from typing import NamedTuple

import rnnplan as rp
from rnnplan.bench.harness import DTYPES, MATHS, ROWS, config_of_label
from rnnplan.lowering.cost import predicted_ms
from rnnplan.spec import H200, DeviceShape


class Prediction(NamedTuple):
    row: str
    precision: str
    lowering: str
    measured_ms: float
    predicted_ms: float

    @property
    def ratio(self) -> float:
        return self.predicted_ms / self.measured_ms


def predictions(results: dict, device: DeviceShape = H200) -> list[Prediction]:
    """One Prediction per measured plan of a matrix's results (the graph lowering of every row, the
    persistent lowering where it ran); rows not among `harness.ROWS` are skipped."""
    specs = dict(ROWS)
    out = []
    for r in results["rows"]:
        if r["row"] not in specs:
            continue
        spec = rp.RNNSpec(**specs[r["row"]], dtype=DTYPES[r["precision"]])
        for lowering, measured in (("graph", r["rnnplan_ms"]), ("persistent", r.get("persistent_ms"))):
            if measured is None:
                continue
            options = rp.PlanOptions(math=MATHS[r["precision"]], lowering=lowering, device=device)
            out.append(Prediction(r["row"], r["precision"], lowering, measured,
                                  predicted_ms(rp.build_plan(spec, options=options))))
    return out


# benchmarks/crossover.py's configurations and precisions (its rows: each at T 100 and several batches)
CROSSOVER_CONFIGS = {
    "LSTM 1x512": dict(cell="lstm", num_layers=1, input_size=512, hidden_size=512),
    "LSTM 4x512": dict(cell="lstm", num_layers=4, input_size=512, hidden_size=512),
    "GRU 4x512": dict(cell="gru", num_layers=4, input_size=512, hidden_size=512),
}
CROSSOVER_PRECISIONS = ("fp16", "tf32")  # (storage and math: harness.DTYPES, MATHS)


def crossover_predictions(rows: list[dict], device: DeviceShape = H200) -> list[Prediction]:
    """One Prediction per lowering measured in `benchmarks/crossover.py`'s rows (its --out JSON),
    planned again for `device` and predicted now (not the predictions the file recorded)."""
    out = []
    for r in rows:
        math = MATHS[r["precision"]]
        spec = rp.RNNSpec(**CROSSOVER_CONFIGS[r["config"]], seq_len=100, batch=r["batch"], dtype=DTYPES[r["precision"]])
        for lowering in ("graph", "persistent"):
            if r.get(f"{lowering}_ms") is not None:
                plan = rp.build_plan(spec, options=rp.PlanOptions(math=math, lowering=lowering, device=device))
                out.append(Prediction(f"{r['config']} B{r['batch']}", r["precision"], lowering, r[f"{lowering}_ms"],
                                      predicted_ms(plan)))
    return out


def cluster_bench_predictions(results: dict, device: DeviceShape = H200) -> list[Prediction]:
    """One Prediction per kernel `benchmarks/cluster_bench.py` timed (its --out JSON) that the
    planner itself picks: the cluster hand-off ("cluster") where the planner takes it on `device`,
    the hand-off through global memory ("global") on `device` described without clusters."""
    plain = device.model_copy(update={"cluster_blocks": 0, "max_clusters": 0})
    out = []
    for r in results["rows"]:
        spec = rp.RNNSpec(**config_of_label(r["row"]), dtype=DTYPES[r["precision"]])
        for name, on in (("cluster", device), ("global", plain)):
            if r.get(f"{name}_ms") is None:
                continue
            plan = rp.build_plan(spec, options=rp.PlanOptions(lowering="persistent", math=MATHS[r["precision"]], device=on))
            if next(s.recurrence for s in plan.steps if s.recurrence).cluster == (name == "cluster"):
                out.append(Prediction(r["row"], r["precision"], name, r[f"{name}_ms"], predicted_ms(plan)))
    return out


def within(preds: list[Prediction], lowering: str, tolerance: float = 0.25) -> tuple[int, int]:
    """(how many of `lowering`'s predictions lie within `tolerance` of the measured time, how many)."""
    sel = [p for p in preds if p.lowering == lowering]
    return sum(abs(p.ratio - 1) <= tolerance for p in sel), len(sel)


def ranked_right(preds: list[Prediction]) -> tuple[int, int]:
    """Of the rows where both lowerings were measured: (how many the model ranks as measured, how many)."""
    both: dict[tuple[str, str], dict[str, Prediction]] = {}
    for p in preds:
        both.setdefault((p.row, p.precision), {})[p.lowering] = p
    pairs = [d for d in both.values() if len(d) == 2]
    right = sum((d["persistent"].measured_ms < d["graph"].measured_ms)
                == (d["persistent"].predicted_ms < d["graph"].predicted_ms) for d in pairs)
    return right, len(pairs)

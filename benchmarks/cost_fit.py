"""How well the planner's cost model predicts measured times: every plan of a benchmark matrix's
results.json (`rnnplan bench --out DIR`) planned again for the H200 as data, simulated with the cost
model (`rnnplan.lowering.cost`) and set beside the measured milliseconds (`rnnplan.bench.predictions`).

    python3 benchmarks/cost_fit.py [RESULTS.json ...]

One line per (row, precision, lowering), then how many predictions lie within 25% (issue 19, item 6)
and how many rows the model ranks as measured. Needs no GPU.
"""

import json
import sys
from pathlib import Path

from rnnplan.bench.predictions import predictions, ranked_right, within

DEFAULT = Path(__file__).parent / "results/2026-12-02-h200/issue19-cluster/results.json"


def main() -> None:
    for f in sys.argv[1:] or [DEFAULT]:
        preds = predictions(json.loads(Path(f).read_text()))
        print(f"{f}\n{'row':40} {'prec':5} {'lowering':10} {'measured':>9} {'predicted':>9} {'ratio':>6}")
        for p in preds:
            mark = "" if abs(p.ratio - 1) <= 0.25 else "  <- off"
            print(f"{p.row[:40]:40} {p.precision:5} {p.lowering:10} {p.measured_ms:9.3f} {p.predicted_ms:9.3f} "
                  f"{p.ratio:6.2f}{mark}")
        for lowering in ("graph", "persistent"):
            print("{}: {} of {} within 25%".format(lowering, *within(preds, lowering)))
        print("ranked as measured (both lowerings): {} of {}".format(*ranked_right(preds)))


if __name__ == "__main__":
    main()

"""GPU benchmark: the paper's ablation and rnnplan against cuDNN (see rnnplan/bench/matrix.py).

    python benchmarks/gpu_bench.py [--quick] [--repeats N] [--out DIR]
"""

import argparse

from rnnplan.bench.matrix import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    main(quick=a.quick, out=a.out, repeats=a.repeats)

"""The package's shape, kept in CI (as tinygrad keeps its size): no import cycles, who may import
what, one home per idea, and a size budget.

The import graph counts every import of an rnnplan module, at module level or inside a function.
"""

import ast
import re
from pathlib import Path
from typing import get_args

import networkx as nx
import pytest

import rnnplan as rp
from rnnplan.ir.cells import CELLS
from rnnplan.spec import Cell

PACKAGE = Path(rp.__file__).parent
MODULES = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted(PACKAGE.rglob("*.py"))}
# The size budget: lines of Python in the package, lines of one module, and lines of CUDA written
# inside Python strings (the rest lives in .cu/.cuh files). Raise a budget only on purpose.
PACKAGE_LINES = 10480  # 6800 until issues 17 (autotuning, calls by pointers, shared resources, packed calls) and 18;
# 7900 until the driver-API launches of issue 17 (backends/driver_launch.py, KernelCall) and reused autotune choices;
# 8200 until the copy-in as a node of the plan's graph (now GraphWithKernels) and the driver's replay of cuDNN's graph;
# 8400 until serving (issue 20: rnnplan/serve, about 560 lines); 9000 until the cluster hand-off (issue 19: the
# cluster's fit, choice and launch checks, about 50 lines); 9100 until one launch a call (both copies as nodes of
# the plan's or cuDNN's graph, the outputs made a call ahead: about 130 lines); 9200 until the fitted cost model
# (issue 19, item 6: the persistent kernel's rounds, per-level contention, about 80 lines) and its check against a
# measured matrix (bench/predictions.py, about 60); 9400 until background builds (issue 17, item 2: the worker, the
# stand-in, candidates.py's docstring, about 170); 9650 until one allocation a call's outputs and the copy-out's
# pointers relayed by the copy-in node (issue 17, item 4: about 40); 9750 until the cost model's check against
# cluster_bench's kernels (bench: row labels read back, predictions of both hand-offs, about 30); 9800 until the
# compiled call path's loader, tables and autotune's timing through it (issue 17, item 4: compiled_calls.py, the
# drop-in's hooks, captured_call, about 210); 10050 until a compiled module's copies (deepcopy, pickle, torch.save
# with its caches empty: about 20); 10100 until the matrix's interleaved rounds (cuDNN graph's spread, the rows slower
# than it: about 45); 10150 until packed calls and cuDNN's stateless twin on the compiled call path (issue 17,
# items 3 and 6: packed_launches, the twin's capture, entries by the calls they take: about 40); 10200 until
# `rnnplan bench --rows/--precisions` (the rows picked by label: about 25); 10230 until plans extended by whole
# periods (issue 17, item 2: lowering/extend.py and the planner's use of it, about 240)
MODULE_LINES = 400
CUDA_IN_PYTHON_LINES = 80
# Top-level modules that meet the machine: they may import the backends (and the CLI, CuPy).
MAY_IMPORT_BACKENDS = {"rnnplan", "rnnplan.api", "rnnplan.executor", "rnnplan.cli", "rnnplan.dropin", "rnnplan.candidates",
                       "rnnplan.torch_calls", "rnnplan.compiled_calls"}


def _imports(module: str, path: Path) -> set[str]:
    """Every rnnplan module `module` imports, anywhere in its source. `from X import Y` imports X (Python
    runs X's __init__ first) and, when Y is a submodule, X.Y too."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in found if m == "rnnplan" or m.startswith("rnnplan.")} | (
        {"cupy"} if any(m == "cupy" or m.startswith("cupy.") for m in found) else set())


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def test_no_import_cycles():
    graph = nx.DiGraph([(m, i) for m, imports in IMPORTS.items() for i in imports if i in MODULES and i != m])
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_spec_imports_nothing_of_rnnplan():
    assert IMPORTS["rnnplan.spec"] == set() and IMPORTS["rnnplan.precision"] == set()


def test_only_the_backends_import_cupy_or_the_backends():
    """The IR, the passes, the lowering, the persistent kernel's home and the views run with no GPU:
    the device reaches the planner as data (PlanOptions.device)."""
    for module, imports in IMPORTS.items():
        if module.startswith("rnnplan.backends"):
            continue
        if module in MAY_IMPORT_BACKENDS:
            continue
        assert "cupy" not in imports, module
        assert not any(i.startswith("rnnplan.backends") for i in imports), module


@pytest.mark.parametrize("layer, below", [
    ("rnnplan.ir", ("rnnplan.ir", "rnnplan.spec", "rnnplan.precision")),
    ("rnnplan.passes", ("rnnplan.ir", "rnnplan.passes", "rnnplan.spec")),
    ("rnnplan.persistent", ("rnnplan.ir", "rnnplan.persistent", "rnnplan.spec", "rnnplan.precision")),
    ("rnnplan.lowering", ("rnnplan.ir", "rnnplan.passes", "rnnplan.persistent", "rnnplan.lowering", "rnnplan.spec",
                          "rnnplan.precision")),
    ("rnnplan.viz", ("rnnplan.ir", "rnnplan.persistent", "rnnplan.lowering", "rnnplan.viz")),
    # a model read becomes a torch module, then the drop-in
    ("rnnplan.importers", ("rnnplan.importers", "rnnplan.dropin", "rnnplan.spec")),
    # serving: a model file read into the drop-in, behind batching and Ray Serve
    ("rnnplan.serve", ("rnnplan.serve", "rnnplan.dropin", "rnnplan.importers", "rnnplan.weights", "rnnplan.spec")),
])
def test_each_stage_imports_only_the_stages_before_it(layer, below):
    for module, imports in IMPORTS.items():
        if module == layer or module.startswith(layer + "."):
            strays = [i for i in imports if not i.startswith(below)]
            assert not strays, f"{module} imports {strays}"


def test_the_plan_is_a_pure_schema():
    assert IMPORTS["rnnplan.lowering.plan"] <= {"rnnplan.ir.node", "rnnplan.ir.recurrence", "rnnplan.spec"}


def test_every_cell_a_spec_can_name_is_defined_once():
    assert set(get_args(Cell)) == set(CELLS)


def test_size_budget():
    lines = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert sum(lines.values()) <= PACKAGE_LINES, f"the package has {sum(lines.values())} lines of Python"
    big = {m: n for m, n in lines.items() if n > MODULE_LINES}
    assert not big, f"modules over {MODULE_LINES} lines: {big}"


# A line of CUDA: a statement or block edge at its end, or CUDA's own words. (viz/dot.py writes
# Graphviz's DOT, whose statements also end in ";", and is not counted.)
_CUDA_LINE = re.compile(r"[;{}]\s*$|__device__|__global__|#define|#include|\bconst float\b|\bfloat\*")


def _cuda_lines_in_strings(path: Path) -> int:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    count = 0
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        else:
            continue
        count += sum(1 for line in text.splitlines() if _CUDA_LINE.search(line))
    return count


def test_cuda_lives_in_cuda_files():
    """Static CUDA is in .cu/.cuh package data; Python writes #define headers and generates the fused
    pointwise kernels from the ops' C forms, and holds little CUDA text itself."""
    per_module = {m: _cuda_lines_in_strings(p) for m, p in MODULES.items() if m != "rnnplan.viz.dot"}
    total = sum(per_module.values())
    assert total <= CUDA_IN_PYTHON_LINES, {m: n for m, n in per_module.items() if n}
    for name in ("ffma.cu", "mma.cu", "persistent.cuh", "prologue.cuh", "cell_step.cuh"):
        assert (PACKAGE / "persistent" / "cuda" / name).is_file()
    assert (PACKAGE / "backends" / "cuda" / "pointwise.cuh").is_file()

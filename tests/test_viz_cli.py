"""Plan inspection: summary and DOT goldens, DOT rendering, JSON round trip and rejection,
wavefront picture, predicted timeline, and the command line through a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnplan as rp
from rnnplan.lowering import (  # the planner itself: hardware-free
    PlanError,
    build_graph,
    build_plan,
)
from rnnplan.viz import predicted_trace, render, save_wavefront_png, summarize, to_dot
from tests.helpers import subprocess_env

GOLDEN = Path(__file__).parent / "golden"
TINY = rp.RNNSpec(cell="lstm", input_size=3, hidden_size=4, num_layers=2, seq_len=3, batch=2)
UPDATE = os.environ.get("RNNPLAN_UPDATE_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; RNNPLAN_UPDATE_GOLDEN=1 rewrites it after review"


@pytest.fixture(scope="module")
def tiny():
    return build_plan(TINY, options=rp.PlanOptions(input_chunk=2, lowering="graph"))  # the same on any machine


def test_summary_golden(tiny):
    golden("tiny_summary.txt", summarize(tiny) + "\n")


def test_graph_dump_golden():
    golden("tiny_graph.txt", str(build_graph(TINY, rp.PlanOptions(input_chunk=2, lowering="graph"))) + "\n")


def test_dot_goldens(tiny):
    golden("tiny_op.dot", to_dot(tiny))
    golden("tiny_cell.dot", to_dot(tiny, view="cell"))


def test_dot_structure(tiny):
    dot = to_dot(tiny)
    assert dot.count("subgraph cluster_stream") == tiny.stats.streams
    assert dot.count("style=dashed") == tiny.stats.waits  # one event edge per wait
    assert dot.count("rank=same") == tiny.stats.critical_path
    assert "#9ecae1" in dot and "#fdae6b" in dot  # gemm and fused colours
    small = to_dot(build_plan(rp.PAPER_SPEC), view="cell", max_steps=3)
    assert small.count("step ") == 4 * 3


@pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                    reason="Graphviz not installed (CI installs it)")
def test_dot_renders_with_graphviz(tiny, tmp_path):
    for view in ("op", "cell"):
        svg = render(to_dot(tiny, view), tmp_path / f"{view}.svg")
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert render(to_dot(tiny), tmp_path / "op.png").read_bytes()[:4] == b"\x89PNG"


def test_render_without_graphviz_says_how_to_install(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        render(to_dot(tiny), tmp_path / "x.svg")
    with pytest.raises(ValueError, match="view must be"):
        to_dot(tiny, view="layer")


def test_json_round_trip_is_exact(tiny):
    text = tiny.to_json()
    back = rp.load_plan(text)
    assert back == tiny and back.to_json() == text
    assert json.loads(text)["schema_version"] == 1


def test_json_rejections(tiny):
    raw = json.loads(tiny.to_json())
    with pytest.raises(PlanError, match="malformed"):
        rp.load_plan("{not json")
    with pytest.raises(PlanError, match="schema_version is 2"):
        rp.load_plan(json.dumps({**raw, "schema_version": 2}))
    with pytest.raises(PlanError, match="does not match the schema"):
        rp.load_plan(json.dumps({**raw, "steps": "many"}))
    waiting = next(i for i, s in enumerate(raw["steps"]) if s["waits"])
    raw["steps"][waiting]["waits"] = []  # hand-edited: drop an event wait
    with pytest.raises(PlanError, match="no event or stream order"):
        rp.load_plan(json.dumps(raw))


def test_wavefront_png(tiny, tmp_path):
    path = save_wavefront_png(tiny, tmp_path / "w.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000


def test_predicted_trace(tiny):
    trace = predicted_trace(tiny)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(tiny.steps)
    assert {e["tid"] for e in spans} == set(range(tiny.num_streams))
    end = {e["name"]: e["ts"] + e["dur"] for e in spans}
    for e, step in zip(spans, tiny.steps):
        for d in step.deps:  # a step starts after the steps it depends on end
            assert e["ts"] >= end[tiny.steps[d].name] - 1e-6


def test_measured_trace_numpy(tiny):
    ex = rp.Executor(tiny, rp.Weights.random(TINY), backend="numpy")
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    trace = ex.trace(x)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(tiny.steps) and trace["otherData"]["source"] == "measured on numpy"
    starts = [e["ts"] for e in spans]
    assert starts == sorted(starts) and all(e["dur"] > 0 for e in spans)


# ---- command line, through a subprocess -------------------------------------------------------------


def cli(*args, cwd=None):
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "rnnplan.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


TINY_FLAGS = ["--input-size", "3", "--hidden-size", "4", "--layers", "2", "--seq-len", "3", "--batch", "2"]


def test_cli_help_has_examples():
    r = cli("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "rnnplan plan" in r.stdout


def test_cli_plan_writes_everything(tmp_path):
    files = {f: tmp_path / f for f in ("p.json", "p.dot", "p.png", "t.json")}
    r = cli("plan", *TINY_FLAGS, "--input-chunk", "2", "--json", str(files["p.json"]), "--dot",
            str(files["p.dot"]), "--png", str(files["p.png"]), "--trace", str(files["t.json"]))
    assert r.returncode == 0, r.stderr
    assert "critical path" in r.stdout and all(p.exists() for p in files.values())
    assert rp.load_plan(files["p.json"].read_text()).spec == TINY


def test_cli_run_numpy_prints_shape_checksum_time(tmp_path):
    w = rp.Weights.random(TINY, seed=3).save(tmp_path / "w.npz")
    r = cli("run", *TINY_FLAGS, "--backend", "numpy", "--weights", str(w), "--passes", "none",
            "--trace", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    assert "shape (3, 2, 4)" in r.stdout and "checksum" in r.stdout and "ms per forward" in r.stdout
    assert json.loads((tmp_path / "t.json").read_text())["otherData"]["source"] == "measured on numpy"


@pytest.mark.parametrize("args, message", [
    (["plan", "--passes", "fuse_all"], "unknown pass name"),
    (["plan", "--hidden-size", "0"], "hidden_size"),
    (["plan", "--seq-len", "4", "--input-chunk", "9"], "input_chunk must be in 1..seq_len=4"),
    (["plan", "--streams", "0"], "num_streams"),
    (["run", "--weights", "/nonexistent/w.npz", "--backend", "numpy"], "cannot read weights"),
    (["plan", "--cell", "transformer"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_errors_are_one_line(args, message):
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_cli_missing_graphviz_is_one_line(tmp_path):
    env = subprocess_env(PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "rnnplan.cli", "plan", *TINY_FLAGS, "--svg", str(tmp_path / "x.svg")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "install graphviz" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_run_takes_the_architecture_the_weights_file_records(tmp_path):
    import torch

    path = rp.Weights.from_torch(torch.nn.GRU(7, 16, 2, bidirectional=True).eval()).save(tmp_path / "gru.npz")
    r = cli("run", "--weights", str(path), "--seq-len", "3", "--batch", "2", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert "spec        gru 2x16 in=7 B=2 T=3 bidir float32" in r.stdout and "shape (3, 2, 32)" in r.stdout
    r = cli("run", "--weights", str(path), "--seq-len", "3", "--hidden-size", "8", "--backend", "numpy")
    assert r.returncode == 2 and "hyper-parameter hidden_size: weights come from a module with hidden_size=16" in r.stderr

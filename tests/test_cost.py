"""The cost model (rnnplan.lowering.cost): its constants reproduce the measured H200 matrix, and its
terms move the way the hardware does."""

import dataclasses
import json
from pathlib import Path

import rnnplan as rp
from rnnplan.bench.predictions import (
    cluster_bench_predictions,
    crossover_predictions,
    predictions,
    ranked_right,
    within,
)
from rnnplan.lowering.cost import CostModel, durations, predicted_ms, simulate
from rnnplan.spec import H200

RESULTS = Path(__file__).parent.parent / "benchmarks/results"
MATRIX = RESULTS / "2026-12-02-h200/issue19-cluster/results.json"
LATER_MATRIX = RESULTS / "2026-12-03-h200/matrix-tenth/results.json"
CROSSOVER = RESULTS / "2026-12-03-h200/issue19-cost-model/crossover.json"
NEWEST_MATRIX = RESULTS / "2026-12-03-h200/matrix-twelfth/results.json"
HAND_OFFS = RESULTS / "2026-12-03-h200/issue19-mbarrier/cluster_any_shape.json"
COMPILED_CALLS_MATRIX = RESULTS / "2026-12-04-h200/issue17-compiled-calls/matrix/results.json"


def test_the_model_predicts_the_measured_matrix():
    """Issue 19, item 6: each lowering's time within 25% on the benchmark rows, and the faster of
    the two lowerings named right wherever both ran (the file the constants were fitted to)."""
    preds = predictions(json.loads(MATRIX.read_text()))
    graph, persistent = within(preds, "graph"), within(preds, "persistent")
    assert graph[1] == 48 and persistent[1] == 26
    assert graph[0] >= 46, [p for p in preds if p.lowering == "graph" and abs(p.ratio - 1) > 0.25]
    assert persistent[0] == persistent[1], [p for p in preds if p.lowering == "persistent" and abs(p.ratio - 1) > 0.25]
    right, pairs = ranked_right(preds)
    assert right == pairs == 26


def test_the_model_predicts_the_later_matrix_and_the_crossover_rows():
    """The same on a matrix measured a day later and on batches 8-256 (the operand-type GEMM terms
    were fitted with these too): 44 of 48 and 26 of 26 there, 48 of 48 and 30 of 32 here; the faster
    lowering named right on every pair but one crossover row (LSTM 1x512 B96 fp16: persistent predicted
    0.79 ms against 0.87, measured 1.01 against 0.82). Of the two persistent misses, LSTM 1x512 B16
    fp16 was measured on the hand-off through global memory, and the planner now plans the cluster
    hand-off there (predicted 0.27 ms; measured on the cluster kernel 0.32, test below)."""
    later = predictions(json.loads(LATER_MATRIX.read_text()))
    assert within(later, "graph") >= (44, 48) and within(later, "persistent") == (26, 26)
    assert ranked_right(later) == (26, 26)
    cross = crossover_predictions(json.loads(CROSSOVER.read_text()))
    assert within(cross, "graph") == (48, 48) and within(cross, "persistent") >= (30, 32)
    right, pairs = ranked_right(cross)
    assert pairs == 32 and right >= pairs - 1, [p for p in cross]


def test_the_model_predicts_the_newest_matrix_and_both_hand_offs():
    """After the cluster hand-off's mbarriers (twelfth session; `cluster_handoff_us` and
    `cluster_layer_wait_us` fitted to its cluster_bench run): the matrix measured with it, and every
    kernel cluster_bench timed that the planner picks, both hand-offs, 13 configurations x fp16, bf16,
    tf32 (the one miss: LSTM 2x256 B8 fp16 through global memory, predicted 1.26x)."""
    newest = predictions(json.loads(NEWEST_MATRIX.read_text()))
    assert within(newest, "graph") >= (44, 48) and within(newest, "persistent") == (26, 26)
    assert ranked_right(newest) == (26, 26)
    kernels = cluster_bench_predictions(json.loads(HAND_OFFS.read_text()))
    assert within(kernels, "cluster") == (20, 20), [p for p in kernels if p.lowering == "cluster"]
    assert within(kernels, "global") >= (44, 45), [p for p in kernels if abs(p.ratio - 1) > 0.25]


def test_the_model_predicts_the_matrix_of_the_compiled_call_path():
    """The matrix of 2026-12-04 (rnnplan's lowerings unchanged, the compiled module's repeat calls in
    C++), not fitted to: the graph rows' five misses are the structural ones (1x2048's L2, the
    paper's fp16/bf16 graph, 3x1024 proj B4 fp32)."""
    preds = predictions(json.loads(COMPILED_CALLS_MATRIX.read_text()))
    assert within(preds, "graph") >= (43, 48) and within(preds, "persistent") == (26, 26)
    assert ranked_right(preds) == (26, 26)


def _plan(lowering, **kw):
    spec = rp.RNNSpec(**{"cell": "lstm", "input_size": 256, "hidden_size": 256, "num_layers": 2, "batch": 8,
                         "seq_len": 20, "dtype": "float16"} | kw)
    return rp.build_plan(spec, options=rp.PlanOptions(lowering=lowering, device=H200))


def test_concurrent_kernels_share_the_gpu():
    """Kernels of one wavefront level last at least `contention` x the level's summed work: with no
    contention the same plan is predicted faster, never slower."""
    plan = _plan("graph", batch=256, num_layers=4)
    free = predicted_ms(plan, dataclasses.replace(CostModel.for_plan(plan), contention=0.0))
    assert free < predicted_ms(plan)


def test_graph_replay_against_python_launches():
    """Launched from Python (7 us a kernel), the graph lowering is predicted slower than replayed."""
    plan = _plan("graph")
    assert predicted_ms(plan, CostModel.for_plan(plan, graph_replay=False)) > predicted_ms(plan)


def test_persistent_time_grows_by_rounds():
    """The recurrent kernel costs its set-up plus a round per wavefront step: 20 more steps, 20 more
    rounds, whatever the rest of the plan."""
    short, long = _plan("persistent"), _plan("persistent", seq_len=40)
    model = CostModel()
    rec = [d for d, s in zip(durations(short, model), short.steps) if s.recurrence is not None][0]
    rec_long = [d for d, s in zip(durations(long, model), long.steps) if s.recurrence is not None][0]
    per_round = (rec_long - rec) / 20
    assert per_round > model.handoff_us * 0.5
    assert abs(rec - (model.persistent_setup_us + 21 * per_round)) < 1e-6  # 2 layers: 20 + 1 rounds


def test_simulation_orders_every_dependency():
    """A step starts no earlier than the steps it waits on end (streams and events as issued)."""
    plan = _plan("graph", num_layers=3)
    times = simulate(plan)
    recorded = {s.record: i for i, s in enumerate(plan.steps) if s.record is not None}
    for (start, end), s in zip(times, plan.steps):
        assert end > start
        for e in s.waits:
            assert start >= times[recorded[e]][1]


def test_row_labels_read_back_as_their_configurations():
    """Results files name rows by label: `config_of_label` inverts `config` on every matrix row
    (notes, projections, bidirectional) and refuses what is not a label."""
    import pytest

    from rnnplan.bench.harness import ROWS, config, config_of_label

    for label, kw in ROWS + [config("lstm", 1, 512, 8, bidirectional=True), config("gru", 2, 256, 4, seq_len=7)]:
        assert config_of_label(label) == kw, label
    with pytest.raises(ValueError, match="not a benchmark row label"):
        config_of_label("LSTM 512 B8")

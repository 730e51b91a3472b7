"""`rnnplan bench` on a machine without a GPU: which rows it runs (`selected`, the command line's
--rows and --precisions, named errors before anything is built) and its table of interleaved rounds
(cuDNN graph's spread, each ratio's range, the rows slower than cuDNN graph by more than it)."""

import json
from pathlib import Path

import pytest

from rnnplan.bench.harness import PRECISIONS, ROWS
from rnnplan.bench.matrix import _markdown, selected
from rnnplan.cli import main

MATRIX = Path(__file__).parents[1] / "benchmarks/results/2026-12-04-h200/issue17-compiled-calls/matrix/results.json"


def test_rows_are_picked_by_label_and_precision():
    assert len(selected()) == len(ROWS) * len(PRECISIONS) and len(selected(quick=True)) == 2 * len(PRECISIONS)
    paper = selected(rows=["paper"], precisions=["fp32", "tf32"])
    assert [(label.split(" (")[0], p) for label, _, p in paper] == [("LSTM 4x512 B64 T100", "fp32"),
                                                                   ("LSTM 4x512 B64 T100", "tf32")]
    assert paper[0][1]["num_layers"] == 4 and paper[0][1]["batch"] == 64
    b8 = {label for label, _, _ in selected(rows=["B8 ", "GRU"])}
    assert b8 == {label for label, _ in ROWS if "B8 " in label or "GRU" in label} and len(b8) == 4
    with pytest.raises(ValueError, match="no benchmark row's label contains 'B7'; the rows are LSTM 4x512"):
        selected(rows=["B7"])
    with pytest.raises(ValueError, match=r"precisions \['fp8'\] unknown"):
        selected(precisions=["fp8"])


def test_the_command_line_names_a_bad_selection_before_looking_for_a_gpu(capsys):
    assert main(["bench", "--rows", "B7"]) == 2
    assert "rnnplan bench: error: no benchmark row's label contains 'B7'" in capsys.readouterr().err
    assert main(["bench", "--rows", "paper", "--precisions", "fp8"]) == 2
    assert "precisions ['fp8'] unknown" in capsys.readouterr().err


def test_the_table_shows_the_spread_and_the_rows_slower_than_it():
    stored = json.loads(MATRIX.read_text())
    row = stored["rows"][0]  # paper fp32, measured before the rounds: no spread
    timed = dict(row, rounds={"cudnn_graph": [1.80, 1.81, 1.79], "compiled": [1.83, 1.82, 1.84]},
                 cudnn_graph_noise=0.02 / 1.80, compiled_vs_cudnn_graph=1.80 / 1.83)
    within = dict(timed, row="within", compiled_vs_cudnn_graph=0.99, cudnn_graph_noise=0.02)
    text = _markdown(stored["environment"], [], [row, timed, within])
    lines = text.splitlines()
    assert "ablation" not in text  # (none run: rows picked by label)
    assert "| 4.688 | - | 0.96x |" in lines[-5] and "(0.9" not in lines[-5]  # no rounds: no spread, no range
    assert "| 1.1% |" in lines[-4] and "0.98x (0.97-0.99)" in lines[-4]
    assert lines[-1] == ("Rows where the compiled module is slower than cuDNN graph by more than cuDNN graph's "
                         "spread: 1 of 3; LSTM 4x512 B64 T100 (paper) fp32 0.98x (spread 1.1%).")
    assert "ablation step" in _markdown(stored["environment"], stored["ablation"], [row])

"""One before/after golden per pass (TVM's habit), on a tiny spec: the graph a pass receives (the naive
graph after the passes its record says it must follow) and the graph it returns, as one-line-per-node
dumps in tests/golden/passes/. A change to what a pass does shows up here as a reviewed diff;
RNNPLAN_UPDATE_GOLDEN=1 rewrites the files."""

import os
from pathlib import Path

import pytest

import rnnplan as rp
from rnnplan.ir import build, verify
from rnnplan.passes import REGISTRY, run_passes

GOLDEN = Path(__file__).parent / "golden" / "passes"
TINY = rp.RNNSpec(cell="lstm", input_size=3, hidden_size=2, num_layers=2, seq_len=2, batch=1)
OPTIONS = rp.PlanOptions(input_chunk=2, lowering="graph")
UPDATE = os.environ.get("RNNPLAN_UPDATE_GOLDEN") == "1"


def before_and_after(name: str) -> tuple[str, str, str]:
    needs = REGISTRY[name].after
    before = run_passes(build(TINY), needs, OPTIONS)
    after = verify(REGISTRY[name].run(before, OPTIONS))
    header = f"# {name} on {TINY.short()}, input_chunk=2; before it: build + {list(needs) or 'nothing'}\n"
    return header, str(before), str(after)


@pytest.mark.parametrize("name", rp.PASSES)
def test_pass_golden(name):
    header, before, after = before_and_after(name)
    text = f"{header}\n## before\n{before}\n\n## after\n{after}\n"
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed; RNNPLAN_UPDATE_GOLDEN=1 rewrites it after review"
    assert before != after  # every pass changes the tiny graph


def test_passes_must_follow_what_their_records_say():
    from rnnplan.passes import check_order

    with pytest.raises(ValueError, match=r"pass pretranspose must run after \['combine_gates'\]"):
        check_order(["pretranspose", "combine_gates"])
    with pytest.raises(ValueError, match="pass wavefront_streams must run after"):
        run_passes(build(TINY), ["wavefront_streams", "fuse_pointwise"], OPTIONS)
    with pytest.raises(ValueError, match=r"unknown pass name\(s\) \['fuse'\]"):
        check_order(["fuse"])
    assert check_order(["fuse_pointwise", "combine_gates"]) == ("fuse_pointwise", "combine_gates")  # no constraint
    assert check_order(rp.PASSES) == rp.PASSES
    assert [n for n, p in REGISTRY.items() if p.step_local] == ["combine_gates", "pretranspose", "fuse_pointwise"]

import pytest
from pydantic import ValidationError

import rnnplan as rp


def test_defaults_and_json_round_trip():
    spec = rp.RNNSpec(cell="gru", input_size=7, hidden_size=13, num_layers=2, seq_len=5, batch=3,
                      bidirectional=True)
    assert (spec.bias, spec.batch_first, spec.dtype) == (True, False, "float32")
    assert rp.RNNSpec.model_validate_json(spec.model_dump_json()) == spec
    assert hash(spec) == hash(rp.RNNSpec.model_validate_json(spec.model_dump_json()))


@pytest.mark.parametrize("field, value", [
    ("cell", "transformer"), ("input_size", 0), ("hidden_size", -1), ("num_layers", 0),
    ("seq_len", 0), ("batch", 0), ("dtype", "float64"), ("hidden_size", 2.5)])
def test_invalid_field_is_named(field, value):
    kw = dict(cell="lstm", input_size=4, hidden_size=4, num_layers=1, seq_len=2, batch=1)
    with pytest.raises(ValidationError) as e:
        rp.RNNSpec(**{**kw, field: value})
    assert e.value.errors()[0]["loc"] == (field,)


def test_extra_field_is_rejected_and_spec_is_frozen():
    with pytest.raises(ValidationError, match="hiden_size"):
        rp.RNNSpec(cell="lstm", input_size=4, hiden_size=4, hidden_size=4, num_layers=1, seq_len=2, batch=1)
    with pytest.raises(ValidationError):
        rp.PAPER_SPEC.batch = 3


def test_paper_spec():
    s = rp.PAPER_SPEC
    assert (s.cell, s.num_layers, s.hidden_size, s.input_size, s.batch, s.seq_len) == ("lstm", 4, 512, 512, 64, 100)

"""The examples run as a user would run them, and check themselves (they assert their outputs)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import subprocess_env

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "relative difference" in r.stdout


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"speech_model.py", "streaming.py"}

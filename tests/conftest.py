"""Test-wide set-up: tests not marked `gpu` plan as on a machine without a GPU, wherever they run.

`lowering="auto"`, the default, reads the local GPU, so the same CPU test would otherwise plan the
graph lowering on a CPU machine and the persistent one on a GPU machine. Tests marked `gpu` see the
real device. (Tests that run the CLI in a subprocess see the real machine; they pass on both.)
"""

import pytest

from rnnplan.scheduler import persistent


@pytest.fixture(autouse=True)
def _cpu_tests_plan_without_a_gpu(request, monkeypatch):
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(persistent, "local_device", lambda: None)

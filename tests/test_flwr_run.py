"""End to end: ``flwr run`` of the digits app in Ray simulation.

Starts Flower's local SuperLink under a project-local FLWR_HOME on free loopback
ports, with runtime dependency installation off, and stops the processes it
started, by PID.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flchain_flwr.deploy.processes import is_running
from flchain_flwr.sim.local_run import flwr_run_local, processes_of


@pytest.mark.e2e
def test_flwr_run_of_the_app_in_ray_simulation(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    results = tmp_path / "history.json"
    run = flwr_run_local(
        "apps/flchain_cnn",
        flwr_home=home,
        num_supernodes=4,
        run_config={
            "num-server-rounds": 3,
            "buffer-size": 2,
            "results-path": str(results),
        },
        timeout=420,
    )
    assert run.returncode == 0, run.output[-3000:]
    assert "[VERSION 3/3]" in run.output
    assert "final accuracy:" in run.output
    assert results.is_file()
    assert run.stopped_pids, "the local SuperLink was not found"
    assert not [pid for pid in processes_of(home) if is_running(pid)]

"""End to end: ``flwr run`` of the app in Ray simulation with personalisation
on, so the mod's state must survive in ``Context.state`` between a node's
messages as Flower's own runtime keeps it (not only the virtual grid)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flchain_flwr.deploy.processes import is_running
from flchain_flwr.sim.local_run import flwr_run_local, processes_of


@pytest.mark.e2e
def test_flwr_run_reports_personalised_accuracy(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    run = flwr_run_local(
        "apps/flchain_cnn",
        flwr_home=home,
        num_supernodes=4,
        run_config={
            "num-server-rounds": 4,
            "buffer-size": 2,
            "personal-alpha": 0.5,
            "fraction-evaluate": 1.0,
            "evaluate-every": 2,
            "tier-classes": "0,1,2,3;4,5,6;7,8,9",
        },
        timeout=420,
    )
    assert run.returncode == 0, run.output[-3000:]
    assert "'personal-eval-acc'" in run.output
    # each of the four nodes evaluated (one not trained yet reports the global
    # model's metrics as its personal ones); each tier holds its own classes,
    # so the mix, on each node's own label mix, is ahead of the global model
    summary = re.search(
        r"Personalised eval-acc over (\d+) nodes .*: mean ([\d.]+), global model "
        r"([\d.]+)",
        run.output,
    )
    assert summary is not None, run.output[-3000:]
    assert int(summary.group(1)) == 4
    personal, plain = float(summary.group(2)), float(summary.group(3))
    assert 0.0 <= plain < personal <= 1.0
    assert not [pid for pid in processes_of(home) if is_running(pid)]

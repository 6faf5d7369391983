"""Anchoring in a loopback deployment: two ``flwr run``s and a trading subchain
anchored into one main chain through three witness SuperNodes (2-of-3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flchain_flwr.deploy.e2e_anchor import run_anchor_scenario
from flchain_flwr.deploy.processes import is_running

APP = Path(__file__).resolve().parent.parent / "apps" / "flchain_cnn"


@pytest.mark.e2e
def test_two_runs_and_a_market_anchor_into_one_main_chain(tmp_path: Path) -> None:
    """TLS, node auth, witness SuperNodes found by their keys and never trained,
    runs without the main key spooling anchor requests that `main ingest`
    appends (twice: a no-op), anchors from both runs and the market in one
    witnessed main chain, every witness
    keeping every origin, and the CLI checks (main verify, verify
    --anchored-in, model prove/verify) passing; every process stopped."""
    report = run_anchor_scenario(APP, tmp_path)
    assert report.error == "", report.as_dict()
    assert report.ok, report.as_dict()
    assert report.facts["stopped_pids"]
    assert not [p for p in report.facts["stopped_pids"] if is_running(p)]

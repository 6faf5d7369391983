"""The ledger plugged into FedBuff: blocks per version, rejects, resume, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.ledger import Ledger, reward_shares
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff

from .toy import constant_work, initial_arrays, toy_client_app

ROOT = Path(__file__).resolve().parent.parent


def run(ledger: object, num_rounds: int, behaviours: dict[int, str] | None = None):  # type: ignore[no-untyped-def]
    grid = VirtualGrid(
        toy_client_app(behaviours),
        [DeviceProfile(speed=s) for s in (1, 0.6, 0.3)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(buffer_size=2, staleness_fn=Constant(), ledger=ledger, seed=0)  # type: ignore[arg-type]
    return strategy.start(
        grid, initial_arrays(), num_rounds=num_rounds, timeout=60.0
    ), grid


def test_every_version_is_a_verified_block(tmp_path: Path) -> None:
    result, grid = run(tmp_path / "l.db", 5, behaviours={2: "nan"})
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().ok
        blocks = list(ledger.blocks())
        assert [b.header["model_version"] for b in blocks] == [0, 1, 2, 3, 4, 5]
        assert blocks[0].body["included"] == []  # genesis: the initial model
        final = ledger.load_model(blocks[-1])
        np.testing.assert_array_equal(final["w"], result.arrays["w"].numpy())
        for block, version in zip(blocks[1:], result.versions, strict=True):
            nodes = [u["node_id"] for u in block.body["included"]]
            assert nodes == version.node_ids
            assert all(len(u["digest"]) == 64 for u in block.body["included"])
        rejected = [r for b in blocks for r in b.body["rejected"]]
        assert rejected and all(r["node_id"] == grid.node_ids[2] for r in rejected)
        assert all(r["reason"] == "array 'w' holds NaN or Inf" for r in rejected)
        shares = reward_shares(b.body["contributions"] for b in blocks)
        assert {s.node_id for s in shares} == {grid.node_ids[0], grid.node_ids[1]}
        assert sum(s.share for s in shares) == pytest.approx(1.0)
        assert (
            blocks[1].header["config_digest"]
            == FedBuff(buffer_size=2, staleness_fn=Constant()).config_digest()
        )


def test_update_proofs_from_a_real_run(tmp_path: Path) -> None:
    from flchain_flwr.ledger import check_proof

    run(tmp_path / "l.db", 3)
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        digest = ledger.block(2).body["included"][1]["digest"]
        assert "is in block 2" in check_proof(ledger.prove_update(digest))


def test_a_restarted_run_resumes_from_the_last_block(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    first, _ = run(path, 3)
    second, _ = run(path, 6)
    assert [v.version for v in second.versions] == [4, 5, 6]
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok and len(ledger) == 7
        resumed_from = ledger.load_model(ledger.block(3))
        np.testing.assert_array_equal(resumed_from["w"], first.arrays["w"].numpy())
    done, _ = run(path, 6)  # already there: nothing to do
    assert done.versions == [] and done.stop_reason == "completed"


def test_resume_refuses_a_different_model(tmp_path: Path) -> None:
    from flwr.app import Array, ArrayRecord

    path = tmp_path / "l.db"
    run(path, 1)
    grid = VirtualGrid(toy_client_app(), [DeviceProfile()] * 2)
    other = ArrayRecord({"w": Array(np.zeros(5, np.float32))})
    with pytest.raises(ValueError, match="other arrays than initial_arrays"):
        FedBuff(ledger=path).start(grid, other, num_rounds=2)


def test_no_ledger_means_no_digests(tmp_path: Path) -> None:
    result, _ = run(None, 2)
    assert len(result.versions) == 2
    assert not list(tmp_path.iterdir())


def test_sigkill_at_random_moments_leaves_a_verifiable_resumable_ledger(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    target = 40
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker", str(path), str(target)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        committed = -1
        stop_after = rng.randrange(2, 8)
        for line in proc.stdout:
            if line.startswith("committed"):
                committed = int(line.split()[1])
                stop_after -= 1
                if stop_after == 0:
                    break
        # Let it run on for a random moment (or none), so the kill lands anywhere:
        # mid-training, mid-blob-write, mid-commit.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.choice([0.0, rng.uniform(0.0, 0.05)]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Ledger(path, create=False) as ledger:
            report = ledger.verify()
            assert report.ok, (attempt, report)
            head = ledger.head()
            assert head is not None and head.header["model_version"] >= committed
    finished = subprocess.run(
        [sys.executable, "-m", "tests.crash_worker", str(path), str(target)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "finished" in finished.stdout
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        versions = [b.header["model_version"] for b in ledger.blocks()]
        assert versions == list(range(target + 1))


def test_a_nan_metric_does_not_stop_a_recorded_run(tmp_path: Path) -> None:
    from flwr.app import Context, Message

    def nan_loss(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        reply.content["metrics"]["train-loss"] = float("nan")
        return reply

    grid = VirtualGrid(
        toy_client_app(mods=[nan_loss]),
        [DeviceProfile()] * 2,
        work_fn=constant_work(1.0),
    )
    result = FedBuff(buffer_size=2, ledger=tmp_path / "l.db").start(
        grid, initial_arrays(), num_rounds=2, timeout=30.0
    )
    assert len(result.versions) == 2
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().ok

"""The ledger plugged into FedBuff: blocks per version, rejects, resume, SIGKILL."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flchain_flwr.ledger import Ledger, reward_shares
from flchain_flwr.runtime import clock_of
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff, MedianCapped
from flchain_flwr.strategies.metrics import MAX_METRIC_KEYS
from flchain_flwr.strategies.run import FedBuffRun

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
            # format 2 holds node ids as decimal strings
            nodes = [int(u["node_id"]) for u in block.body["included"]]
            assert nodes == version.node_ids
            assert all(len(u["digest"]) == 64 for u in block.body["included"])
        rejected = [r for b in blocks for r in b.body["rejected"]]
        assert rejected and all(int(r["node_id"]) == grid.node_ids[2] for r in rejected)
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
        trusted = ledger.block(0).header["leader"]  # in deployment: out of band
        proof = ledger.prove_update(digest)
        assert "is in block 2" in check_proof(proof, trusted_key=trusted)


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


# ------------------------------------------------------------------ resume state
def momentum_strategy(ledger: object, **kwargs: object) -> FedBuff:
    """FedBuff with server momentum 0.9 and no federated evaluation."""
    settings: dict[str, object] = {
        "buffer_size": 3,
        "server_momentum": 0.9,
        "fraction_evaluate": 0.0,
        "seed": 0,
        "ledger": ledger,
        **kwargs,
    }
    return FedBuff(**settings)  # type: ignore[arg-type]


def three_node_grid() -> VirtualGrid:
    return VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (1, 0.6, 0.3)],
        work_fn=constant_work(1.0),
    )


def fedbuff_run(strategy: FedBuff, grid: VirtualGrid, num_rounds: int) -> FedBuffRun:
    """What ``strategy.start`` builds, kept at hand to read its state."""
    return FedBuffRun(
        strategy=strategy,
        grid=grid,
        clock=clock_of(grid, strategy.poll_interval),
        initial_arrays=initial_arrays(),
        num_versions=num_rounds,
        timeout=60.0,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=None,
        should_stop=None,
    )


def velocities(path: Path) -> list[str | None]:
    """Each block's recorded velocity hash (``None`` where there is none)."""
    with Ledger(path, create=False) as ledger:
        return [
            b.body.get("server_state", {}).get("momentum", {}).get("velocity")
            for b in ledger.blocks()
        ]


def test_a_resumed_momentum_run_is_bit_identical_to_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    # K = number of nodes: every version takes one fresh update from each node,
    # so nothing is in flight at a version boundary and a restart loses no
    # scheduling state. What remains to restore is the server momentum.
    whole = momentum_strategy(tmp_path / "whole.db").start(
        three_node_grid(), initial_arrays(), num_rounds=6, timeout=60.0
    )
    first = momentum_strategy(tmp_path / "split.db").start(
        three_node_grid(), initial_arrays(), num_rounds=3, timeout=60.0
    )
    rest = momentum_strategy(tmp_path / "split.db").start(
        three_node_grid(), initial_arrays(), num_rounds=6, timeout=60.0
    )
    assert [v.version for v in rest.versions] == [4, 5, 6]
    assert [v.node_ids for v in first.versions + rest.versions] == [
        v.node_ids for v in whole.versions
    ]
    for name in whole.arrays:
        a, b = whole.arrays[name].numpy(), rest.arrays[name].numpy()
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    # Every block records the same velocity, and only the first started from 0.
    assert velocities(tmp_path / "split.db") == velocities(tmp_path / "whole.db")
    with Ledger(tmp_path / "split.db", create=False) as ledger:
        assert ledger.verify().ok
        from_zero = [
            b.body["server_state"]["momentum"]["from_zero"]
            for b in list(ledger.blocks())[1:]
        ]
        assert from_zero == [True, False, False, False, False, False]


def test_resume_restores_momentum_and_claim_history_exactly(tmp_path: Path) -> None:
    # K = 2 of 3 nodes: a restart drops the replies in flight, so the resumed
    # run cannot follow the uninterrupted one update for update; the server
    # state it restores must still be exactly the one the first run ended with.
    path = tmp_path / "l.db"
    weighting = MedianCapped(multiple=1.0)  # the cap is the median claim
    grid = three_node_grid()
    first = fedbuff_run(
        momentum_strategy(path, buffer_size=2, example_weighting=weighting), grid, 5
    )
    first.execute()
    velocity = first.pipeline.server_step.velocity
    claims = first.buffer.claims.entries()
    assert velocity is not None and len(claims) == 3
    second = fedbuff_run(
        momentum_strategy(path, buffer_size=2, example_weighting=weighting),
        three_node_grid(),
        8,
    )
    restored = second.pipeline.server_step.velocity
    assert restored is not None and list(restored) == list(velocity)
    for name, value in velocity.items():
        assert restored[name].dtype == value.dtype
        assert restored[name].tobytes() == value.tobytes(), name
    assert second.buffer.claims.entries() == claims
    second.execute()
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        momentum = ledger.block(6).body["server_state"]["momentum"]
        assert momentum["from_zero"] is False  # continued from block 5's
        # The first resumed buffer holds the two fast nodes (claims 10 and 20).
        # With the restored history (10, 20, 30) the median cap is 20; an empty
        # one would hold only this buffer's claims, cap at 10 and halve the
        # second node's weight.
        included = {
            int(u["node_id"]): u["num_examples"]
            for u in ledger.block(6).body["included"]
        }
        assert included == {grid.node_ids[0]: 10.0, grid.node_ids[1]: 20.0}


def append_old_style_blocks(path: Path, strategy: FedBuff, blocks: int) -> None:
    """Blocks as ledgers were written before the server state was recorded."""
    model = {k: v.numpy() for k, v in initial_arrays().items()}
    with Ledger(path) as ledger:
        for height in range(blocks):
            ledger.append(
                model={k: v + np.float32(height) for k, v in model.items()},
                model_version=height,
                base_version=max(0, height - 1),
                config_digest=strategy.config_digest(),
            )


def test_an_old_ledger_resumes_with_zero_momentum_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    append_old_style_blocks(path, momentum_strategy(None), 3)
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = momentum_strategy(path).start(
            three_node_grid(), initial_arrays(), num_rounds=4, timeout=60.0
        )
    assert [v.version for v in result.versions] == [3, 4]
    assert any(
        "records no server state at block 2" in r.getMessage()
        and "momentum restarts from zero" in r.getMessage()
        for r in caplog.records
    )
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        assert ledger.block(3).body["server_state"]["momentum"]["from_zero"] is True
        assert ledger.block(4).body["server_state"]["momentum"]["from_zero"] is False


def test_an_old_ledger_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    append_old_style_blocks(path, momentum_strategy(None), 2)
    with pytest.raises(ValueError, match="differ cannot be named"):
        momentum_strategy(path, server_lr=0.5).start(
            three_node_grid(), initial_arrays(), num_rounds=3, timeout=60.0
        )


def test_resume_refuses_changed_settings_and_names_them(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    before = momentum_strategy(path)
    before.start(three_node_grid(), initial_arrays(), num_rounds=2, timeout=60.0)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(0).body["config"] == before.config_dict()
        assert ledger.head() == ledger.block(2)
    after = momentum_strategy(path, buffer_size=2, server_lr=0.5)
    with pytest.raises(ValueError) as raised:
        after.start(three_node_grid(), initial_arrays(), num_rounds=4, timeout=60.0)
    message = str(raised.value)
    assert before.config_digest() in message and after.config_digest() in message
    assert "buffer_size: 3 in the ledger, 2 now" in message
    assert "server_lr: 1 in the ledger, 0.5 now" in message  # RFC 8785: 1.0 is 1
    assert "resume_with_changed_config=True" in message
    assert "server_momentum" not in message  # only what differs is named
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 3  # nothing was appended


def test_resume_with_changed_config_warns_and_records_the_new_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l.db"
    before = momentum_strategy(path)
    before.start(three_node_grid(), initial_arrays(), num_rounds=2, timeout=60.0)
    after = momentum_strategy(path, server_lr=0.5, resume_with_changed_config=True)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = after.start(
            three_node_grid(), initial_arrays(), num_rounds=4, timeout=60.0
        )
    assert [v.version for v in result.versions] == [3, 4]
    assert any(
        "changed settings" in r.getMessage()
        and "server_lr: 1 in the ledger, 0.5 now" in r.getMessage()
        for r in caplog.records
    )
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        blocks = list(ledger.blocks())
        assert [b.header["config_digest"] == after.config_digest() for b in blocks] == [
            False,
            False,
            False,
            True,
            True,
        ]
        assert blocks[3].body["config"] == after.config_dict()
        assert "config" not in blocks[4].body
        assert blocks[3].body["server_state"]["momentum"]["from_zero"] is False
    # The new settings now resume without a word; the old ones are named.
    momentum_strategy(path, server_lr=0.5).start(
        three_node_grid(), initial_arrays(), num_rounds=5, timeout=60.0
    )
    with pytest.raises(ValueError, match=r"server_lr: 0\.5 in the ledger, 1 now"):
        momentum_strategy(path).start(
            three_node_grid(), initial_arrays(), num_rounds=6, timeout=60.0
        )


def test_verify_and_resume_need_the_server_state_blobs(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    momentum_strategy(path).start(
        three_node_grid(), initial_arrays(), num_rounds=2, timeout=60.0
    )
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None
        state = ledger.server_state(head)
        assert state is not None and state.velocity is not None
        assert set(state.velocity) == {"w", "b"}
        assert all(v.dtype == np.float64 for v in state.velocity.values())
        digest = head.body["server_state"]["momentum"]["velocity"]
        ledger.blobs.path_of(digest).unlink()
        report = ledger.verify()
        assert not report.ok and report.bad_height == 2
        assert report.reason.startswith("server_state velocity: model blob")
        assert ledger.verify(check_models=False).ok
    with pytest.raises(ValueError, match="is missing from the store"):
        momentum_strategy(path).start(
            three_node_grid(), initial_arrays(), num_rounds=3, timeout=60.0
        )


def test_append_refuses_a_config_that_is_not_its_digest(tmp_path: Path) -> None:
    model = {k: v.numpy() for k, v in initial_arrays().items()}
    with Ledger(tmp_path / "l.db") as ledger, pytest.raises(ValueError, match="hash"):
        ledger.append(
            model=model,
            model_version=0,
            base_version=0,
            config_digest="c" * 64,
            config={"buffer_size": 3},
        )


def test_an_accepted_reply_with_2000_metric_keys_is_stored_capped(
    tmp_path: Path,
) -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    grid = three_node_grid()
    run_ = fedbuff_run(FedBuff(ledger=tmp_path / "l.db"), grid, 1)
    try:
        # 2,000 keys fit MAX_RECORDS_BYTES as stored (10,000 would not)
        metrics = MetricRecord({f"m{i}": float(i) for i in range(2_000)})
        metrics["num-examples"] = 10  # last of 2,001, and kept
        arrays = ArrayRecord(
            {k: Array(v.numpy() + np.float32(0.5)) for k, v in initial_arrays().items()}
        )
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        node = grid.node_ids[0]
        run_.store.dispatched(node, 0)
        assert run_.buffer.take(node, 0, content, at=0.0)
        stored = run_.buffer.updates[0]
        kept = stored.metrics["metrics"]
        assert isinstance(kept, MetricRecord)
        assert len(kept) == MAX_METRIC_KEYS + 1 and kept["num-examples"] == 10
        assert list(stored.metrics) == ["metrics"]  # no second copy of the arrays
        # The ledger's digest still covers the reply exactly as received.
        assert stored.digest == run_.pipeline.digest(node, content)
    finally:
        run_.pipeline.close()

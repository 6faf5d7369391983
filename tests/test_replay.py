"""Replayable aggregation: stored payloads and `flchain ledger verify --replay`."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from flchain_flwr.arrays import NDArrays
from flchain_flwr.cli import main
from flchain_flwr.compression import SPARSE_STYPE
from flchain_flwr.ledger import Ledger, model_hash
from flchain_flwr.ledger.canonical import (
    BODY_TAG,
    HEADER_TAG,
    encode,
    sender_update_digest,
    sha256_hex,
)
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.payload import decode_payload, payload_chunks
from flchain_flwr.ledger.replay import replay, replay_pending
from flchain_flwr.ledger.rewards import contributions
from flchain_flwr.mods import DGCConfig, dgc_mod
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import FedBuff
from flchain_flwr.strategies.claims import claims_transition
from flchain_flwr.strategies.fairness import InverseParticipation
from flchain_flwr.strategies.serverstep import OVERFLOW_REASON, StepResult, server_step
from flchain_flwr.strategies.staleness import staleness_from_repr
from flchain_flwr.strategies.tuning import StalenessTarget

from .ledger_helpers import build_ledger
from .toy import constant_work, initial_arrays, toy_client_app

FLCHAIN = str(Path(sys.executable).with_name("flchain"))
SPEEDS = (1.0, 0.7, 0.45, 0.3)
"""Different speeds, so later versions include stale updates."""


def fedbuff_ledger(
    path: Path,
    versions: int = 6,
    *,
    app: ClientApp | None = None,
    arrays: ArrayRecord | None = None,
    **settings: Any,
) -> Ledger:
    """A real FedBuff run on the virtual grid, with a ledger at ``path``."""
    grid = VirtualGrid(
        app or toy_client_app(),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(buffer_size=2, ledger=path, seed=0, **settings)
    strategy.start(grid, arrays or initial_arrays(), num_rounds=versions, timeout=60)
    return Ledger(path, create=False)


def flchain(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["ledger", *argv], out=out)
    return code, out.getvalue()


def rewrite(
    ledger: Ledger,
    height: int,
    body: Callable[[dict[str, Any]], None] | None = None,
    header: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """What the leader's key holder can do: change block ``height`` and sign
    it and every later block again, so that plain ``verify`` still passes."""
    prev_hash = ledger.block(height - 1).hash
    for h in range(height, len(ledger)):
        block = ledger.block(h)
        new_body, new_header = dict(block.body), dict(block.header)
        if h == height and body is not None:
            body(new_body)
        if h == height and header is not None:
            header(new_header)
        body_bytes = encode(block.format_version, new_body)
        new_header["prev_hash"] = prev_hash
        new_header["body_hash"] = sha256_hex(BODY_TAG, body_bytes)
        new_header["updates_root"] = merkle_root(
            [u["digest"] for u in new_body["included"]]
        )
        header_bytes = encode(block.format_version, new_header)
        prev_hash = sha256_hex(HEADER_TAG, header_bytes)
        signature = ledger.signing_key.sign(HEADER_TAG + header_bytes).signature
        ledger.db.execute(
            "UPDATE blocks SET hash=?, header=?, body=?, signature=? WHERE height=?",
            (prev_hash, header_bytes, body_bytes, signature.hex(), h),
        )


def replay_line(text: str) -> str:
    """The line of ``verify --replay``'s output that reports the replay."""
    return next(line for line in text.splitlines() if line.startswith("replay"))


def replay_part(text: str) -> str:
    """``verify --replay``'s output from the replay's report on."""
    return text[text.index("\nreplay") :]


def stale_block(ledger: Ledger) -> int:
    """A block with a stale update in it (replay must use its old version)."""
    return next(
        b.height
        for b in ledger.blocks()
        if any(u["staleness"] > 0 for u in b.body["included"])
    )


# -------------------------------------------------------------- honest runs
def test_a_fedbuff_run_replays_exactly(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db") as ledger:
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.complete, report
        assert report.replayed == (1, 2, 3, 4, 5, 6)
        assert stale_block(ledger) > 0
        for block in ledger.blocks():
            for entry in block.body["included"]:
                node_id, content = ledger.blobs.load_update(entry["payload"])
                assert str(node_id) == entry["node_id"]
                assert sender_update_digest(node_id, content) == entry["digest"]
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 0, text
    assert replay_line(text) == (
        "replay: 6 of 6 blocks after genesis recomputed exactly from their "
        "parent and included updates"
    )


def test_the_flchain_executable_replays(tmp_path: Path) -> None:
    fedbuff_ledger(tmp_path / "l.db", 3).close()
    done = subprocess.run(
        [FLCHAIN, "ledger", "verify", str(tmp_path / "l.db"), "--replay"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok: 4 blocks verified")
    assert replay_line(done.stdout).startswith("replay: 3 of 3 blocks")


def test_momentum_replays_across_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    fedbuff_ledger(path, 3, server_momentum=0.9, server_lr=0.5).close()
    with fedbuff_ledger(path, 6, server_momentum=0.9, server_lr=0.5) as ledger:
        states = [ledger.server_state(b) for b in ledger.blocks()]
        assert [s.velocity_from_zero for s in states[1:] if s] == [True] + [False] * 5
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 6, report


def test_a_velocity_restarted_from_zero_without_cause_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4, server_momentum=0.9) as ledger:

        def restart(body: dict[str, Any]) -> None:
            momentum = dict(body["server_state"]["momentum"], from_zero=True)
            body["server_state"] = dict(body["server_state"], momentum=momentum)

        rewrite(ledger, 3, body=restart)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 3 and "restarts the momentum" in report.reason


def test_a_restart_resting_on_a_made_up_overflow_is_not_replayed(
    tmp_path: Path,
) -> None:
    """The signer restarts the momentum at the last block, adds an overflow
    rejection that never happened, and recomputes model, velocity and
    contributions: plain verify passes, replay must not call it replayed."""
    with fedbuff_ledger(tmp_path / "l.db", 4, server_momentum=0.9) as ledger:
        last = len(ledger) - 1
        block = ledger.block(last)
        parent = ledger.blobs.load_model(ledger.block(last - 1).header["model_hash"])
        fake = {
            "node_id": block.body["included"][0]["node_id"],
            "digest": "0" * 64,
            "trained_on": 0,
            "reason": OVERFLOW_REASON,
        }
        captured: dict[str, Any] = {}

        def from_zero(model: NDArrays, updates: Any, **kw: Any) -> StepResult | None:
            if model_hash(model) == model_hash(parent):
                kw["velocity"] = None
                captured["updates"] = updates
                captured["result"] = server_step(model, updates, **kw)
                return captured["result"]  # type: ignore[no-any-return]
            return server_step(model, updates, **kw)

        replay(ledger, step=from_zero)  # the forger's recomputation
        result, updates = captured["result"], captured["updates"]
        shares = contributions(
            [u.node_id for u in updates],
            [u.update.delta for u in updates],
            [u.examples for u in updates],
            result.step,
        )
        velocity = ledger.blobs.put_model(result.velocity)

        def restart(body: dict[str, Any]) -> None:
            momentum = {"velocity": velocity, "from_zero": True}
            body["server_state"] = dict(body["server_state"], momentum=momentum)
            body["rejected"] = [*body["rejected"], fake]
            body["contributions"] = [dict(c, node_id=str(c["node_id"])) for c in shares]

        def new_model(header: dict[str, Any]) -> None:
            header["model_hash"] = ledger.blobs.put_model(result.model)

        rewrite(ledger, last, body=restart, header=new_model)
        assert ledger.block(last).header["model_hash"] != block.header["model_hash"]
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.ok and not report.complete, report
        assert report.replayed == tuple(range(1, last))
        assert [h for h, _ in report.not_replayable] == [last]
        assert "restart cannot be checked" in report.not_replayable[0][1]


def test_a_restart_after_a_real_overflow_replays(tmp_path: Path) -> None:
    """Version 1 is 3e38; the next buffer continued at momentum 0.9 would
    overflow float32, so the server rejects it and restarts from zero: replay
    shows that continuing over the next block's updates overflows."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        start = all(not v.numpy().any() for v in arrays.values())
        value = np.float32(3e38 if start else 2e38)
        trained = ArrayRecord(
            {k: Array(np.full_like(v.numpy(), value)) for k, v in arrays.items()}
        )
        content = RecordDict(
            {"arrays": trained, "metrics": MetricRecord({"num-examples": 10})}
        )
        return Message(content, reply_to=msg)

    grid = VirtualGrid(
        app, [DeviceProfile(), DeviceProfile()], work_fn=constant_work(1.0)
    )
    path = tmp_path / "l.db"
    FedBuff(buffer_size=2, ledger=path, seed=0, server_momentum=0.9).start(
        grid, initial_arrays(), num_rounds=3, timeout=60
    )
    with Ledger(path, create=False) as ledger:
        states = [ledger.server_state(b) for b in ledger.blocks()][1:]
        assert [s.velocity_from_zero for s in states if s] == [True, True, False]
        restarted = ledger.block(2).body["rejected"]
        assert restarted and all(r["reason"] == OVERFLOW_REASON for r in restarted)
        report = replay(ledger)
        assert report.complete and report.replayed == (1, 2, 3), report


def test_sparse_dgc_updates_are_stored_sparse_and_replay(tmp_path: Path) -> None:
    mod = dgc_mod(DGCConfig(density=0.3, min_sparse_size=1))
    app = toy_client_app(mods=[mod])
    big = ArrayRecord(
        {
            "w": Array(np.zeros(2000, dtype=np.float32)),
            "b": Array(np.zeros((2, 2), dtype=np.float32)),
        }
    )
    with fedbuff_ledger(tmp_path / "l.db", 5, app=app, arrays=big) as ledger:
        report = replay(ledger)
        assert report.complete, report
        entry = ledger.block(3).body["included"][0]
        _, content = ledger.blobs.load_update(entry["payload"])
        assert content["arrays"]["w"].stype == SPARSE_STYPE
        stored = ledger.blobs.path_of(entry["payload"]).stat().st_size
        assert stored < 0.5 * 2000 * 4  # 30 % density: well under the dense bytes


def test_non_trainable_state_replays_from_each_updates_own_version(
    tmp_path: Path,
) -> None:
    arrays = ArrayRecord(
        {
            "w": Array(np.zeros(3, dtype=np.float32)),
            "bn.running_var": Array(np.ones(2, dtype=np.float32)),
        }
    )
    with fedbuff_ledger(tmp_path / "l.db", 6, arrays=arrays) as ledger:
        assert stale_block(ledger) > 0
        report = replay(ledger)
        assert report.complete, report


def test_an_inflating_client_is_capped_and_the_block_replays(tmp_path: Path) -> None:
    app = toy_client_app(mods=[inflate(partition=0, claim=1e30)])
    with fedbuff_ledger(tmp_path / "l.db", 6, app=app) as ledger:
        counts = [
            u["num_examples"] for b in ledger.blocks() for u in b.body["included"]
        ]
        assert max(counts) < 1e3  # the median cap held the 1e30 claim
        assert replay(ledger).complete


def inflate(partition: int, claim: float) -> Callable[..., Any]:
    """A client mod: partition ``partition`` claims ``claim`` examples."""

    def mod(msg: Any, context: Any, call_next: Any) -> Any:
        reply = call_next(msg, context)
        if (
            int(context.node_config["partition-id"]) == partition
            and reply.has_content()
        ):
            reply.content["metrics"]["num-examples"] = claim
        return reply

    return mod


# ----------------------------------------------------------------- forgeries
def test_a_changed_payload_blob_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 3) as ledger:
        payload = ledger.block(2).body["included"][1]["payload"]
        path = ledger.blobs.path_of(payload)
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        report = ledger.verify()
        assert report.bad_height == 2 and "update payload" in report.reason
        assert "does not hash to its name" in report.reason
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 1 and text.startswith("FAILED at block 2: included update 1")


def test_a_payload_swapped_by_the_leader_fails_its_digest(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 3) as ledger:
        entry = ledger.block(2).body["included"][0]
        node_id, content = ledger.blobs.load_update(entry["payload"])
        arrays = content["arrays"]
        arrays["w"] = Array(arrays["w"].numpy() * 2)  # a different, valid update
        forged = ledger.blobs.put_update(node_id, content)

        def swap(body: dict[str, Any]) -> None:
            body["included"][0] = dict(body["included"][0], payload=forged)

        rewrite(ledger, 2, body=swap)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 2
        assert "stored payload does not hash to its digest" in report.reason


def test_a_garbage_payload_under_its_own_hash_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 3) as ledger:
        garbage = b"FLCHAIN-UPDATE/1\n" + b"\xff" * 40
        digest = sha256_hex(garbage)
        ledger.blobs.path_of(digest).parent.mkdir(exist_ok=True)
        ledger.blobs.path_of(digest).write_bytes(garbage)

        def swap(body: dict[str, Any]) -> None:
            body["included"][0] = dict(body["included"][0], payload=digest)

        rewrite(ledger, 2, body=swap)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 2
        assert report.reason.startswith("included update 0: ")


def test_a_swapped_model_fails_at_replay(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4) as ledger:
        other = ledger.block(1).header["model_hash"]
        rewrite(ledger, 3, header=lambda h: h.update(model_hash=other))
        assert ledger.verify().ok  # a valid model, under its own name
        report = replay(ledger)
        assert report.bad_height == 3 and "replayed model" in report.reason
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 1
    assert replay_line(text).startswith("replay FAILED at block 3: the replayed")


@pytest.mark.parametrize("as_rejected", [False, True])
def test_a_dropped_update_fails(tmp_path: Path, as_rejected: bool) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4) as ledger:

        def drop(body: dict[str, Any]) -> None:
            dropped = body["included"][1]
            body["included"] = body["included"][:1]
            body["contributions"] = body["contributions"][:1]
            if as_rejected:  # passed off as a rejected reply
                body["rejected"] = [
                    {
                        "node_id": dropped["node_id"],
                        "digest": dropped["digest"],
                        "trained_on": dropped["trained_on"],
                        "reason": "forged",
                    }
                ]

        rewrite(ledger, 2, body=drop)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 2
        if as_rejected:
            assert "replayed model" in report.reason
        else:  # its sender's claim was observed, yet it is neither in nor out
            assert report.reason.startswith("claim history: it moves a node not heard")


def test_an_entry_claiming_1e30_examples_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4) as ledger:

        def inflate_entry(body: dict[str, Any]) -> None:
            body["included"][0] = dict(body["included"][0], num_examples=1e30)

        rewrite(ledger, 2, body=inflate_entry)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 2 and "records 1e+30 examples" in report.reason
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 1 and "replay FAILED at block 2: included update 0" in text


def test_a_claim_history_forged_to_lift_the_cap_fails(tmp_path: Path) -> None:
    """The block builder lets an inflated claim through at full weight and
    rewrites the block's claim history so that the median cap allows it."""
    app = toy_client_app(mods=[inflate(partition=0, claim=1e30)])
    with fedbuff_ledger(tmp_path / "l.db", 4, app=app) as ledger:
        height, index = next(
            (b.height, i)
            for b in ledger.blocks()
            for i, u in enumerate(b.body["included"])
            if claim_of(ledger, u) == 1e30
        )
        state = ledger.server_state(ledger.block(height))
        assert state is not None and state.claims is not None
        lifted = ledger.blobs.put_model(
            {
                "node_id": np.array([n for n, _ in state.claims], np.uint64),
                "claim": np.full(len(state.claims), 1e30),
            }
        )

        def lift(body: dict[str, Any]) -> None:
            body["server_state"] = dict(body["server_state"], claims=lifted)
            body["included"][index] = dict(body["included"][index], num_examples=1e30)

        rewrite(ledger, height, body=lift)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == height
        assert report.reason.startswith("claim history:"), report.reason


def claim_of(ledger: Ledger, entry: dict[str, Any]) -> object:
    """The example count an included update's stored payload claims."""
    _, content = ledger.blobs.load_update(entry["payload"])
    return content["metrics"]["num-examples"]


def test_a_forged_staleness_weight_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4) as ledger:
        height = stale_block(ledger)
        index = next(
            i
            for i, u in enumerate(ledger.block(height).body["included"])
            if u["staleness"] > 0
        )

        def forge(body: dict[str, Any]) -> None:
            body["included"][index] = dict(body["included"][index], weight=1.0)

        rewrite(ledger, height, body=forge)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == height
        assert f"included update {index}: records staleness weight 1," in report.reason


# ------------------------------------------------------ straggler policies
FAIR = InverseParticipation(4.0)


def staleness_weight(ledger: Ledger, entry: dict[str, Any]) -> float:
    """The recorded staleness function alone, at an entry's staleness."""
    fn = staleness_from_repr(str(ledger.block(0).body["config"]["staleness_fn"]))
    return float(fn(int(entry["staleness"])))


def test_a_fairness_run_replays_exactly(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 6, fairness=FAIR) as ledger:
        assert ledger.block(0).body["config"]["fairness"] == "inverse:4"
        blocks = list(ledger.blocks())[1:]
        entries = [u for b in blocks for u in b.body["included"]]
        # the factors did move weights, so a staleness-only replay would fail
        assert any(u["weight"] != staleness_weight(ledger, u) for u in entries)
        for b in blocks:
            ids = [c["node_id"] for c in b.body["fairness"]["candidates"]]
            assert ids == [u["node_id"] for u in b.body["included"]]
        report = replay(ledger)
        assert report.complete and report.replayed == (1, 2, 3, 4, 5, 6), report


def test_fairness_replays_across_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    fedbuff_ledger(path, 3, fairness=FAIR).close()
    with fedbuff_ledger(path, 8, fairness=FAIR) as ledger:
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 8, report


def fair_block(ledger: Ledger) -> tuple[int, int]:
    """A block and an included update whose fairness factor is not 1."""
    return next(
        (b.height, i)
        for b in ledger.blocks()
        for i, u in enumerate(b.body["included"])
        if u["weight"] != staleness_weight(ledger, u)
    )


def test_a_forged_fairness_weight_fails(tmp_path: Path) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 5, fairness=FAIR) as ledger:
        height, index = fair_block(ledger)
        plain = staleness_weight(ledger, ledger.block(height).body["included"][index])

        def forge(body: dict[str, Any]) -> None:  # the factor left out
            body["included"][index] = dict(body["included"][index], weight=plain)

        rewrite(ledger, height, body=forge)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == height, report
        assert f"included update {index}: records weight {plain!r}" in report.reason
        assert "inverse:4 fairness factor" in report.reason


def _phantom(body: dict[str, Any]) -> None:
    """A candidate that is neither included nor rejected: moves the factors."""
    candidates = body["fairness"]["candidates"]
    phantom = {"node_id": "7", "num_examples": 1000}
    body["fairness"] = {"candidates": [*candidates, phantom]}


def _reordered(body: dict[str, Any]) -> None:
    body["fairness"] = {"candidates": body["fairness"]["candidates"][::-1]}


def _other_claim(body: dict[str, Any]) -> None:
    first, *rest = body["fairness"]["candidates"]
    body["fairness"] = {"candidates": [dict(first, num_examples=1), *rest]}


def _malformed(body: dict[str, Any]) -> None:
    body["fairness"] = {"candidates": [{"node_id": "x", "num_examples": 1}]}


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_phantom, "neither included nor rejected"),
        (_reordered, "is not among its fairness candidates"),
        (_other_claim, "is not among its fairness candidates"),
        (_malformed, "fairness candidates are malformed"),
    ],
)
def test_forged_fairness_candidates_fail(
    tmp_path: Path, forge: Callable[[dict[str, Any]], None], reason: str
) -> None:
    with fedbuff_ledger(tmp_path / "l.db", 4, fairness=FAIR) as ledger:
        rewrite(ledger, 3, body=forge)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 3 and reason in report.reason, report


def test_a_phantom_candidate_passed_off_as_rejected_alone_fails(
    tmp_path: Path,
) -> None:
    """A rejected candidate's claim is not stored, so the leader can list one
    more with a rejection; the recorded weights then no longer follow from the
    candidates. (Had it also recomputed the weights and the model, replay
    could not tell: the limit replay's docstring states.)"""
    with fedbuff_ledger(tmp_path / "l.db", 4, fairness=FAIR) as ledger:

        def forge(body: dict[str, Any]) -> None:
            _phantom(body)
            body["rejected"] = [
                *body["rejected"],
                {"node_id": "7", "digest": "0" * 64, "trained_on": 0, "reason": "x"},
            ]

        rewrite(ledger, 3, body=forge)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 3 and "fairness factor" in report.reason, report


def test_fedbuff_with_a_pov_committee_and_fairness_replays(tmp_path: Path) -> None:
    """The committee rejects the sign-flipping node after the factors were
    computed over it: replay computes them over the recorded candidates."""
    from flchain_flwr.pov import Committee, Threshold
    from flchain_flwr.sim.attacks import attack_mod

    from .test_pov import poisoning_configs, verifiers

    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile(speed=s) for s in (*SPEEDS, 0.8)],
        node_configs=poisoning_configs(5, {4}, "sign-flip"),  # type: ignore[arg-type]
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(
        buffer_size=3,
        committee=Committee(verifiers(4), threshold=Threshold(value=0)),
        fairness=FAIR,
        ledger=tmp_path / "l.db",
        seed=0,
    )
    strategy.start(grid, initial_arrays(), num_rounds=4, timeout=60)
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().pov
        bodies = [b.body for b in ledger.blocks()][1:]
        assert any(
            len(b["fairness"]["candidates"]) > len(b["included"]) for b in bodies
        )
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 4, report


def test_a_self_tuning_run_replays_exactly(tmp_path: Path) -> None:
    tuning = StalenessTarget(0.5, 1, 4, slack=2.0)
    with fedbuff_ledger(tmp_path / "l.db", 8, buffer_tuning=tuning) as ledger:
        sizes = [b.body["buffer"]["buffer_size"] for b in list(ledger.blocks())[1:]]
        assert len(set(sizes)) > 1  # it did tune
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 8, report


# --------------------------------------------------- what cannot be replayed
def test_a_ledger_without_payloads_is_not_replayable(tmp_path: Path) -> None:
    build_ledger(tmp_path / "old.db", blocks=4).close()
    code, text = flchain("verify", str(tmp_path / "old.db"), "--replay")
    assert code == 3, text
    lines = text.splitlines()
    assert lines[0].startswith("ok: 4 blocks verified")
    assert replay_line(text).startswith("replay: 0 of 3 blocks")
    assert "not replayable: blocks 1-3: written without stored update payloads" in text
    assert "ok" not in replay_line(text)


def test_a_ledger_continued_by_this_version_replays_its_new_blocks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    with fedbuff_ledger(path, 3) as ledger:  # then made to look written before

        def forget(body: dict[str, Any]) -> None:
            body["included"] = [
                {k: v for k, v in u.items() if k != "payload"} for u in body["included"]
            ]

        for height in (1, 2, 3):
            rewrite(ledger, height, body=forget)
        # nor a checkpoint of the blocks as first written (the ledger would
        # refuse to sign one contradicting it)
        ledger.checkpoint_path.unlink()
    with fedbuff_ledger(path, 6) as ledger:
        assert ledger.verify().ok
        report = replay(ledger)
    assert report.ok and report.replayed == (4, 5, 6)
    assert [h for h, _ in report.not_replayable] == [1, 2, 3]
    assert "not replayable: blocks 1-3: written without stored update payloads" in (
        str(report)
    )


def test_a_block_without_updates_must_keep_its_parent_model(tmp_path: Path) -> None:
    build_ledger(tmp_path / "old.db", blocks=5).close()  # block 4 includes nothing
    with Ledger(tmp_path / "old.db", create=False) as ledger:
        report = replay(ledger)
    assert report.bad_height == 4
    assert report.reason == "it includes no update but changes the model"


def test_claims_transition_rules() -> None:
    before = [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert (
        claims_transition(before, [(1, 10.0), (3, 30.0), (2, 25.0)], [(2, 25.0)], set())
        is None
    )
    # an untouched node's claim changed
    assert claims_transition(
        before, [(1, 99.0), (3, 30.0), (2, 25.0)], [(2, 25.0)], set()
    )
    # the included claim is not the one recorded (and the node was not rejected)
    assert claims_transition(
        before, [(1, 10.0), (3, 30.0), (2, 26.0)], [(2, 25.0)], set()
    )
    # ... unless a later reply of that node was taken and rejected
    assert (
        claims_transition(before, [(1, 10.0), (3, 30.0), (2, 26.0)], [(2, 25.0)], {2})
        is None
    )
    # the oldest entries go only when the history is full
    assert claims_transition(before, [(3, 30.0), (4, 5.0)], [(4, 5.0)], set())
    assert (
        claims_transition(before, [(3, 30.0), (4, 5.0)], [(4, 5.0)], set(), max_nodes=2)
        is None
    )


def test_a_payload_round_trips_every_record_value() -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"x": Array(np.arange(5, dtype=np.int16))}),
            "metrics": MetricRecord({"num-examples": 3, "loss": [0.5, float("nan")]}),
            "flchain": ConfigRecord(
                {"s": "a\ud800b", "b": b"\x00\xff", "big": 2**63, "t": True}
            ),
        }
    )
    blob = b"".join(bytes(c) for c in payload_chunks(7, content))
    node_id, back = decode_payload(blob)
    assert node_id == 7
    assert sender_update_digest(7, back) == sender_update_digest(7, content)
    for bad in (blob[:-1], blob + b"\x00", b"x" + blob[1:]):
        with pytest.raises(ValueError):
            decode_payload(bad)


def test_fedbuff_with_a_pov_committee_replays(tmp_path: Path) -> None:
    from flchain_flwr.pov import Committee, Threshold

    from .test_pov import verifiers

    committee = Committee(verifiers(4), threshold=Threshold(value=0))
    with fedbuff_ledger(tmp_path / "l.db", 4, committee=committee) as ledger:
        assert ledger.verify().pov
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 4, report


def test_pov_strategy_blocks_have_their_payloads_checked_not_their_model(
    tmp_path: Path,
) -> None:
    from flwr.serverapp.strategy import FedAvg

    from flchain_flwr.pov import Committee, PoVStrategy, Threshold
    from flchain_flwr.sim import simulate

    from .test_pov import verifiers

    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=4, min_train_nodes=4),
        Committee(verifiers(4), threshold=Threshold(value=0)),
        ledger=tmp_path / "sync.db",
    )
    grid = VirtualGrid(
        toy_client_app(), [DeviceProfile()] * 4, work_fn=constant_work(1.0)
    )
    simulate(strategy, grid, initial_arrays(), num_rounds=2)
    code, text = flchain("verify", str(tmp_path / "sync.db"), "--replay")
    assert code == 3, text
    assert "replay: 0 of 2 blocks" in text
    assert (
        "payloads and signatures checked; model not recomputed: blocks 1-2: "
        "aggregated by the wrapped strategy 'FedAvg'"
    ) in text
    assert "not replayable" not in text and "trainers:" not in replay_part(text)


def test_staleness_functions_are_rebuilt_from_their_record() -> None:
    from flchain_flwr.strategies import Constant, FedBuffStaleness, Hinge, Polynomial
    from flchain_flwr.strategies.staleness import staleness_from_repr

    for fn in (Constant(), FedBuffStaleness(), Polynomial(0.7), Hinge(3.5, 2)):
        assert staleness_from_repr(repr(fn)) == fn
    for text in ("<function <lambda> at 0x7f>", "Hinge(a=1.0, b=x)", "Other()"):
        with pytest.raises((ValueError, TypeError)):
            staleness_from_repr(text)


EXTRA_METRICRECORD_LEDGER = Path(__file__).parent / "data" / "extra-metricrecord-ledger"
"""A FedBuff ledger (3 versions, toy model, payloads stored) recorded on
2026-11-30 by the code before the reply bounds of that day, whose ClientApp's
train replies carry two MetricRecords: ``metrics`` ({"num-examples": n}) and
``train-metrics`` ({"train-loss": x}). Such replies were accepted and stored."""


def test_a_ledger_whose_replies_carry_an_extra_metricrecord_still_replays(
    tmp_path: Path,
) -> None:
    # A rule refusing the extra record made this ledger fail replay as "not a
    # valid update", as a forged block would: the extra record is accepted
    # (and stored), only the counted one is aggregated.
    import shutil

    shutil.copytree(EXTRA_METRICRECORD_LEDGER, tmp_path / "l")
    with Ledger(tmp_path / "l" / "chain.db", create=False) as ledger:
        assert ledger.verify().ok
        report = replay(ledger)
    assert report.ok and report.complete, str(report)


def test_a_fedbuff_block_marked_as_a_wrappers_fails(tmp_path: Path) -> None:
    """The ledger key holder records, for one block of a FedBuff chain, its
    settings with PoVStrategy's wrapper marker: replay would check only its
    payloads and read its model as a wrapped strategy's. PoVStrategy records
    its settings once, in a fresh ledger's genesis block, so a chain does not
    mix its blocks with FedBuff's: replay names the block."""
    from flchain_flwr.ledger.blocks import CONFIG_FIELD
    from flchain_flwr.ledger.wrapper import POV_WRAPPER, WRAPPER_FIELD

    with fedbuff_ledger(tmp_path / "l.db", 4) as ledger:
        height = next(
            b.height
            for b in ledger.blocks()
            if b.height and all(u["staleness"] == 0 for u in b.body["included"])
        )
        config = ledger.recorded_config(ledger.block(height))
        assert config is not None and config["strategy"] == "FedBuff"
        marked = dict(config, **{WRAPPER_FIELD: POV_WRAPPER})

        def record(body: dict[str, Any]) -> None:
            body[CONFIG_FIELD] = marked

        def name(header: dict[str, Any]) -> None:
            header["config_digest"] = ledger.config_digest(marked)

        rewrite(ledger, height, body=record, header=name)
        assert ledger.verify().ok
        report = replay(ledger)
        # a remote member's pre-signing replay, from the previous block alone
        member = replay_pending(
            ledger, [ledger.block(height - 1)], ledger.block(height), marked
        )
    assert not report.ok and report.bad_height == height, str(report)
    assert "PoVStrategy" in report.reason and "genesis" in report.reason
    assert member == (False, report.reason)
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 1 and f"replay FAILED at block {height}" in text, text

"""Replies signed by their trainers under :class:`PoVStrategy`, the
synchronous wrapper: held to FedBuff's rules (the server's intake,
:mod:`flchain_flwr.strategies.trainercheck`), its blocks' ``trainer`` entries
checked by ``verify``.

Each tamper is a mod outside the signer: anything on the path (or the server)
changing a reply after its node signed it. It leaves the update itself alone,
so that the committee, which judges an update on its merits, would approve it:
only the signature check can refuse it."""

from __future__ import annotations

import shutil
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
    MessageType,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from flchain_flwr.ledger import Ledger, model_hash
from flchain_flwr.ledger.canonical import sender_update_digest
from flchain_flwr.ledger.payload import PAYLOAD_FIELD
from flchain_flwr.ledger.replay import replay
from flchain_flwr.ledger.trainers import TRAINER_FIELD, sign_reply
from flchain_flwr.mods import signreply_mod
from flchain_flwr.pov import Committee, PoVStrategy, Threshold
from flchain_flwr.protocol import TRAINER_PUBLIC_KEY, TRAINER_RECORD, TRAINER_SIGNATURE
from flchain_flwr.sim import simulate
from flchain_flwr.strategies.trainercheck import UNSIGNED_REASON

from .test_pov import verifiers
from .test_replay import SPEEDS, flchain, rewrite
from .test_signreply import ATTACKER, Tamper, received_model, signing_grid
from .toy import initial_arrays

N = len(SPEEDS)


def pov_signed_run(
    folder: Path,
    *,
    tamper: Tamper | None = None,
    partition: int = 0,
    from_version: int = 0,
    signing: tuple[int, ...] = (0, 1, 2, 3),
    rounds: int = 3,
    ledger: bool = True,
    inner: tuple[Any, ...] = (),
    arrays: ArrayRecord | None = None,
    **settings: Any,
) -> PoVStrategy:
    """A PoVStrategy(FedAvg) run of the toy app on the virtual grid, its
    nodes in ``signing`` signing (``tamper`` outside the signer of
    ``partition``, from train messages on ``from_version``; ``inner``: mods
    inside the signer)."""
    grid = signing_grid(
        folder, tamper, partition, from_version, signing, (signreply_mod, *inner)
    )
    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N),
        Committee(verifiers(4), threshold=Threshold(value=0)),
        ledger=folder / "sync.db" if ledger else None,
        **settings,
    )
    simulate(strategy, grid, arrays or initial_arrays(), num_rounds=rounds)
    return strategy


def included(path: Path) -> list[dict[str, Any]]:
    with Ledger(path, create=False) as ledger:
        return [u for b in ledger.blocks() for u in b.body["included"]]


def block_rejected(path: Path) -> list[dict[str, Any]]:
    with Ledger(path, create=False) as ledger:
        return [r for b in ledger.blocks() if b.height for r in b.body["rejected"]]


def public_key(folder: Path, partition: int) -> str:
    from nacl.encoding import HexEncoder
    from nacl.signing import SigningKey

    key = SigningKey(
        (folder / f"trainer{partition}.key").read_bytes().strip(), encoder=HexEncoder
    )
    return key.verify_key.encode(HexEncoder).decode()


def keyless(_msg: Message, _context: Context, reply: Message) -> None:
    """Replace the signature record by one that holds no trainer key."""
    record = reply.content[TRAINER_RECORD]
    assert isinstance(record, ConfigRecord)
    reply.content[TRAINER_RECORD] = ConfigRecord(
        {TRAINER_SIGNATURE: record[TRAINER_SIGNATURE]}
    )


def other_model(msg: Message, context: Context, reply: Message) -> None:
    """Sign the reply as trained on a model the node was not sent."""
    reply.content[TRAINER_RECORD] = sign_reply(
        ATTACKER, context.node_id, reply.content, "0" * 64
    )


def resigned_as_is(msg: Message, context: Context, reply: Message) -> None:
    """Sign the unchanged reply with a key of one's own."""
    reply.content[TRAINER_RECORD] = sign_reply(
        ATTACKER, context.node_id, reply.content, received_model(msg)
    )


def test_an_honest_signed_run_records_and_verifies_its_trainers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sync.db"
    strategy = pov_signed_run(tmp_path, signing=(0, 1, 2))
    assert not strategy.rejected
    entries = included(path)
    assert len(entries) == 3 * N
    keys = {public_key(tmp_path, p) for p in (0, 1, 2)}
    assert {u.get(TRAINER_FIELD) for u in entries} == keys | {None}
    assert sum(TRAINER_FIELD in u for u in entries) == 3 * 3
    code, text = flchain("verify", str(path))
    assert code == 0, text
    assert f"trainers: 9 of {3 * N} included updates name a trainer key" in text
    # each reply is stored as received: replay checks the payloads and their
    # signatures, and says that the wrapped strategy's model is not recomputed
    with Ledger(path, create=False) as ledger:
        for entry in entries:
            node_id, content = ledger.blobs.load_update(entry[PAYLOAD_FIELD])
            assert sender_update_digest(node_id, content) == entry["digest"]
    code, text = flchain("verify", str(path), "--replay")
    assert code == 3, text  # not every model recomputed
    assert "in 0 of them a quorum of signers recomputed the model" in text
    assert "replay: 0 of 3 blocks after genesis recomputed exactly" in text
    assert (
        "payloads and signatures checked; model not recomputed: blocks 1-3: "
        "aggregated by the wrapped strategy 'FedAvg'"
    ) in text
    assert (
        f"trainers: 9 of {3 * N} included updates in the blocks whose payloads "
        "were checked signed by their trainers"
    ) in text
    assert "not replayable" not in text


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [(keyless, "expected exactly"), (other_model, "does not verify")],
)
def test_an_invalid_signature_is_rejected_before_the_committee(
    tmp_path: Path, tamper: Tamper, reason: str
) -> None:
    path = tmp_path / "sync.db"
    strategy = pov_signed_run(tmp_path, tamper=tamper, partition=0)
    (victim,) = {r.node_id for r in strategy.rejected}
    assert len(strategy.rejected) == 3
    assert all(reason in r.reason and not r.votes for r in strategy.rejected)
    assert all(int(u["node_id"]) != victim for u in included(path))
    assert len(included(path)) == 3 * (N - 1)
    recorded = [r for r in block_rejected(path) if int(r["node_id"]) == victim]
    assert len(recorded) == 3 and all(reason in r["reason"] for r in recorded)
    # the committee never saw them: no vote names their digests
    assert all(len(d.outcomes) == N - 1 for d in strategy.decisions), (
        "a forged reply reached the committee"
    )
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok


def test_another_keys_signature_for_a_pinned_node_id_is_rejected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sync.db"
    strategy = pov_signed_run(
        tmp_path, tamper=resigned_as_is, partition=0, from_version=1
    )
    public = public_key(tmp_path, 0)
    (node,) = {int(u["node_id"]) for u in included(path) if u[TRAINER_FIELD] == public}
    rejected = [r.reason for r in strategy.rejected if r.node_id == node]
    assert len(rejected) == 2 and len(strategy.rejected) == 2
    assert all("were included signed by trainer key" in r for r in rejected)
    assert public[:16] in rejected[0]
    assert {u[TRAINER_FIELD] for u in included(path) if int(u["node_id"]) == node} == {
        public
    }
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok


def test_unsigned_replies_are_rejected_when_signatures_are_required(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sync.db"
    strategy = pov_signed_run(tmp_path, signing=(0, 1, 2), require_signed_replies=True)
    (unsigned,) = {r.node_id for r in strategy.rejected}
    assert all(r.reason == UNSIGNED_REASON for r in strategy.rejected)
    assert len(strategy.rejected) == 3
    assert all(TRAINER_FIELD in u for u in included(path))
    assert all(int(u["node_id"]) != unsigned for u in included(path))
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok


def test_only_a_round_with_a_signed_reply_hashes_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a ledger the hash only serves to check trainer signatures:
    a round nobody signs in hashes nothing, one where all sign hashes once."""
    from flchain_flwr.pov import syncintake as module

    hashed: list[int] = []

    def counted(model: Any) -> str:
        hashed.append(1)
        return model_hash(model)

    monkeypatch.setattr(module, "model_hash", counted, raising=False)
    (tmp_path / "none").mkdir()
    unsigned = pov_signed_run(tmp_path / "none", signing=(), ledger=False)
    assert not unsigned.rejected and not hashed
    signed = pov_signed_run(tmp_path, rounds=2, ledger=False)
    assert not signed.rejected
    assert len(hashed) == 2


def idle(msg: Message, context: Context, call_next: Any) -> Message:
    """Inside the signer: reply the model as received (an update that moves
    nothing), so the next round sends the same model again."""
    reply = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        reply.content["arrays"] = msg.content["arrays"]
    return reply


def test_a_signed_update_is_included_once_in_the_chain(tmp_path: Path) -> None:
    """A round that leaves the model as it was is sent the same model again:
    a node's signed reply, the same bytes, is then one the chain included
    (replayed, or retrained deterministically), and the server rejects it as
    FedBuff does, rather than write a chain that ``verify`` fails."""
    path = tmp_path / "sync.db"
    strategy = pov_signed_run(tmp_path, inner=(idle,), rounds=2)
    assert len(included(path)) == N  # round 1's; round 2's were all rejected
    assert len(strategy.rejected) == N
    assert all("was already included in block 1" in r.reason for r in strategy.rejected)
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok


# ------------------------------------------------- stored payloads, replayed
OLD_POV_LEDGER = Path(__file__).parent / "data" / "pov-strategy-ledger"
"""A PoVStrategy(FedAvg) ledger (2 rounds, 4 toy nodes, 3 of them signing
their replies) recorded by the code before PoVStrategy stored payloads."""


def test_a_pov_ledger_without_payloads_reads_as_before(tmp_path: Path) -> None:
    shutil.copytree(OLD_POV_LEDGER, tmp_path / "l")
    code, text = flchain("verify", str(tmp_path / "l" / "sync.db"), "--replay")
    assert code == 3, text
    assert "trainers: 6 of 8 included updates name a trainer key" in text
    assert "replay: 0 of 2 blocks after genesis recomputed exactly" in text
    assert "not replayable: blocks 1-2: written without stored update payloads" in (
        text
    )
    assert "payloads and signatures checked" not in text


def stored(ledger: Ledger, height: int, index: int) -> tuple[int, RecordDict]:
    """The node id and reply stored for included update ``index`` of block
    ``height``."""
    entry = ledger.block(height).body["included"][index]
    return ledger.blobs.load_update(entry[PAYLOAD_FIELD])


def forge(
    ledger: Ledger, height: int, index: int, content: RecordDict
) -> dict[str, Any]:
    """Included update ``index`` of block ``height`` with ``content`` stored
    as its payload, under its digest."""
    entry = ledger.block(height).body["included"][index]
    node = int(entry["node_id"])
    return dict(
        entry,
        payload=ledger.blobs.put_update(node, content),
        digest=sender_update_digest(node, content),
    )


def other_nodes_payload(ledger: Ledger, signed: int, unsigned: int) -> dict[str, Any]:
    """The entry naming another included update's stored payload."""
    body = ledger.block(2).body["included"]
    return dict(body[signed], payload=body[unsigned][PAYLOAD_FIELD])


def forged_signature(ledger: Ledger, signed: int, _unsigned: int) -> dict[str, Any]:
    """The trainer's key kept, its signature replaced by another key's over
    the same statement."""
    node, content = stored(ledger, 2, signed)
    record = content[TRAINER_RECORD]
    assert isinstance(record, ConfigRecord)
    model = str(ledger.block(1).header["model_hash"])
    other = sign_reply(ATTACKER, node, content, model)
    content[TRAINER_RECORD] = ConfigRecord(
        {
            TRAINER_PUBLIC_KEY: record[TRAINER_PUBLIC_KEY],
            TRAINER_SIGNATURE: other[TRAINER_SIGNATURE],
        }
    )
    return forge(ledger, 2, signed, content)


def misshapen(ledger: Ledger, _signed: int, unsigned: int) -> dict[str, Any]:
    """An unsigned update whose arrays do not fit the parent model."""
    _, content = stored(ledger, 2, unsigned)
    content["arrays"] = ArrayRecord({"w": Array(np.zeros(5, dtype=np.float32))})
    return forge(ledger, 2, unsigned, content)


def on_an_older_model(ledger: Ledger, _signed: int, unsigned: int) -> dict[str, Any]:
    """An update said to be trained on the model before its round's."""
    entry = ledger.block(2).body["included"][unsigned]
    return dict(entry, trained_on=0, staleness=1)


@pytest.mark.parametrize(
    ("forgery", "which", "reason"),
    [
        (other_nodes_payload, "signed", "its payload was sent by another node"),
        (forged_signature, "signed", "does not verify over this reply"),
        (misshapen, "unsigned", "is not a valid update"),
        (on_an_older_model, "unsigned", "trained on 0, not the version its round"),
    ],
)
def test_a_forged_payload_fails_replay_naming_its_block(
    tmp_path: Path,
    forgery: Callable[[Ledger, int, int], dict[str, Any]],
    which: str,
    reason: str,
) -> None:
    """What the holder of the ledger key (in-process, of every committee key
    too) can write into a PoVStrategy block: replay names the block."""
    path = tmp_path / "sync.db"
    pov_signed_run(tmp_path, signing=(0, 1, 2))
    with Ledger(path, create=False) as ledger:
        entries = ledger.block(2).body["included"]
        signed = next(i for i, u in enumerate(entries) if TRAINER_FIELD in u)
        unsigned = next(i for i, u in enumerate(entries) if TRAINER_FIELD not in u)
        index = signed if which == "signed" else unsigned
        forged = forgery(ledger, signed, unsigned)

        def swap(body: dict[str, Any]) -> None:
            body["included"][index] = forged

        rewrite(ledger, 2, body=swap)
        report = replay(ledger)
    assert not report.ok and report.bad_height == 2, str(report)
    assert report.reason.startswith(f"included update {index}"), report.reason
    assert reason in report.reason
    assert str(report).startswith("replay FAILED at block 2: ")


def test_a_swapped_payload_blob_fails_naming_its_block(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    pov_signed_run(tmp_path, signing=(0, 1, 2))
    with Ledger(path, create=False) as ledger:
        entries = ledger.block(2).body["included"]
        first, second = (str(u[PAYLOAD_FIELD]) for u in entries[:2])
        ledger.blobs.path_of(first).write_bytes(ledger.blobs.get(second))
        report = replay(ledger)
    assert not report.ok and report.bad_height == 2, str(report)
    assert "included update 0: update payload" in report.reason
    assert "does not hash to its name" in report.reason
    code, text = flchain("verify", str(path), "--replay")
    assert code == 1 and "block 2" in text, text


def test_dense_payloads_store_one_model_sized_blob_per_update(
    tmp_path: Path,
) -> None:
    """What storing dense replies costs: per round, each included reply's
    arrays and a header of a few hundred bytes."""
    size = 10_000
    arrays = ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))})
    pov_signed_run(tmp_path, rounds=2, arrays=arrays)
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        for block in list(ledger.blocks())[1:]:
            sizes = [
                ledger.blobs.path_of(u[PAYLOAD_FIELD]).stat().st_size
                for u in block.body["included"]
            ]
            assert len(sizes) == N
            model = 4 * size
            assert all(model < s < model + 1024 for s in sizes), sizes
            print(f"block {block.height}: {sum(sizes)} payload bytes, {sizes}")


def test_sparse_delta_replies_are_stored_as_sent(tmp_path: Path) -> None:
    """The wrapped strategy is handed full weights; the ledger stores the
    sparse delta each node signed and sent, and replay checks it."""
    from flchain_flwr.compression import SPARSE_STYPE
    from flchain_flwr.mods import DGCConfig, dgc_mod

    path = tmp_path / "sync.db"
    strategy = pov_signed_run(
        tmp_path,
        inner=(dgc_mod(DGCConfig(density=0.01, min_sparse_size=1)),),
        arrays=ArrayRecord({"w": Array(np.zeros(1000, dtype=np.float32))}),
    )
    assert not strategy.rejected
    with Ledger(path, create=False) as ledger:
        contents = [
            ledger.blobs.load_update(u[PAYLOAD_FIELD])[1] for u in included(path)
        ]
        report = replay(ledger)
    assert all(
        arr.stype == SPARSE_STYPE
        for c in contents
        for arr in c.array_records["arrays"].values()
    )
    assert report.ok and report.signed == report.checked == 3 * N, str(report)
    assert [h for h, _ in report.payloads_only] == [1, 2, 3]


def test_a_block_of_other_settings_in_a_pov_strategy_chain_fails(
    tmp_path: Path,
) -> None:
    """PoVStrategy records its settings once, in the genesis block: a later
    block naming others (here FedBuff's name, without the wrapper marker) is
    not one of its blocks, whatever replay would make of it."""
    from flchain_flwr.ledger.blocks import CONFIG_FIELD
    from flchain_flwr.ledger.wrapper import WRAPPER_FIELD

    from .test_replay import rewrite

    path = tmp_path / "sync.db"
    pov_signed_run(tmp_path)
    with Ledger(path, create=False) as ledger:
        config = ledger.recorded_config(ledger.block(2))
        assert config is not None
        other = {k: v for k, v in config.items() if k != WRAPPER_FIELD}
        other["strategy"] = "FedBuff"

        def record(body: dict[str, Any]) -> None:
            body[CONFIG_FIELD] = other

        def name(header: dict[str, Any]) -> None:
            header["config_digest"] = ledger.config_digest(other)

        rewrite(ledger, 2, body=record, header=name)
        report = replay(ledger)
    assert not report.ok and report.bad_height == 2, str(report)
    assert "a chain does not mix its blocks" in report.reason

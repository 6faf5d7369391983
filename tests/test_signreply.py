"""Replies signed by their trainers: the client mod, the server's intake, the
ledger's ``trainer`` entries, ``verify`` and ``verify --replay``.

Each attack is a forgery: a mod outside the signer stands for anything on the
path (or the server) changing a reply after its node signed it; a rewritten
block stands for the ledger key's holder."""

from __future__ import annotations

import stat
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
    MetricRecord,
    RecordDict,
)
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from flchain_flwr.arrays import to_ndarrays
from flchain_flwr.ledger import Ledger, model_hash
from flchain_flwr.ledger.canonical import sender_update_digest
from flchain_flwr.ledger.replay import replay
from flchain_flwr.ledger.trainers import (
    TRAINER_FIELD,
    TrainerSignatureError,
    sign_reply,
    signed_by,
)
from flchain_flwr.mods import TRAINER_KEY_CONFIG, signreply_mod
from flchain_flwr.protocol import TRAINER_RECORD
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import FedBuff, fedbuff_from_run_config
from flchain_flwr.strategies.result import AsyncResult
from flchain_flwr.strategies.trainercheck import UNSIGNED_REASON, TrainerCheck
from flchain_flwr.strategies.updates import UpdateRejected

from .test_replay import SPEEDS, flchain, rewrite
from .toy import constant_work, initial_arrays, toy_client_app

Tamper = Callable[[Message, Context, Message], None]
"""What the path does to node ``partition-id``'s signed reply."""
ATTACKER = SigningKey(bytes([7]) * 32)
"""A key of the server's (or the path's) own."""


def node_configs(
    folder: Path, signing: tuple[int, ...] = (0, 1, 2, 3)
) -> list[dict[str, int | str]]:
    """Per-node configs; the nodes in ``signing`` hold a trainer key file."""
    return [
        {"partition-id": i, "num-partitions": len(SPEEDS)}
        | (
            {TRAINER_KEY_CONFIG: str(folder / f"trainer{i}.key")}
            if i in signing
            else {}
        )
        for i in range(len(SPEEDS))
    ]


def on_path(tamper: Tamper, partition: int, from_version: int = 0) -> Any:
    """A mod outside the signer: ``tamper`` changes ``partition``'s signed
    replies to train messages on ``from_version`` or later."""

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        version = msg.content.config_records["config"].get("model-version", 0)
        if (
            msg.metadata.message_type == MessageType.TRAIN
            and not reply.has_error()
            and context.node_config["partition-id"] == partition
            and isinstance(version, int)
            and version >= from_version
        ):
            tamper(msg, context, reply)
        return reply

    return mod


# pylint: disable=too-many-arguments
def signing_grid(
    folder: Path,
    tamper: Tamper | None,
    partition: int,
    from_version: int,
    signing: tuple[int, ...],
    mods: tuple[Any, ...],
) -> VirtualGrid:
    """The toy app's nodes on the virtual grid with ``mods``, those in
    ``signing`` holding trainer keys under ``folder``; ``tamper`` outside
    every mod of ``partition``, from train messages on ``from_version``."""
    if tamper is not None:
        mods = (on_path(tamper, partition, from_version), *mods)
    return VirtualGrid(
        toy_client_app(mods=list(mods)),
        [DeviceProfile(speed=s) for s in SPEEDS],
        node_configs=node_configs(folder, signing),
        work_fn=constant_work(1.0),
    )


def signed_run(
    folder: Path,
    *,
    tamper: Tamper | None = None,
    partition: int = 0,
    from_version: int = 0,
    signing: tuple[int, ...] = (0, 1, 2, 3),
    versions: int = 6,
    ledger: bool = True,
    inner: tuple[Any, ...] = (),
    outer: tuple[Any, ...] = (),
    arrays: ArrayRecord | None = None,
    **settings: Any,
) -> AsyncResult:
    """A FedBuff run of the toy app on the virtual grid, its nodes signing
    (``inner``, ``outer``: more mods inside and outside the signer)."""
    grid = signing_grid(
        folder,
        tamper,
        partition,
        from_version,
        signing,
        (*outer, signreply_mod, *inner),
    )
    if ledger:
        settings["ledger"] = folder / "l.db"
    strategy = FedBuff(buffer_size=2, seed=0, **settings)
    start = arrays or initial_arrays()
    return strategy.start(grid, start, num_rounds=versions, timeout=60)


def received_model(msg: Message) -> str:
    return model_hash(to_ndarrays(msg.content.array_records["arrays"]))


def altered(_msg: Message, _context: Context, reply: Message) -> None:
    """Change the update after it was signed."""
    arrays = reply.content["arrays"]
    arrays["w"] = Array(arrays["w"].numpy() * 2)


def resigned(msg: Message, context: Context, reply: Message) -> None:
    """Change the update and sign it with a key of one's own."""
    altered(msg, context, reply)
    reply.content[TRAINER_RECORD] = sign_reply(
        ATTACKER, context.node_id, reply.content, received_model(msg)
    )


def stripped(_msg: Message, _context: Context, reply: Message) -> None:
    """Send the reply (or one's own) without its signature."""
    reply.content = RecordDict(
        {k: v for k, v in reply.content.items() if k != TRAINER_RECORD}
    )


def reasons(result: AsyncResult, node_id: int) -> list[str]:
    return [r.reason for r in result.rejected if r.node_id == node_id]


def included_entries(path: Path) -> list[dict[str, Any]]:
    with Ledger(path, create=False) as ledger:
        return [u for b in ledger.blocks() for u in b.body["included"]]


def node_of(path: Path, partition: int, folder: Path) -> tuple[int, str]:
    """The node id and trainer key of ``partition`` (from the ledger)."""
    key = SigningKey(
        (folder / f"trainer{partition}.key").read_bytes().strip(), encoder=HexEncoder
    )
    public = key.verify_key.encode(HexEncoder).decode()
    ids = {
        int(u["node_id"]) for u in included_entries(path) if u.get("trainer") == public
    }
    (node,) = ids
    return node, public


# ---------------------------------------------------------------- the mod
def test_the_mod_signs_each_train_reply_over_its_content_node_and_model(
    tmp_path: Path,
) -> None:
    grid = VirtualGrid(
        toy_client_app(mods=[signreply_mod]),
        [DeviceProfile()],
        node_configs=[
            {"partition-id": 0, TRAINER_KEY_CONFIG: str(tmp_path / "k" / "t.key")}
        ],
    )
    (tmp_path / "k").mkdir()
    arrays = initial_arrays()
    msg = Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"model-version": 0})}),
        grid.node_ids[0],
        MessageType.TRAIN,
    )
    (reply,) = grid.send_and_receive([msg])
    assert not reply.has_error(), reply.error
    key_file = tmp_path / "k" / "t.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = (
        SigningKey(key_file.read_bytes().strip(), encoder=HexEncoder)
        .verify_key.encode(HexEncoder)
        .decode()
    )
    model = model_hash(to_ndarrays(arrays))
    node = grid.node_ids[0]
    assert signed_by(node, reply.content, model) == public
    # bound to the node and the model: another's, or another model, fails
    with pytest.raises(TrainerSignatureError, match="does not verify"):
        signed_by(node + 1, reply.content, model)
    with pytest.raises(TrainerSignatureError, match="does not verify"):
        signed_by(node, reply.content, "0" * 64)
    # the key is kept: a second reply is signed by the same key
    (again,) = grid.send_and_receive(
        [Message(msg.content, grid.node_ids[0], MessageType.TRAIN)]
    )
    assert signed_by(node, again.content, model) == public


def test_a_malformed_key_file_is_refused_never_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "t.key"
    key_file.write_text("not a key\n")
    grid = VirtualGrid(
        toy_client_app(mods=[signreply_mod]),
        [DeviceProfile()],
        node_configs=[{"partition-id": 0, TRAINER_KEY_CONFIG: str(key_file)}],
    )
    msg = Message(
        RecordDict({"arrays": initial_arrays(), "config": ConfigRecord({})}),
        grid.node_ids[0],
        MessageType.TRAIN,
    )
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error()
    assert "does not hold an Ed25519 signing key" in reply.error.reason
    assert key_file.read_text() == "not a key\n"


# ------------------------------------------------------------ server intake
def test_a_reply_altered_after_signing_is_rejected(tmp_path: Path) -> None:
    result = signed_run(tmp_path, tamper=altered, partition=0)
    node, _ = node_of(tmp_path / "l.db", 1, tmp_path)  # an honest node is in
    forged = {r.node_id for r in result.rejected if "does not verify" in r.reason}
    assert len(forged) == 1 and node not in forged
    (victim,) = forged
    assert all(int(u["node_id"]) != victim for u in included_entries(tmp_path / "l.db"))
    assert all("does not verify" in r for r in reasons(result, victim))


def test_another_keys_signature_for_a_pinned_node_id_is_rejected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, tamper=resigned, partition=0, from_version=2)
    node, public = node_of(path, 0, tmp_path)  # included before, under its key
    rejected = reasons(result, node)
    assert rejected, "the re-signed replies were taken"
    assert all("were included signed by trainer key" in r for r in rejected)
    assert public[:16] in rejected[0]
    entries = [u for u in included_entries(path) if int(u["node_id"]) == node]
    assert {u[TRAINER_FIELD] for u in entries} == {public}
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        assert replay(ledger).complete


def test_a_stripped_signature_for_a_pinned_node_id_is_rejected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, tamper=stripped, partition=0, from_version=2)
    node, _ = node_of(path, 0, tmp_path)
    rejected = reasons(result, node)
    assert rejected and all("is not signed" in r for r in rejected)


def test_pins_survive_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    signed_run(tmp_path, versions=3)
    node, _ = node_of(path, 0, tmp_path)
    result = signed_run(tmp_path, tamper=resigned, partition=0, versions=6)
    rejected = reasons(result, node)
    assert rejected and all(
        "were included signed by trainer key" in r for r in rejected
    )


def test_unsigned_replies_are_rejected_when_signatures_are_required(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, signing=(0, 1, 2), require_signed_replies=True)
    signers = {int(u["node_id"]) for u in included_entries(path)}
    unsigned_nodes = {r.node_id for r in result.rejected if r.reason == UNSIGNED_REASON}
    assert len(unsigned_nodes) == 1 and not unsigned_nodes & signers
    assert all(TRAINER_FIELD in u for u in included_entries(path))
    # without the requirement the same node's unsigned updates are included
    (tmp_path / "plain").mkdir()
    plain = signed_run(tmp_path / "plain", signing=(0, 1, 2), ledger=False)
    assert not any(r.reason == UNSIGNED_REASON for r in plain.rejected)
    assert set(plain.participation) > signers


def test_require_signed_replies_is_a_run_config_flag() -> None:
    assert fedbuff_from_run_config(
        {"require-signed-replies": True}
    ).require_signed_replies
    assert not fedbuff_from_run_config({}).require_signed_replies
    with pytest.raises(ValueError, match="require-signed-replies"):
        fedbuff_from_run_config({"require-signed-replies": "yes"})
    recorded = fedbuff_from_run_config({"require-signed-replies": True}).config_dict()
    assert recorded["require_signed_replies"] is True
    assert "require_signed_replies" not in fedbuff_from_run_config({}).config_dict()


def _content(record: object) -> RecordDict:
    arrays = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}
    )
    content[TRAINER_RECORD] = record  # type: ignore[assignment]
    return content


GOOD_KEY = ATTACKER.verify_key.encode(HexEncoder).decode()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (MetricRecord({"public-key": 1}), "is not a ConfigRecord"),
        (ConfigRecord({"public-key": GOOD_KEY}), "expected exactly"),
        (
            ConfigRecord({"public-key": GOOD_KEY, "signature": "ab" * 64, "x": 1}),
            "expected exactly",
        ),
        (ConfigRecord({"public-key": 5, "signature": "ab" * 64}), "of type int"),
        (ConfigRecord({"public-key": GOOD_KEY.upper(), "signature": "ab" * 64}), "hex"),
        (ConfigRecord({"public-key": "k" * 1_000_000, "signature": "ab"}), "hex"),
        (ConfigRecord({"public-key": GOOD_KEY, "signature": b"\x00" * 64}), "hex"),
        (ConfigRecord({"public-key": GOOD_KEY, "signature": ["ab"] * 64}), "of type"),
        (
            ConfigRecord({"public-key": GOOD_KEY, "signature": "ab" * 64}),
            "does not verify",
        ),
        (ConfigRecord({"x" * 100_000: GOOD_KEY, "signature": "ab" * 64}), "expected"),
    ],
)
def test_malformed_signature_records_are_rejected_with_short_reasons(
    record: object, reason: str
) -> None:
    with pytest.raises(UpdateRejected) as raised:
        TrainerCheck().check(7, _content(record), "0" * 64)
    assert reason in raised.value.reason and len(raised.value.reason) < 400


def test_malformed_records_on_the_path_are_rejected_never_a_crash(
    tmp_path: Path,
) -> None:
    def junk(_msg: Message, _context: Context, reply: Message) -> None:
        reply.content[TRAINER_RECORD] = ConfigRecord(
            {"public-key": "k" * 1_000_000, "signature": 3}
        )

    result = signed_run(tmp_path, tamper=junk, partition=2, ledger=False)
    bad = [r for r in result.rejected if "trainer signature record" in r.reason]
    assert bad and all(len(r.reason) < 400 for r in bad)
    assert len(result.versions) == 6


# --------------------------------------------------------------------- ledger
def test_a_payload_swapped_and_re_signed_by_the_ledger_key_fails_replay(
    tmp_path: Path,
) -> None:
    """The server holding the ledger key swaps a stored payload for one the node
    never sent (here its metrics changed, which moves no model, weight or
    contribution) and signs the chain again: plain verify passes, the
    replay finds the trainer's signature broken and names the block."""
    path = tmp_path / "l.db"
    signed_run(tmp_path, versions=3)
    with Ledger(path, create=False) as ledger:
        entry = ledger.block(2).body["included"][0]
        node_id, content = ledger.blobs.load_update(entry["payload"])
        content["metrics"]["train-loss"] = 0.125
        forged = ledger.blobs.put_update(node_id, content)
        digest = sender_update_digest(node_id, content)

        def swap(body: dict[str, Any]) -> None:
            body["included"][0] = dict(
                body["included"][0], payload=forged, digest=digest
            )

        rewrite(ledger, 2, body=swap)
        assert ledger.verify().ok
    code, text = flchain("verify", str(path), "--replay")
    assert code == 1, text
    assert "replay FAILED at block 2: included update 0: trainer signature" in text
    assert "does not verify" in text


def _heights_including(ledger: Ledger, node: int) -> list[int]:
    """The heights of the blocks that include an update of ``node``."""
    return [
        b.height
        for b in ledger.blocks()
        if any(int(u["node_id"]) == node for u in b.body["included"])
    ]


@pytest.mark.parametrize("forgery", ["own key", "stripped"])
def test_a_pinned_node_re_signed_or_stripped_by_the_ledger_key_fails_verify(
    tmp_path: Path, forgery: str
) -> None:
    """The server re-signs a pinned node's later update with a key of its own
    (or strips its signature) and writes the block again: verify fails there."""
    path = tmp_path / "l.db"
    signed_run(tmp_path, versions=6)
    node, _ = node_of(path, 0, tmp_path)
    with Ledger(path, create=False) as ledger:
        heights = _heights_including(ledger, node)
        height = heights[1]  # its second block: the first pinned its key
        block = ledger.block(height)
        index = next(
            i for i, u in enumerate(block.body["included"]) if int(u["node_id"]) == node
        )
        entry = block.body["included"][index]
        _, content = ledger.blobs.load_update(entry["payload"])
        trained_on = ledger.block(0).header["model_hash"]  # any model: not checked here
        if forgery == "own key":
            content[TRAINER_RECORD] = sign_reply(ATTACKER, node, content, trained_on)
        else:
            content = RecordDict(
                {k: v for k, v in content.items() if k != TRAINER_RECORD}
            )
        forged = dict(
            entry,
            payload=ledger.blobs.put_update(node, content),
            digest=sender_update_digest(node, content),
        )
        if forgery == "own key":
            forged[TRAINER_FIELD] = GOOD_KEY
        else:
            del forged[TRAINER_FIELD]

        def swap(body: dict[str, Any]) -> None:
            body["included"][index] = forged

        rewrite(ledger, height, body=swap)
    code, text = flchain("verify", str(path), "--replay")
    assert code == 1, text
    assert text.startswith(f"FAILED at block {height}: included update {index}: ")
    assert "were included signed by trainer key" in text


def test_a_ledger_requiring_signatures_fails_replay_for_an_unsigned_payload(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    signed_run(tmp_path, versions=3, require_signed_replies=True)
    with Ledger(path, create=False) as ledger:
        block = ledger.block(1)  # a node's first inclusion: nothing pinned yet
        entry = block.body["included"][0]
        node_id, content = ledger.blobs.load_update(entry["payload"])
        content = RecordDict({k: v for k, v in content.items() if k != TRAINER_RECORD})
        forged = dict(
            entry,
            payload=ledger.blobs.put_update(node_id, content),
            digest=sender_update_digest(node_id, content),
        )
        del forged[TRAINER_FIELD]

        def swap(body: dict[str, Any]) -> None:
            body["included"][0] = forged

        rewrite(ledger, 1, body=swap)
        assert ledger.verify().ok  # unsigned before any pin: the blocks allow it
    code, text = flchain("verify", str(path), "--replay")
    assert code == 1, text
    assert "block 1: included update 0: its payload is not signed" in text


# -------------------------------------------------------------- honest runs
def test_an_honest_signed_run_verifies_and_replays_all_signed(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, require_signed_replies=True)
    assert not result.rejected
    entries = included_entries(path)
    assert entries and all(TRAINER_FIELD in u for u in entries)
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    n = len(entries)
    assert f"trainers: {n} of {n} included updates name a trainer key" in text
    assert (
        f"trainers: {n} of {n} included updates in the replayed blocks signed by "
        "their trainers"
    ) in text


def test_the_digits_app_signs_with_its_node_config_key(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    from flchain_flwr.sim import app_run_config, run_federation, tiered

    path = tmp_path / "l.db"
    config = app_run_config(
        "apps/flchain_cnn",
        {
            "num-server-rounds": 3,
            "buffer-size": 2,
            "local-steps": 2,
            "ledger-path": str(path),
            "require-signed-replies": True,
        },
    )
    nodes = [
        {
            "partition-id": i,
            "num-partitions": 4,
            TRAINER_KEY_CONFIG: str(tmp_path / f"node{i}.key"),
        }
        for i in range(4)
    ]
    run = run_federation(
        server_app, client_app, devices=tiered(4), run_config=config, node_configs=nodes
    )
    assert isinstance(run.result, AsyncResult) and not run.result.rejected
    for i in range(4):
        assert stat.S_IMODE((tmp_path / f"node{i}.key").stat().st_mode) == 0o600
    entries = included_entries(path)
    n = len(entries)
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    assert (
        f"trainers: {n} of {n} included updates in the replayed blocks signed by "
        "their trainers"
    ) in text


def test_a_signed_run_with_a_pov_committee_replays_at_every_header(
    tmp_path: Path,
) -> None:
    """The committee's members replay each pending block (signatures included)
    before they sign its header."""
    from flchain_flwr.pov import Committee, Threshold

    from .test_pov import verifiers

    committee = Committee(verifiers(4), threshold=Threshold(value=0))
    signed_run(tmp_path, versions=4, committee=committee)
    entries = included_entries(tmp_path / "l.db")
    assert entries and all(TRAINER_FIELD in u for u in entries)
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 0, text
    assert "in 4 of them a quorum of signers recomputed the model by replay" in text
    n = len(entries)
    assert f"trainers: {n} of {n} included updates in the replayed" in text


def test_remote_members_replay_signed_payloads_and_sign_replayed(
    tmp_path: Path,
) -> None:
    """Verifier nodes replay each pending block from the payloads they were
    sent (trainer records included) and sign ``replayed: true``."""
    from flchain_flwr.pov import Threshold, discovery
    from flchain_flwr.pov.remote import RemoteCommittee
    from flchain_flwr.sim import simulate
    from flchain_flwr.strategies import Constant

    from .test_remote_pov import TRAINERS, _app

    configs: list[dict[str, int | float | str | bool]] = [
        {
            "partition-id": pid,
            "num-partitions": TRAINERS,
            TRAINER_KEY_CONFIG: str(tmp_path / f"t{pid}.key"),
        }
        for pid in range(TRAINERS)
    ]
    configs += [
        {
            "partition-id": 0,
            "num-partitions": TRAINERS,
            "role": "verifier",
            "verifier-key": str(tmp_path / f"verifier-{i}.key"),
            "verifier-shard": i,
            "tolerance": 0.0,
        }
        for i in range(4)
    ]
    grid = VirtualGrid(
        _app(toy_client_app({}, mods=[signreply_mod])),
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    strategy = FedBuff(
        buffer_size=3,
        staleness_fn=Constant(),
        server_lr=0.3,
        committee=RemoteCommittee(grid, nodes, threshold=Threshold(value=0)),
        ledger=tmp_path / "chain.db",
        seed=0,
        require_signed_replies=True,
    )
    simulate(strategy, grid, initial_arrays(), num_rounds=3)
    path = tmp_path / "chain.db"
    with Ledger(path, create=False) as ledger:
        for block in ledger.blocks():
            if block.height:
                signatures = ledger.header_signatures(block.height)
                assert signatures and all(s["replayed"] is True for s in signatures)
    entries = included_entries(path)
    assert entries and all(TRAINER_FIELD in u for u in entries)
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text


def test_signed_dgc_replies_over_a_downlink_replay(tmp_path: Path) -> None:
    """The signer outside the downlink and DGC mods: it signs the sparse reply
    as sent, and names a downlink delta's model by the hash the delta names."""
    from flchain_flwr.mods import DGCConfig, dgc_mod, downlink_mod

    deltas_sent = []

    def count(msg: Message, context: Context, call_next: Any) -> Message:
        deltas_sent.append("flchain.downlink" in msg.content)  # as received
        return call_next(msg, context)  # type: ignore[no-any-return]

    result = signed_run(
        tmp_path,
        inner=(downlink_mod(), dgc_mod(DGCConfig(density=0.01, min_sparse_size=1))),
        arrays=ArrayRecord({"w": Array(np.zeros(1000, np.float32))}),
        downlink=True,
        require_signed_replies=True,
        outer=(count,),
    )
    assert not result.rejected
    assert any(deltas_sent), "no downlink delta was sent"
    entries = included_entries(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        deltas = [ledger.blobs.load_update(u["payload"])[1] for u in entries]
    assert any("flchain.downlink" in c for c in deltas)  # nodes held their base
    code, text = flchain("verify", str(tmp_path / "l.db"), "--replay")
    assert code == 0, text
    n = len(entries)
    assert f"trainers: {n} of {n} included updates in the replayed" in text


# ------------------------------------------------- an update included twice
def test_an_update_included_again_in_a_later_block_fails_verify(
    tmp_path: Path,
) -> None:
    """The ledger key's holder puts a node's included signed update into a later
    block again (its signature names no block) and signs the chain again:
    plain verify fails at that block, naming where it was first included."""
    path = tmp_path / "l.db"
    signed_run(tmp_path, versions=6)
    node, _ = node_of(path, 0, tmp_path)
    with Ledger(path, create=False) as ledger:
        heights = _heights_including(ledger, node)
        first, later = heights[0], heights[1]
        old = next(
            u for u in ledger.block(first).body["included"] if int(u["node_id"]) == node
        )
        index = next(
            i
            for i, u in enumerate(ledger.block(later).body["included"])
            if int(u["node_id"]) == node
        )

        def again(body: dict[str, Any]) -> None:
            body["included"][index] = dict(
                body["included"][index],
                **{k: old[k] for k in ("digest", "payload", "trainer")},
            )

        rewrite(ledger, later, body=again)
    code, text = flchain("verify", str(path))
    assert code == 1, text
    assert text.startswith(f"FAILED at block {later}: ")
    assert f"update {old['digest']} was already included in block {first}" in text


def resent(tamper_state: dict[str, RecordDict]) -> Tamper:
    """A node sending its first reply again for every later train message."""

    def tamper(_msg: Message, _context: Context, reply: Message) -> None:
        first = tamper_state.setdefault("first", reply.content)
        reply.content = first

    return tamper


def test_a_node_resending_a_signed_reply_on_a_later_base_is_rejected(
    tmp_path: Path,
) -> None:
    """A node (holding its own trainer key) sends its first signed reply again
    on later versions: its signature names the first model, so the server
    rejects every copy and the chain verifies."""
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, tamper=resent({}), partition=0, versions=6)
    node, _ = node_of(path, 0, tmp_path)
    assert {r.node_id for r in result.rejected} == {node}
    why = reasons(result, node)
    assert why and all("does not verify" in w for w in why), why
    code, text = flchain("verify", str(path))
    assert code == 0, text


def unchanged(msg: Message, context: Context, call_next: Any) -> Message:
    """A node whose training leaves the model as it came (inside the signer):
    on an unchanged global model its signed reply is the same bytes again."""
    reply: Message = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        reply.content["arrays"] = msg.content["arrays"]
    return reply


def test_a_signed_reply_repeated_on_an_unchanged_model_is_included_once(
    tmp_path: Path,
) -> None:
    """Every node returns the model unchanged, so the model never moves and
    each node's signed reply is the same bytes, signed over the same model, on
    every version: the server includes each once and rejects the repeats as
    already included (which verify would fail), and the chain verifies."""
    path = tmp_path / "l.db"
    result = signed_run(tmp_path, inner=(unchanged,), versions=4)
    digests = [u["digest"] for u in included_entries(path)]
    assert digests and len(digests) == len(set(digests))
    assert result.rejected
    assert all("was already included in block" in r.reason for r in result.rejected)
    code, text = flchain("verify", str(path))
    assert code == 0, text


def test_an_unsigned_reply_sent_again_on_a_later_base_is_another_update(
    tmp_path: Path,
) -> None:
    """The same bytes of an unsigned full-weights reply on another base are
    another update (another delta): included again, and the chain verifies
    (only a signed update, whose signature names its base, is held to once
    per chain)."""
    path = tmp_path / "l.db"
    result = signed_run(
        tmp_path, tamper=resent({}), partition=0, signing=(), versions=6
    )
    assert not result.rejected
    digests = [u["digest"] for u in included_entries(path)]
    assert len(digests) > len(set(digests))
    code, text = flchain("verify", str(path))
    assert code == 0, text


def test_a_resumed_run_rejects_a_signed_reply_its_chain_included(
    tmp_path: Path,
) -> None:
    """The included signed updates survive a resume: after the restart, the
    nodes' repeated signed replies on the unchanged model are rejected as
    included by the first run."""
    path = tmp_path / "l.db"
    signed_run(tmp_path, inner=(unchanged,), versions=2)
    result = signed_run(tmp_path, inner=(unchanged,), versions=4)
    why = [r.reason for r in result.rejected]
    assert why and all("was already included in block" in w for w in why), why
    assert any(w.endswith(("in block 1", "in block 2")) for w in why), why
    code, text = flchain("verify", str(path))
    assert code == 0, text


# ---------------------------------------------------- the store's model hashes
def test_a_run_nobody_signs_in_hashes_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a ledger and with no reply signed, the server never hashes a
    version (the hash only serves to check a trainer signature)."""
    from flchain_flwr.strategies import versions

    hashed: list[int] = []

    def counted(model: Any) -> str:
        hashed.append(1)
        return model_hash(model)

    monkeypatch.setattr(versions, "model_hash", counted)
    result = signed_run(tmp_path, signing=(), ledger=False)
    assert len(result.versions) == 6 and not result.rejected
    assert not hashed


def test_the_version_store_hashes_a_model_only_when_a_signed_reply_needs_it() -> None:
    """A version's hash is the ledger's when given, else hashed from its kept
    copy when first asked for; nothing is hashed when a version is adopted, so
    a version in flight whose full copy goes keeps a hash only once replies
    are signed (``keep_hashes``)."""
    from flchain_flwr.strategies.versions import VersionStore

    models = [{"w": np.full(3, v, dtype=np.float32)} for v in range(4)]
    given = "ab" * 32
    store = VersionStore(0, models[0], lambda: 20, hashed=given)
    assert store.model_hash(0) == given  # the ledger's, not hashed again
    store.dispatched(5, 0)
    store.settled(5, 0, "delta")  # node 5 sends deltas: needs no full copy
    store.advance(1, models[1])
    store.dispatched(5, 1)
    store.advance(2, models[2])  # version 1's copy goes, unhashed
    assert store.get(1) is None and store.model_hash(1) is None
    store.keep_hashes = True
    store.dispatched(5, 2)
    store.advance(3, models[3])  # version 2 is hashed before its copy goes
    assert store.get(2) is None and store.model_hash(2) == model_hash(models[2])
    assert store.model_hash(3) == model_hash(models[3])  # from the current model

"""Committee members check a PoVStrategy (wrapper) block before they sign it.

Its model is the wrapped strategy's aggregation, which no replay recomputes,
so members sign it ``replayed: false``; but they first run what ``verify
--replay`` checks of it (:func:`~flchain_flwr.ledger.replaywrapped.
check_wrapped`): in process, from the ledger, its payloads, example counts
and contributions; a remote member, from its vote requests' payloads and the
header request (it is not sent the new model), all but the contributions.
Each forgery is the server's, holding the ledger key: a swapped payload, a
wrong example count."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict

from flchain_flwr.arrays import to_arrayrecord
from flchain_flwr.ledger import Block, Ledger
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.payload import PAYLOAD_FIELD
from flchain_flwr.ledger.serverstate import SERVER_STATE_FIELD
from flchain_flwr.pov.memberreplay import STATE_PREFIX, member_replay
from flchain_flwr.pov.memory import Pending
from flchain_flwr.pov.syncblock import NextBlock

from .test_pov_signreply import pov_signed_run

Forgery = Callable[[dict[str, Any]], None]
"""What the server changes in block 2's ``append`` arguments."""


def wrong_count(fields: dict[str, Any]) -> None:
    """Included update 0 recorded with one example more than it claimed."""
    fields["included"][0]["num_examples"] += 1


def swapped_payloads(fields: dict[str, Any]) -> None:
    """Included updates 0 and 1 stored with each other's reply."""
    payloads = fields["payloads"]
    payloads[0], payloads[1] = payloads[1], payloads[0]


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        (wrong_count, "included update 0 records"),
        (swapped_payloads, "included update 0: its stored payload does not hash"),
    ],
)
def test_in_process_members_refuse_a_forged_wrapper_block(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forgery: Forgery,
    reason: str,
) -> None:
    honest = NextBlock.body

    def forged(self: NextBlock, server_round: int, *args: Any) -> dict[str, Any]:
        fields = honest(self, server_round, *args)
        if server_round == 2:
            forgery(fields)
        return fields

    monkeypatch.setattr(NextBlock, "body", forged)
    with pytest.raises(RuntimeError) as refused:
        pov_signed_run(tmp_path, rounds=2)
    assert "0 of 4 committee members signed its header" in str(refused.value)
    assert reason in str(refused.value), refused.value
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        assert len(ledger) == 2  # genesis and block 1: block 2 never written
        assert ledger.verify().ok


def test_in_process_members_sign_an_honest_wrapper_block_not_replayed(
    tmp_path: Path,
) -> None:
    pov_signed_run(tmp_path, rounds=2)
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        for height in (1, 2):
            signatures = ledger.header_signatures(height)
            assert signatures and all(s["replayed"] is False for s in signatures)


# ------------------------------------------------------------- remote member
def _with_body(block: Block, body: dict[str, Any]) -> Block:
    body_bytes = encode(block.format_version, body)
    header = {**block.header, "body_hash": sha256_hex(BODY_TAG, body_bytes)}
    header_bytes = encode(block.format_version, header)
    return dataclasses.replace(
        block,
        hash=sha256_hex(HEADER_TAG, header_bytes),
        header_bytes=header_bytes,
        body_bytes=body_bytes,
        header=header,
        body=body,
    )


def _state_blobs(ledger: Ledger, *blocks: Block) -> RecordDict:
    """The claim history blobs a header request carries."""
    content = RecordDict()
    for block in blocks:
        digest = block.body[SERVER_STATE_FIELD]["claims"]
        content[STATE_PREFIX + digest] = to_arrayrecord(ledger.blobs.load_model(digest))
    return content


def _remote_member(
    ledger: Ledger, block: Block
) -> tuple[ConfigRecord, RecordDict, Pending]:
    """What a remote member holds when asked to sign block 2: the payloads
    and parent of its vote requests, and the header request's settings,
    previous block and state blobs (:func:`~flchain_flwr.pov.memberreplay.
    replay_material`, from a ledger whose head is block 1)."""
    prev = ledger.block(1)
    config = ledger.recorded_config(prev)
    assert config is not None
    parent = str(prev.header["model_hash"])
    pending = Pending(
        chain_id=str(block.header["chain_id"]),
        height=2,
        prev_hash=prev.hash,
        parent_model=parent,
        keys=(config["arrayrecord_key"], config["weighted_by_key"]),
        payloads={
            u[PAYLOAD_FIELD]: ledger.blobs.get(u[PAYLOAD_FIELD])
            for u in block.body["included"]
        },
        bases={u["digest"]: "" for u in block.body["included"]},
        models={parent: ledger.blobs.load_model(parent)},
    )
    cfg = ConfigRecord(
        {
            "config": encode(block.format_version, config),
            "earlier-headers": [prev.header_bytes],
            "earlier-bodies": [prev.body_bytes],
        }
    )
    return cfg, _state_blobs(ledger, prev, block), pending


def _count_plus_one(body: dict[str, Any]) -> None:
    body["included"][0] = {
        **body["included"][0],
        "num_examples": body["included"][0]["num_examples"] + 1,
    }


def _payload_of_update_1(body: dict[str, Any]) -> None:
    body["included"][0] = {
        **body["included"][0],
        PAYLOAD_FIELD: body["included"][1][PAYLOAD_FIELD],
    }


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        (_count_plus_one, "included update 0 records"),
        (_payload_of_update_1, "included update 0: its payload was sent by another"),
    ],
)
def test_a_remote_member_refuses_a_forged_wrapper_block(
    tmp_path: Path, forgery: Forgery, reason: str
) -> None:
    pov_signed_run(tmp_path, rounds=2)
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        honest = ledger.block(2)
        cfg, content, pending = _remote_member(ledger, honest)
        # honest: payloads and counts pass, the model is not recomputed
        assert member_replay(cfg, content, pending, honest) == (False, None)
        body = {**honest.body, "included": list(honest.body["included"])}
        forgery(body)
        replayed, problem = member_replay(
            cfg, content, pending, _with_body(honest, body)
        )
    assert not replayed and problem is not None and reason in problem, problem

"""Regression: a refused proposal must not poison the members' replay.

Forges the review's attack: a pending block carrying a ``config`` (server lr
7) under the chain's real ``config_digest``, then the honest block.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from flchain_flwr.ledger import Block, Ledger
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.replay import PendingReplay

from .test_pov import pov_chain


def _rebuilt(block: Block, body: dict[str, Any], config_digest: str) -> Block:
    body_bytes = encode(block.format_version, body)
    header = {
        **block.header,
        "body_hash": sha256_hex(BODY_TAG, body_bytes),
        "config_digest": config_digest,
    }
    header_bytes = encode(block.format_version, header)
    return dataclasses.replace(
        block,
        hash=sha256_hex(HEADER_TAG, header_bytes),
        header_bytes=header_bytes,
        body_bytes=body_bytes,
        header=header,
        body=body,
    )


def _with_config(block: Block, config: dict[str, Any], digest: str) -> Block:
    return _rebuilt(block, {**block.body, "config": config}, digest)


def _evil(ledger: Ledger, honest: Block) -> dict[str, Any]:
    config = copy.deepcopy(ledger.recorded_config(honest))
    assert config is not None
    return {**config, "server_lr": 7.0}


def test_a_config_not_hashing_to_its_digest_is_refused_and_forgotten(
    tmp_path: Path,
) -> None:
    ledger, _ = pov_chain(tmp_path)
    honest = ledger.block(3)
    assert PendingReplay(ledger).check(honest) == (True, None)
    replay = PendingReplay(ledger)
    forged = _with_config(honest, _evil(ledger, honest), honest.header["config_digest"])
    assert replay.check(forged) == (
        False,
        "its recorded config does not hash to its config_digest",
    )
    assert replay.check(honest) == (True, None)


def test_a_proposal_that_fails_replay_leaves_no_trace(tmp_path: Path) -> None:
    """Its config hashes to its own digest, but its model is not the replay's;
    a later block naming that digest without carrying it is not replayed."""
    ledger, _ = pov_chain(tmp_path)
    honest = ledger.block(3)
    evil = _evil(ledger, honest)
    digest = ledger.config_digest(evil)
    replay = PendingReplay(ledger)
    replayed, problem = replay.check(_with_config(honest, evil, digest))
    assert not replayed and problem is not None
    body = {k: v for k, v in honest.body.items() if k != "config"}
    later = _rebuilt(honest, body, digest)
    assert replay.check(later) == (False, None)  # its settings are unknown

"""The head check before an append, forged: who can get a block extended,
holding which keys (see :mod:`flchain_flwr.ledger.headcheck`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from flchain_flwr.ledger import Block, Ledger
from flchain_flwr.ledger.blocks import LedgerError
from flchain_flwr.ledger.canonical import HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.headcheck import HeadCheck

from .test_pov import pov_chain


def _resigned(block: Block, key: SigningKey, **changes: Any) -> Block:
    """``block`` with its header changed and signed by ``key`` as leader."""
    leader = key.verify_key.encode(HexEncoder).decode()
    header = dict(block.header, **changes, leader=leader)
    header_bytes = encode(block.format_version, header)
    return replace(
        block,
        header=header,
        header_bytes=header_bytes,
        hash=sha256_hex(HEADER_TAG, header_bytes),
        signature=key.sign(HEADER_TAG + header_bytes).signature.hex(),
    )


def _refusal(ledger: Ledger, head: Block) -> str:
    with pytest.raises(LedgerError) as err:
        HeadCheck().check(ledger, head, ledger.signing_key)
    return str(err.value)


def test_a_pov_head_must_be_led_by_a_pool_member(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    HeadCheck().check(ledger, head, ledger.signing_key)
    member = next(iter(committee.verifiers.values())).key
    HeadCheck().check(ledger, _resigned(head, member), ledger.signing_key)
    # the ledger's own key (the server's) is not in the pool, nor an outsider
    for key in (ledger.signing_key, SigningKey(b"\x09" * 32)):
        assert "not a member of the verifier pool" in _refusal(
            ledger, _resigned(head, key)
        )


def test_a_head_that_is_not_intact_is_refused(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    member = next(iter(committee.verifiers.values())).key
    cases = {
        "its hash does not match its header": replace(
            head, header_bytes=head.header_bytes + b" "
        ),
        "another chain": _resigned(head, member, chain_id="other"),
        "says height": _resigned(head, member, height=head.height + 1),
        "its format is": _resigned(head, member, format="flchain-block/9"),
        "its signature is invalid": replace(
            head, signature=member.sign(b"something else").signature.hex()
        ),
    }
    for expected, forged in cases.items():
        assert expected in _refusal(ledger, forged), expected


def test_outside_pov_only_the_ledger_key_or_signer_extends(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "plain.db")
    model = {"w": np.zeros(3, dtype=np.float32)}
    ledger.append(model=model, model_version=0, base_version=0, config_digest="")
    head = ledger.head()
    assert head is not None
    HeadCheck().check(ledger, head, ledger.signing_key)
    other = SigningKey(b"\x07" * 32)
    forged = _resigned(head, other)
    assert "not by this ledger's key" in _refusal(ledger, forged)
    HeadCheck().check(ledger, forged, other)  # this append's signer

"""C2SP tlog-proof text and RFC 6962 audit paths, as provenance bundles use
them: paths agree with the ledger's Merkle roots, and the parser is strict."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger.checkpoint import Checkpoint, LogFrontier, sign_checkpoint
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.notes import SignedNote, SignerKey
from flchain_flwr.ledger.tlog_proof import (
    TlogProofError,
    audit_path,
    check_inclusion,
    make_tlog_proof,
    parse_tlog_proof,
    root_from_path,
)

KEY = SignerKey("example.com/log", SigningKey(b"\x21" * 32))


def leaves(count: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]


def signed(entries: list[bytes]) -> SignedNote:
    frontier = LogFrontier(entry.hex() for entry in entries)
    checkpoint = Checkpoint("example.com/log", frontier.size, frontier.root())
    return sign_checkpoint(checkpoint, [KEY])


def test_every_audit_path_leads_to_the_ledgers_merkle_root() -> None:
    for size in range(1, 34):
        entries = leaves(size)
        root = bytes.fromhex(merkle_root([e.hex() for e in entries]))
        for index in range(size):
            path = audit_path(entries, index)
            assert root_from_path(entries[index], index, size, path) == root
            # Another leaf, position or size does not lead there.
            other = (index + 1) % size
            if other != index:
                assert root_from_path(entries[other], index, size, path) != root
            if path:
                with pytest.raises(TlogProofError):
                    root_from_path(entries[index], index, size, path[:-1])
            with pytest.raises(TlogProofError):
                root_from_path(entries[index], index, size, [*path, root])


def test_a_proof_round_trips_through_its_text_and_checks() -> None:
    entries = leaves(11)
    proof = make_tlog_proof(entries, 6, signed(entries))
    text = proof.text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nindex 6\n")
    assert "\n\nexample.com/log\n11\n" in text
    again = parse_tlog_proof(text)
    assert again == proof
    assert check_inclusion(again, entries[6]).size == 11
    with pytest.raises(TlogProofError, match="another root"):
        check_inclusion(again, entries[5])


def test_a_proof_against_a_checkpoint_of_another_size_is_not_made() -> None:
    entries = leaves(5)
    with pytest.raises(TlogProofError, match="covers 4 leaves"):
        make_tlog_proof(entries, 1, signed(entries[:4]))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t.replace("tlog-proof@v1", "tlog-proof@v2"), "first line"),
        (lambda t: t.replace("index 6", "index 06"), "plain decimal"),
        (lambda t: t.replace("index 6", "index -6"), "plain decimal"),
        (lambda t: t.replace("index 6", "idx 6"), "'index' line"),
        (lambda t: t.replace("\nindex", "\nextra AAAA\nindex"), "unauthenticated"),
        (lambda t: t.split("\n\n")[0], "no empty line"),
        (lambda t: t.replace("=\n", "\n", 1), "base64"),
        (
            lambda t: t.replace(
                "\n\nexample.com/log\n11\n", "\n\nexample.com/log\n011\n"
            ),
            "malformed",
        ),
        (lambda t: t[: t.rindex("\u2014")], "malformed"),
    ],
)
def test_the_parser_is_strict(edit: object, reason: str) -> None:
    entries = leaves(11)
    text = make_tlog_proof(entries, 6, signed(entries)).text()
    assert callable(edit)
    with pytest.raises(TlogProofError, match=reason):
        parse_tlog_proof(edit(text))


def test_an_extra_line_is_read_only_when_allowed() -> None:
    entries = leaves(3)
    text = make_tlog_proof(entries, 2, signed(entries)).text()
    text = text.replace("\nindex", "\nextra aGVsbG8=\nindex")
    assert parse_tlog_proof(text, allow_extra=True).extra == b"hello"

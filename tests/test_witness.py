"""C2SP cosignatures and the witness: what a witness cosigns and what it refuses.

Who holds what: the log operator holds ``LOG`` (it can sign any checkpoint
of its origin, including a fork, a truncation or a rewrite); each witness
holds its own key; an attacker holds only ``ATTACKER``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger.checkpoint import Checkpoint, sign_checkpoint
from flchain_flwr.ledger.cosignature import (
    CosignatureError,
    CosignerKey,
    cosign,
    cosignature_timestamp,
    cosigned_message,
    cosigner_of,
    parse_cosigner_key,
    verify_cosignatures,
)
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.notes import (
    NoteSignature,
    NoteVerificationError,
    SignedNote,
    SignerKey,
    parse_note,
    verify_note,
)
from flchain_flwr.ledger.rfc6962 import HashTree
from flchain_flwr.ledger.witness import CosignRequest, Witness, WitnessRefused

ORIGIN = "example.com/log"
LOG = SignerKey(ORIGIN, SigningKey(b"\x11" * 32))
ATTACKER = SignerKey(ORIGIN, SigningKey(b"\x66" * 32))
WITNESS = SignerKey("witness.example/w1", SigningKey(b"\x22" * 32))


def leaves(count: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(count)]


def checkpoint_note(hashes: list[str], key: SignerKey = LOG) -> str:
    root = bytes.fromhex(merkle_root(hashes))
    return str(sign_checkpoint(Checkpoint(ORIGIN, len(hashes), root), [key]))


def rfc_proof(hashes: list[str], old: int, new: int) -> tuple[bytes, ...]:
    tree = HashTree(bytes.fromhex(digest) for digest in hashes)
    return tuple(tree.consistency(old, new))


def request(hashes: list[str], old: int, key: SignerKey = LOG) -> CosignRequest:
    proof = rfc_proof(hashes, old, len(hashes)) if old <= len(hashes) else ()
    return CosignRequest(old, checkpoint_note(hashes, key), proof)


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness.init(
        tmp_path / "w", WITNESS.name, logs=[LOG.verifier], signer=WITNESS
    )


# ------------------------------------------------------------ cosignatures
def test_key_id_and_timestamps_match_published_vectors() -> None:
    # A native cosignature/v1 vkey published in transparency-dev/formats' tests:
    # its key ID is SHA-256(name || 0x0A || 0x04 || key)[:4].
    key = parse_cosigner_key(
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
    )
    assert key.key_id.hex() == "da77ade7"
    # An ordinary Ed25519 (0x01) vkey is not a cosigner key.
    with pytest.raises(CosignatureError, match="0x01"):
        parse_cosigner_key("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    # The timestamps of the spec's example line and of transparency-dev's test.
    for line, expected in (
        (
            "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
            "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==",
            1679315147,
        ),
        (
            "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+"
            "8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==",
            1727964367,
        ),
    ):
        raw = base64.b64decode(line)
        assert cosignature_timestamp(NoteSignature("w", raw[:4], raw[4:])) == expected


def test_signed_message_is_the_specs_example() -> None:
    text = (
        "example.com/behind-the-sofa\n20852163\n"
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert cosigned_message(text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + text.encode()
    )


def test_cosignature_round_trip_and_forgeries() -> None:
    note = parse_note(checkpoint_note(leaves(3)))
    line = cosign(note.text, WITNESS, 1700000000)
    key = cosigner_of(WITNESS)
    assert len(line.signature) == 72 and line.key_id == key.key_id
    signed = parse_note(str(note) + line.line())
    assert verify_cosignatures(signed, [key]) == {key.encode(): 1700000000}
    assert parse_cosigner_key(key.encode()) == key
    # The witness's 0x01 note key does not verify it: a different key ID.
    with pytest.raises(NoteVerificationError):
        verify_note(SignedNote(note.text, (line,)), [WITNESS.verifier])
    # A changed timestamp, a changed checkpoint, a flipped signature bit.
    forged_time = NoteSignature(
        line.name, line.key_id, (1).to_bytes(8, "big") + line.signature[8:]
    )
    flipped = bytearray(line.signature)
    flipped[-1] ^= 1
    for bad in (forged_time, NoteSignature(line.name, line.key_id, bytes(flipped))):
        with pytest.raises(CosignatureError, match="does not verify"):
            key.verify(note.text, bad)
    other = parse_note(checkpoint_note(leaves(4)))
    with pytest.raises(CosignatureError):
        key.verify(other.text, line)
    # Unknown keys are ignored, never trusted.
    stranger = CosignerKey(
        "witness.example/w1", bytes(SigningKey(b"\x33" * 32).verify_key)
    )
    assert verify_cosignatures(signed, [stranger]) == {}


# ----------------------------------------------------------------- witness
def test_witness_cosigns_append_only_growth(witness: Witness) -> None:
    log = leaves(9)
    first = witness.add_checkpoint(request(log[:4], 0))
    note = parse_note(checkpoint_note(log[:4]))
    assert witness.key.verify(note.text, first) > 0
    witness.add_checkpoint(request(log[:4], 4))  # the same checkpoint again
    witness.add_checkpoint(request(log, 4))
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size == 9
    reopened = Witness(witness.folder)
    assert reopened.latest(ORIGIN) == latest


def test_witness_refuses_fork_truncation_rewrite_and_strangers(
    witness: Witness,
) -> None:
    log = leaves(8)
    witness.add_checkpoint(request(log[:6], 0))
    cases = {
        "truncation": (request(log[:4], 6), 409, "truncation: size 4 is below size 6"),
        # The spec's answer to the same size with another root is 409.
        "rewrite": (request(leaves(6, "x"), 6), 409, "fork or rewrite: size 6"),
        "fork": (
            CosignRequest(
                6,
                checkpoint_note(leaves(8, "fork")),
                rfc_proof(leaves(8, "fork"), 6, 8),  # of the fork's own past
            ),
            422,
            "does not extend size 6",
        ),
        "stale old size": (request(log, 4), 409, "this witness cosigned 6"),
        "old above size": (CosignRequest(9, checkpoint_note(log)), 400, "above"),
        "missing proof": (CosignRequest(6, checkpoint_note(log)), 422, "proof"),
        "attacker's key": (request(log, 6, ATTACKER), 403, "not signed by its key"),
        "unknown origin": (
            CosignRequest(
                0,
                str(
                    sign_checkpoint(
                        Checkpoint("other.example/log", 1, bytes(32)),
                        [SignerKey("other.example/log", SigningKey(b"\x44" * 32))],
                    )
                ),
            ),
            404,
            "unknown origin",
        ),
    }
    for name, (bad, status, reason) in cases.items():
        with pytest.raises(WitnessRefused, match=reason) as refused:
            witness.add_checkpoint(bad)
        assert refused.value.status == status, name
    state = witness.latest(ORIGIN)
    assert state is not None and state.size == 6  # nothing refused was stored
    witness.add_checkpoint(request(log, 6))  # the honest extension still works


def test_trust_on_first_use_fixes_the_first_key(tmp_path: Path) -> None:
    witness = Witness.init(tmp_path / "w", "w.example", trust_on_first_use=True)
    bare = request(leaves(3), 0)
    with pytest.raises(WitnessRefused, match="needs the log's key") as refused:
        witness.add_checkpoint(bare)
    assert refused.value.status == 404
    first = CosignRequest(0, bare.checkpoint, (), LOG.verifier.encode())
    witness.add_checkpoint(first)
    state = json.loads((tmp_path / "w" / "state.json").read_text())
    assert state["logs"][ORIGIN]["learned"] == "first-use"
    # Later, another key named after the origin is not learned over it.
    forged = request(leaves(5), 3, ATTACKER)
    forged = CosignRequest(
        3, forged.checkpoint, forged.consistency, ATTACKER.verifier.encode()
    )
    with pytest.raises(WitnessRefused, match="not signed by its key"):
        witness.add_checkpoint(forged)


def test_malformed_requests_are_400(witness: Witness) -> None:
    for data in (b"", b"[]", b'{"old": 0, "checkpoint": ""}', b"old -1\n\n"):
        with pytest.raises(WitnessRefused) as refused:
            witness.add_checkpoint(CosignRequest.decode(data))
        assert refused.value.status == 400
    with pytest.raises(WitnessRefused) as refused:
        witness.add_checkpoint(CosignRequest(0, "not a note"))
    assert refused.value.status == 400


_LOOP = textwrap.dedent(
    """
    import sys
    from tests.test_witness import leaves, request
    from flchain_flwr.ledger.witness import Witness

    witness = Witness(sys.argv[1], clock=lambda: 1700000000)
    log = leaves(10_000)
    size = 0
    while True:
        new = size + 1 + size // 4
        witness.add_checkpoint(request(log[:new], size))
        size = new
        print(size, flush=True)
    """
)


def test_a_witness_killed_mid_run_keeps_every_checkpoint_it_answered_for(
    witness: Witness, tmp_path: Path
) -> None:
    root = Path(__file__).parent.parent
    process = subprocess.Popen(
        [sys.executable, "-c", _LOOP, str(witness.folder)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    answered = 0
    try:
        assert process.stdout is not None
        for _ in range(12):
            answered = int(process.stdout.readline())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    restarted = Witness(witness.folder)
    latest = restarted.latest(ORIGIN)
    # Persisted before answering: never behind an answer it gave.
    assert latest is not None and latest.size >= answered
    log = leaves(10_000)
    assert latest.root.hex() == merkle_root(log[: latest.size])
    with pytest.raises(WitnessRefused, match="truncation"):
        restarted.add_checkpoint(request(log[: answered - 1], latest.size))
    restarted.add_checkpoint(request(log[: latest.size + 3], latest.size))

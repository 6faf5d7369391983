"""Signed notes and tlog checkpoints, against the C2SP specs' own vectors."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, notekeys
from flchain_flwr.ledger.checkpoint import (
    EMPTY_ROOT,
    Checkpoint,
    CheckpointError,
    ledger_checkpoint,
    ledger_origin,
    open_checkpoint,
    parse_checkpoint,
    read_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from flchain_flwr.ledger.checkpointcheck import (
    CheckpointMismatch,
    check_against_ledger,
    check_consistency,
)
from flchain_flwr.ledger.merkle import consistency_proof, merkle_root
from flchain_flwr.ledger.notes import (
    MAX_SIGNATURES,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    SignedNote,
    SignerKey,
    VerifierKey,
    generate_signer_key,
    key_id,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    read_signer_key,
    read_verifier_key,
    sign_note,
    verify_note,
    write_key_file,
)

from .ledger_helpers import build_ledger

# c2sp.org/signed-note, "Verifier keys", "Example" (C2SP/C2SP at 5ba5ee8).
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1"
    "ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# c2sp.org/signed-note, the note at the top (its key is not published).
SPEC_POEM = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGI"
    "TLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
# c2sp.org/tlog-checkpoint, the example checkpoint (its key is not published).
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmR"
    "DeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)
# Go's golang.org/x/mod/sumdb/note, ExampleSign and ExampleOpen: the signer-key
# form the C2SP spec leaves undefined, and a signature made with it.
GO_SKEY = (
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
)
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGU"
    "gYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# RFC 6962 reference data (certificate-transparency testonly/constants.go):
# leaves, and the roots of their first 1..8.
CT_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written from the RFC with plain hashlib."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1
    while split * 2 < len(leaves):  # the largest power of two below n
        split *= 2
    left, right = rfc6962_root(leaves[:split]), rfc6962_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def signer(name: str, seed: int) -> SignerKey:
    return SignerKey(name, SigningKey(bytes([seed]) * 32))


# ------------------------------------------------------------ spec vectors
def test_the_spec_verifier_key_parses_and_verifies_the_spec_note() -> None:
    key = parse_verifier_key(SPEC_VKEY)
    assert key.name == "example.com/foo"
    assert key.key_id.hex() == "530d903a"
    assert key.encode() == SPEC_VKEY
    assert str(key) == SPEC_VKEY
    note = parse_note(SPEC_NOTE)
    assert note.text == "This is an example message.\n"
    assert str(note) == SPEC_NOTE
    assert verify_note(SPEC_NOTE, [key]) == (key,)
    assert verify_note(SPEC_NOTE.encode("utf-8"), [key]) == (key,)


def test_the_spec_note_fails_once_its_text_changes() -> None:
    key = parse_verifier_key(SPEC_VKEY)
    altered = SPEC_NOTE.replace("example message", "example massage")
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_note(altered, [key])


def test_the_spec_poem_keeps_its_blank_lines_and_its_unknown_key_is_ignored() -> None:
    note = parse_note(SPEC_POEM)
    assert note.text == (
        "Ognuno sta solo sul cuor della terra\n"
        "trafitto da un raggio di sole:\n"
        "\n"
        "ed è subito sera.\n"
    )
    (sig,) = note.signatures
    assert sig.name == "quasimodo.example/salvatore"
    assert sig.key_id == bytes.fromhex("367ba04b")  # "NnugSw" decoded
    assert len(sig.signature) == 64
    assert str(note) == SPEC_POEM
    with pytest.raises(NoteVerificationError, match="no trusted key signed"):
        verify_note(SPEC_POEM, [parse_verifier_key(SPEC_VKEY)])


def test_the_spec_checkpoint_parses_exactly() -> None:
    note = parse_note(SPEC_CHECKPOINT)
    checkpoint = parse_checkpoint(note.text)
    assert checkpoint == Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert checkpoint.text() == note.text
    assert note.signatures[0].name == "example.com/behind-the-sofa"
    with pytest.raises(NoteVerificationError, match="no trusted key"):
        open_checkpoint(SPEC_CHECKPOINT, [parse_verifier_key(SPEC_VKEY)])


def test_go_signer_key_signs_byte_for_byte_like_go() -> None:
    key = parse_signer_key(GO_SKEY)
    assert key.encode() == GO_SKEY
    assert key.verifier.encode() == GO_VKEY
    assert str(sign_note(GO_TEXT, [key])) == GO_NOTE
    assert verify_note(GO_NOTE, [parse_verifier_key(GO_VKEY)]) == (key.verifier,)


def test_key_ids_follow_the_spec_formula() -> None:
    key = parse_verifier_key(SPEC_VKEY)
    by_hand = hashlib.sha256(b"example.com/foo\n\x01" + key.public_key).digest()[:4]
    assert key_id("example.com/foo", key.public_key) == by_hand
    # Same key, another name: another ID (the name is hashed in).
    assert key_id("example.com/bar", key.public_key) != by_hand


# ------------------------------------------------------------- round trips
def test_a_note_signed_by_two_keys_verifies_against_each_and_both() -> None:
    alice, bob = signer("example.org/alice", 1), signer("example.org/bob", 2)
    note = sign_note("hello\n\nworld\n", [alice, bob])
    parsed = parse_note(note.encode())
    assert parsed == note
    assert verify_note(parsed, [bob.verifier]) == (bob.verifier,)
    assert verify_note(parsed, [bob.verifier, alice.verifier]) == (
        alice.verifier,
        bob.verifier,
    )
    with pytest.raises(NoteVerificationError, match="no trusted key"):
        verify_note(parsed, [signer("example.org/carol", 3).verifier])


def test_cosigning_keeps_earlier_signatures_and_refuses_a_second_by_one_key() -> None:
    log, witness = signer("example.org/log", 1), signer("example.org/witness", 2)
    cosigned = sign_note(sign_note("tree\n", [log]), [witness])
    assert [s.name for s in cosigned.signatures] == [log.name, witness.name]
    assert verify_note(str(cosigned), [witness.verifier]) == (witness.verifier,)
    with pytest.raises(NoteError, match=r"two signatures by example\.org/log"):
        sign_note(cosigned, [log])


def test_generated_keys_round_trip_through_their_text_forms() -> None:
    key = generate_signer_key("example.org/new")
    again = parse_signer_key(key.encode())
    assert again.verifier == key.verifier
    assert parse_verifier_key(key.verifier.encode()) == key.verifier


def test_a_signer_key_never_prints_its_secret() -> None:
    key = parse_signer_key(GO_SKEY)
    secret = GO_SKEY.rsplit("+", 2)[-1]
    assert secret not in repr(key)
    assert secret not in str(key)
    with pytest.raises(NoteError) as caught:
        parse_signer_key(GO_SKEY.replace("c74f20a3", "c74f20a4"))
    assert secret not in str(caught.value)


# ---------------------------------------------------------- trust decisions
def test_a_key_sharing_only_the_name_is_not_trusted_and_not_checked() -> None:
    impostor = signer("example.com/foo", 9).verifier  # same name, another ID
    with pytest.raises(NoteVerificationError, match="no trusted key signed"):
        verify_note(SPEC_NOTE, [impostor])


def test_a_bad_signature_by_a_trusted_key_rejects_the_whole_note() -> None:
    alice, bob = signer("example.org/alice", 1), signer("example.org/bob", 2)
    good = sign_note("hello\n", [alice, bob])
    forged_sig = NoteSignature(bob.name, bob.key_id, bytes(64))
    forged = SignedNote(good.text, (good.signatures[0], forged_sig))
    with pytest.raises(NoteVerificationError, match=r"example\.org/bob"):
        verify_note(str(forged), [alice.verifier, bob.verifier])
    # Bob not trusted: his line is ignored, Alice's suffices.
    assert verify_note(str(forged), [alice.verifier]) == (alice.verifier,)


def test_a_trusted_key_id_with_a_signature_of_the_wrong_length_fails() -> None:
    alice = signer("example.org/alice", 1)
    short = SignedNote("x\n", (NoteSignature(alice.name, alice.key_id, bytes(63)),))
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_note(str(short), [alice.verifier])


def test_two_trusted_keys_with_one_name_and_id_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real 4-byte ID collision takes ~2**32 tries: make every ID collide.
    monkeypatch.setattr(notekeys, "key_id", lambda *args: b"\x53\x0d\x90\x3a")
    key = VerifierKey("example.com/foo", parse_verifier_key(SPEC_VKEY).public_key)
    clash = VerifierKey("example.com/foo", bytes(32))
    with pytest.raises(NoteError, match="share a key ID"):
        verify_note(SPEC_NOTE, [key, clash])
    assert verify_note(SPEC_NOTE, [key, key]) == (key,)  # one key twice is fine


# ---------------------------------------------------------- strict parsing
SIG = SPEC_NOTE.split("\n")[2]  # the spec's signature line, without newline


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("This is an example message.\n" + SIG + "\n", "no blank line"),
        ("This is an example message.\n\n", "no signature lines"),
        ("This is an example message.\n\n" + SIG, "does not end in a newline"),
        ("This is an example message.\n\n" + SIG + "\n\n", "no signature lines"),
        ("This is an example message.\n\n" + SIG + "\n" + SIG + "\n", "two sig"),
        ("tab\there\n\n" + SIG + "\n", "control character"),
        ("crlf\r\n\n" + SIG + "\n", "control character"),
        ("x\n\n" + SIG.replace("\u2014", "--") + "\n", "em dash"),
        ("x\n\n" + SIG.replace("\u2014 ", "\u2014") + "\n", "em dash"),
        ("x\n\n" + SIG.replace("foo ", "foo") + "\n", "no space"),
        ("x\n\n" + SIG.replace("foo ", "foo  ") + "\n", "not valid base64"),
        ("x\n\n" + SIG.replace("example.com/foo", "a+b") + "\n", "'\\+'"),
        ("x\n\n\u2014  " + SIG.split(" ")[-1] + "\n", "must not be empty"),
        ("x\n\n" + SIG.replace("Uw2Q", "Uw2!") + "\n", "not valid base64"),
        ("x\n\n" + SIG.replace("aQM=", "aQM") + "\n", "not valid base64"),
        ("x\n\n" + SIG.replace("aQM=", "aQN=") + "\n", "not canonical base64"),
        ("x\n\n\u2014 a/b " + base64.b64encode(b"1234").decode() + "\n", "4 bytes"),
        ("x\n\n\u2014 a/b \n", "0 bytes"),
    ],
)
def test_malformed_notes_are_rejected_with_a_reason(note: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_note(note)


def test_the_text_ends_at_the_last_blank_line() -> None:
    # A signature-like line before the last blank line is text, not a signature.
    note = parse_note(SPEC_NOTE + "\n" + SIG + "\n")
    assert note.text == SPEC_NOTE
    assert len(note.signatures) == 1
    with pytest.raises(NoteVerificationError, match="does not verify"):
        verify_note(note, [parse_verifier_key(SPEC_VKEY)])


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="not valid UTF-8"):
        parse_note(b"caf\xe9\n\n" + SIG.encode() + b"\n")
    with pytest.raises(NoteError, match="not valid UTF-8"):
        sign_note("\udc80\n", [signer("a/b", 1)])


def test_sixteen_signatures_are_accepted_and_too_many_are_not() -> None:
    signers = [signer(f"example.org/w{i}", i) for i in range(MAX_SIGNATURES + 1)]
    sixteen = sign_note("tree\n", signers[:16])
    assert len(verify_note(str(sixteen), [s.verifier for s in signers])) == 16
    lines = "".join(s.sign("tree\n").line() for s in signers)
    with pytest.raises(NoteError, match="at most"):
        parse_note("tree\n\n" + lines)


def test_note_texts_must_end_in_a_newline() -> None:
    with pytest.raises(NoteError, match="end in a newline"):
        sign_note("no newline", [signer("a/b", 1)])
    with pytest.raises(NoteError, match="at least one key"):
        sign_note("x\n", [])


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("example.com/foo+530d903a", "not a verifier key"),
        ("example.com/foo+530d903b+" + SPEC_VKEY.split("+")[2], "does not match"),
        ("example.com/bar+530d903a+" + SPEC_VKEY.split("+")[2], "does not match"),
        ("example.com/foo+530D903A+" + SPEC_VKEY.split("+")[2], "lower-case hex"),
        ("example.com/foo+530d90+" + SPEC_VKEY.split("+")[2], "lower-case hex"),
        ("example com+530d903a+" + SPEC_VKEY.split("+")[2], "spaces"),
        ("+530d903a+" + SPEC_VKEY.split("+")[2], "must not be empty"),
        (
            "example.com/foo+530d903a+"
            + base64.b64encode(b"\x02" + bytes(32)).decode(),
            "0x02 is not Ed25519",
        ),
        (
            "example.com/foo+530d903a+"
            + base64.b64encode(b"\x01" + bytes(31)).decode(),
            "32 bytes, not 31",
        ),
        ("example.com/foo+530d903a+AekyeR!m", "not valid base64"),
    ],
)
def test_malformed_verifier_keys_are_rejected(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_verifier_key(vkey)


@pytest.mark.parametrize(
    ("skey", "message"),
    [
        (GO_SKEY.removeprefix("PRIVATE+KEY+"), "starts with"),
        (GO_SKEY.replace("c74f20a3", "00000000"), "does not match"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3", "not a signer key"),
        (GO_VKEY.join(["PRIVATE+KEY+", ""]), "does not match"),  # a public key
    ],
)
def test_malformed_signer_keys_are_rejected(skey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_signer_key(skey)


# -------------------------------------------------------------- key files
def test_key_files_are_private_durable_and_never_silently_replaced(
    tmp_path: Path,
) -> None:
    key = parse_signer_key(GO_SKEY)
    path = tmp_path / "log.key"
    write_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == GO_SKEY + "\n"
    assert read_signer_key(path).verifier == key.verifier
    with pytest.raises(FileExistsError):
        write_key_file(path, generate_signer_key("a/b"))
    assert read_signer_key(path).encode() == GO_SKEY
    write_key_file(tmp_path / "log.vkey", key.verifier)
    assert read_verifier_key(tmp_path / "log.vkey") == key.verifier
    other = generate_signer_key("a/b")
    write_key_file(path, other, overwrite=True)
    assert read_signer_key(path).encode() == other.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["log.key", "log.vkey"]  # no temp files


def test_key_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k", generate_signer_key("a/b"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_checkpoint_files_are_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    log = signer("example.org/log", 1)
    note = sign_checkpoint(Checkpoint("example.org/log", 0, EMPTY_ROOT), [log])
    old = os.umask(0o077)
    try:
        write_checkpoint(tmp_path / "c", note)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o644
    assert (tmp_path / "c").read_bytes() == note.encode()


# ---------------------------------------------------------- checkpoint text
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("o\n1\n" + base64.b64encode(bytes(32)).decode(), "end in a newline"),
        ("o\n1\n", "needs origin, size and root"),
        ("\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "origin must not"),
        ("o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n", "leading zeros"),
        ("o\n00\n" + base64.b64encode(bytes(32)).decode() + "\n", "leading zeros"),
        ("o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n+1\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n 1\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n1.0\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n\u0661\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n\n" + base64.b64encode(bytes(32)).decode() + "\n", "not a decimal"),
        ("o\n9223372036854775808\n" + "A" * 43 + "=\n", "out of range"),
        ("o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n", "31 bytes"),
        ("o\n1\n" + base64.b64encode(bytes(33)).decode() + "\n", "33 bytes"),
        ("o\n1\nnot-base64\n", "not base64"),
        ("o\n1\n" + "A" * 42 + "B=\n", "not canonical"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "extension line"),
    ],
)
def test_malformed_checkpoints_are_rejected(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_checkpoint(text)


def test_checkpoints_round_trip_with_extensions_and_the_largest_size() -> None:
    log = signer("example.org/log", 1)
    checkpoint = Checkpoint("example.org/log", 2**63 - 1, bytes(range(32)), ("ext",))
    note = sign_checkpoint(checkpoint, [log])
    assert note.text == (
        "example.org/log\n9223372036854775807\n"
        + base64.b64encode(bytes(range(32))).decode()
        + "\next\n"
    )
    assert open_checkpoint(note.encode(), [log.verifier]) == (
        checkpoint,
        (log.verifier,),
    )
    with pytest.raises(CheckpointError, match="newline or control"):
        Checkpoint("two\nlines", 1, bytes(32))
    with pytest.raises(CheckpointError, match="out of range"):
        Checkpoint("o", -1, bytes(32))


def test_a_signed_note_that_is_not_a_checkpoint_is_refused() -> None:
    log = signer("example.org/log", 1)
    with pytest.raises(CheckpointError):
        open_checkpoint(str(sign_note("just one line\n", [log])), [log.verifier])


# ------------------------------------------------------------- RFC 6962 roots
def test_the_empty_tree_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle_root([]) == EMPTY_ROOT.hex() == rfc6962_root([]).hex()


def test_ledger_roots_match_the_rfc_6962_reference_vectors() -> None:
    for size, root in enumerate(CT_ROOTS, 1):
        assert merkle_root(CT_LEAVES[:size]) == root
        assert rfc6962_root([bytes.fromhex(x) for x in CT_LEAVES[:size]]).hex() == root


def test_ledger_roots_match_an_independent_rfc_6962_tree_for_every_size() -> None:
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(40)]
    for size in range(len(leaves) + 1):
        expected = rfc6962_root(leaves[:size]).hex()
        assert merkle_root([leaf.hex() for leaf in leaves[:size]]) == expected


# ----------------------------------------------------------------- ledgers
@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return build_ledger(tmp_path / "ledger.db", blocks=7)


def test_a_ledger_checkpoint_covers_its_block_hashes(ledger: Ledger) -> None:
    hashes = ledger.block_hashes()
    origin = ledger_origin(ledger.chain_id)
    assert origin == "flchain-flwr/test-chain"
    checkpoint = ledger_checkpoint(origin, hashes)
    assert checkpoint.size == len(ledger) == 7
    assert checkpoint.root == rfc6962_root([bytes.fromhex(h) for h in hashes])
    for size in range(len(hashes) + 1):
        check_against_ledger(ledger_checkpoint(origin, hashes, size), origin, hashes)


def test_the_ledger_key_signs_a_checkpoint_that_verify_can_trust(
    ledger: Ledger, tmp_path: Path
) -> None:
    origin = ledger_origin(ledger.chain_id)
    log_key = SignerKey(origin, ledger.signing_key)
    path = tmp_path / "ledger.db.checkpoint"
    note = sign_checkpoint(ledger_checkpoint(origin, ledger.block_hashes()), [log_key])
    write_checkpoint(path, note)
    write_checkpoint(path, note)  # replaces
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    trusted = VerifierKey(origin, bytes(ledger.signing_key.verify_key))
    checkpoint, verified = read_checkpoint(path, [trusted])
    assert verified == (trusted,)
    check_against_ledger(checkpoint, origin, ledger.block_hashes())


def test_a_cut_short_ledger_no_longer_matches_its_checkpoint(ledger: Ledger) -> None:
    origin = ledger_origin(ledger.chain_id)
    checkpoint = ledger_checkpoint(origin, ledger.block_hashes())
    ledger.db.execute("DELETE FROM blocks WHERE height = 6")
    assert ledger.verify().ok  # a shorter chain is still a valid chain ...
    with pytest.raises(CheckpointMismatch, match="6 blocks, the checkpoint 7"):
        check_against_ledger(checkpoint, origin, ledger.block_hashes())


def test_a_rewritten_block_no_longer_matches_the_checkpoint(ledger: Ledger) -> None:
    origin = ledger_origin(ledger.chain_id)
    hashes = ledger.block_hashes()
    checkpoint = ledger_checkpoint(origin, hashes, 4)
    rewritten = [*hashes[:2], "ab" * 32, *hashes[3:]]
    with pytest.raises(CheckpointMismatch, match="rewritten"):
        check_against_ledger(checkpoint, origin, rewritten)
    changed_later = [*hashes[:4], "ab" * 32]  # after the checkpoint: not covered
    check_against_ledger(checkpoint, origin, changed_later)
    with pytest.raises(CheckpointMismatch, match="is for"):
        check_against_ledger(checkpoint, ledger_origin("other"), hashes)


def test_an_origin_must_be_able_to_name_a_key() -> None:
    with pytest.raises(CheckpointError, match="cannot be an origin"):
        ledger_origin("a b")
    with pytest.raises(CheckpointError, match="cannot be an origin"):
        ledger_origin("a+b")


# ------------------------------------------------------------- consistency
def test_two_checkpoints_of_a_growing_ledger_are_consistent(ledger: Ledger) -> None:
    origin = ledger_origin(ledger.chain_id)
    hashes = ledger.block_hashes()
    for old in range(len(hashes) + 1):
        for new in range(old, len(hashes) + 1):
            proof = consistency_proof(hashes, old, new) if 0 < old < new else None
            check_consistency(
                ledger_checkpoint(origin, hashes, old),
                ledger_checkpoint(origin, hashes, new),
                proof,
            )
    # Ledger.prove_consistency's proof (it also names the chain) fits too.
    check_consistency(
        ledger_checkpoint(origin, hashes, 3),
        ledger_checkpoint(origin, hashes),
        ledger.prove_consistency(3),
    )


def test_a_forked_log_is_inconsistent(ledger: Ledger) -> None:
    origin = ledger_origin(ledger.chain_id)
    hashes = ledger.block_hashes()
    older = ledger_checkpoint(origin, hashes, 3)
    forked = [*hashes[:2], "cd" * 32, *hashes[3:]]
    newer = ledger_checkpoint(origin, forked)
    with pytest.raises(CheckpointMismatch, match="other trees"):
        check_consistency(older, newer, consistency_proof(hashes, 3, 7))
    forged = consistency_proof(forked, 3, 7)
    forged["prior_root"] = older.root.hex()  # claim the honest older root
    with pytest.raises(CheckpointMismatch, match="does not extend"):
        check_consistency(older, newer, forged)
    same_size = ledger_checkpoint(origin, forked, 3)
    with pytest.raises(CheckpointMismatch, match="forked"):
        check_consistency(older, same_size)


def test_consistency_needs_a_proof_one_origin_and_the_right_order(
    ledger: Ledger,
) -> None:
    origin = ledger_origin(ledger.chain_id)
    hashes = ledger.block_hashes()
    older = ledger_checkpoint(origin, hashes, 3)
    newer = ledger_checkpoint(origin, hashes)
    with pytest.raises(CheckpointMismatch, match="is needed"):
        check_consistency(older, newer)
    with pytest.raises(CheckpointMismatch, match="larger"):
        check_consistency(newer, older, consistency_proof(hashes, 3, 7))
    with pytest.raises(CheckpointMismatch, match="other trees"):
        check_consistency(older, newer, consistency_proof(hashes, 2, 7))
    other = Checkpoint("flchain-flwr/other", newer.size, newer.root)
    with pytest.raises(CheckpointMismatch, match="different logs"):
        check_consistency(older, other, consistency_proof(hashes, 3, 7))
    bad_empty = Checkpoint(origin, 0, bytes(32))
    with pytest.raises(CheckpointMismatch, match="empty tree"):
        check_consistency(bad_empty, newer)

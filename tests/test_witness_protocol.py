"""tlog-witness's text request and answer, and their RFC 9162 consistency proofs.

The proofs are checked three ways: against certificate-transparency's
published RFC 6962 vectors, by an independent verifier written here with
hashlib only (it walks RFC 9162's ``SUBPROOF`` recursion top-down, where the
module runs §2.1.4.2's bit loop), and by forging (a flipped bit, a hash
dropped or added, another root). The decoder is strict: each kind of bad body
is a 400 with a reason, and 10,000 random mutations never raise anything else.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from pathlib import Path

import pytest

from flchain_flwr.ledger.checkpoint import Checkpoint, LogFrontier, sign_checkpoint
from flchain_flwr.ledger.cosignature import (
    COSIGNATURE_V1,
    CosignatureError,
    CosignerKey,
    cosign,
    parse_cosigner_key,
)
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.notes import (
    ED25519,
    NoteError,
    PublicNoteKey,
    SignerKey,
    VerifierKey,
    parse_note,
    parse_verifier_key,
)
from flchain_flwr.ledger.rfc6962 import ConsistencyError, HashTree, verify_consistency
from flchain_flwr.ledger.witness import (
    CosignRequest,
    Witness,
    WitnessAnswer,
    WitnessRefused,
)

from .test_checkpoint import CT_LEAVES, CT_ROOTS
from .test_witness import LOG, ORIGIN, WITNESS

# certificate-transparency's RFC 6962 consistency proofs over the CT leaves
# (its C++ tests, also in its Python and Go verifiers).
CT_PROOFS = {
    (1, 8): (
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ),
    (6, 8): (
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ),
    (2, 5): (
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ),
}


def independent_verify(
    m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """RFC 9162's consistency check, re-derived from ``SUBPROOF`` (hashlib only)."""

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    if m == 0 or m == n:
        return not proof and (m == 0 or old_root == new_root)
    path = list(proof)

    def walk(m: int, n: int, whole: bool) -> tuple[bytes, bytes]:
        # (old subtree hash, new subtree hash) of a range of n leaves whose
        # first m are the old tree's; the outermost split's hash is last.
        if m == n:
            if whole:
                return old_root, old_root
            head = path.pop(0)
            return head, head
        k = 1
        while 2 * k < n:
            k *= 2
        if m <= k:
            right = path.pop()
            old, new = walk(m, k, whole)
            return old, node(new, right)
        left = path.pop()
        old, new = walk(m - k, n - k, False)
        return node(left, old), node(left, new)

    try:
        old, new = walk(m, n, True)
    except IndexError:  # too few hashes
        return False
    return not path and (old, new) == (old_root, new_root)


# ------------------------------------------------------------ RFC proofs
def test_proofs_match_the_published_vectors() -> None:
    tree = HashTree(bytes.fromhex(leaf) for leaf in CT_LEAVES)
    for size, root in enumerate(CT_ROOTS, 1):
        assert tree.root(size).hex() == root
    for (m, n), expected in CT_PROOFS.items():
        proof = tree.consistency(m, n)
        assert [h.hex() for h in proof] == list(expected)
        old, new = bytes.fromhex(CT_ROOTS[m - 1]), bytes.fromhex(CT_ROOTS[n - 1])
        verify_consistency(m, n, old, new, proof)
        assert independent_verify(m, n, old, new, proof)
    assert tree.consistency(1, 1) == [] and tree.consistency(0, 8) == []


def test_every_proof_up_to_40_leaves_passes_the_independent_check() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    tree = HashTree(bytes.fromhex(h) for h in hashes)
    frontier = LogFrontier()
    for size in range(41):
        # The same roots as the checkpoints' (pymerkle, LogFrontier).
        assert tree.root(size) == frontier.root()
        assert tree.root(size).hex() == merkle_root(hashes[:size])
        if size < 40:
            frontier.append(hashes[size])
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = tree.consistency(m, n)
            old, new = tree.root(m), tree.root(n)
            assert independent_verify(m, n, old, new, proof), (m, n)
            verify_consistency(m, n, old, new, proof)


def test_forged_proofs_fail_both_verifiers() -> None:
    tree = HashTree(bytes([i]) for i in range(13))
    other = HashTree(bytes([i ^ 0x80]) for i in range(13))
    m, n = 5, 13
    proof, old, new = tree.consistency(m, n), tree.root(m), tree.root(n)
    forgeries: list[tuple[list[bytes], bytes, bytes]] = [
        (proof[:-1], old, new),
        (proof[1:], old, new),
        ([*proof, proof[0]], old, new),
        (proof, other.root(m), new),  # a fork's old root
        (proof, old, other.root(n)),  # a rewrite's new root
        (other.consistency(m, n), old, new),
    ]
    for index in range(len(proof)):
        flipped = bytearray(proof[index])
        flipped[7] ^= 1
        forgeries.append(
            ([*proof[:index], bytes(flipped), *proof[index + 1 :]], old, new)
        )
    for bad, old_root, new_root in forgeries:
        assert not independent_verify(m, n, old_root, new_root, bad)
        with pytest.raises(ConsistencyError):
            verify_consistency(m, n, old_root, new_root, bad)
    with pytest.raises(ConsistencyError, match="must be empty"):
        verify_consistency(0, n, tree.root(0), new, proof)


# ------------------------------------------------------------- the body
def signed(size: int, key: SignerKey = LOG, salt: int = 0) -> str:
    tree = HashTree(bytes([i, salt]) for i in range(size))
    return str(sign_checkpoint(Checkpoint(ORIGIN, size, tree.root()), [key]))


def body(old: int, new: int, salt: int = 0) -> bytes:
    tree = HashTree(bytes([i, salt]) for i in range(new))
    proof = tuple(tree.consistency(old, new))
    return CosignRequest(old, signed(new, salt=salt), proof).encode()


def test_the_specs_example_body_decodes() -> None:
    example = (
        "old 20852014\n"
        "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
        "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
        "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
        "\n"
        "example.com/behind-the-sofa\n"
        "20852163\n"
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        "\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurm"
        "RDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "\u2014 example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZ"
        "dXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n"
    ).encode()
    request = CosignRequest.decode(example)
    assert request.old == 20852014 and len(request.consistency) == 4
    assert request.consistency[0] == base64.b64decode(
        "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw="
    )
    assert request.checkpoint.startswith("example.com/behind-the-sofa\n20852163\n")
    assert request.encode() == example  # one canonical form


def test_malformed_bodies_are_400_with_a_reason() -> None:
    good = body(4, 9)
    head, _, note = good.partition(b"\n\n")
    hash_line = base64.b64encode(bytes(32)) + b"\n"
    cases = {
        b"\x00" * ((1 << 17) + 1): "larger than",
        good.replace(b"\n", b"\r\n"): "carriage return",
        b"\xff" + good: "not UTF-8",
        good.replace(b"old 4", b"old 04", 1): "'old <size>'",
        good.replace(b"old 4", b"old -4", 1): "'old <size>'",
        good.replace(b"old 4", b"old  4", 1): "'old <size>'",
        good.replace(b"old 4", b"new 4", 1): "'old <size>'",
        b"old 9223372036854775808\n\n" + note: "above 2**63 - 1",
        b"old 0\n" + hash_line * 64 + b"\n" + note: "more than 63",
        b"old 4\nnot base64!\n\n" + note: "line 2 is not one base64",
        b"old 4\n" + base64.b64encode(bytes(31)) + b"\n\n" + note: "line 2",
        b"old 4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n\n" + note: "line 2",
        head + b"\n": "no empty line",
        good + b"junk\n": "not a signed checkpoint",
        good + b"\n": "not a signed checkpoint",
        head + b"\n\nexample.com/log\n\n": "not a signed checkpoint",
    }
    for data, reason in cases.items():
        with pytest.raises(WitnessRefused, match=re.escape(reason)) as refused:
            CosignRequest.decode(data)
        assert refused.value.status == 400, reason


def test_ten_thousand_mutations_never_crash(tmp_path: Path) -> None:
    witness = Witness.init(tmp_path / "w", WITNESS.name, logs=[LOG.verifier])
    witness.add_checkpoint(CosignRequest.decode(body(0, 4)))
    good = body(4, 9)
    rng = random.Random(13)
    decoded = 0
    for _ in range(10_000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data) + 1)
            kind = rng.randrange(6)
            if kind == 0 and where < len(data):
                data[where] ^= 1 << rng.randrange(8)
            elif kind == 1:
                data.insert(where, rng.choice(b"\n\r =+/A0\xe2\x80\x94\xff"))
            elif kind == 2:
                del data[where : where + rng.randint(1, 50)]
            elif kind == 3:
                lines = bytes(data).split(b"\n")
                i = rng.randrange(len(lines))
                lines.insert(i, lines[rng.randrange(len(lines))])
                data = bytearray(b"\n".join(lines))
            elif kind == 4:
                data = data[: rng.randrange(len(data) + 1)]
            else:
                data += rng.randbytes(rng.randint(1, 20))
        try:
            CosignRequest.decode(bytes(data))
        except WitnessRefused as exc:
            assert exc.status == 400 and exc.reason
        else:
            decoded += 1
            answer = witness.answer(bytes(data))
            assert answer.status in (200, 400, 403, 404, 409, 422)
    assert 0 < decoded < 10_000
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size in (4, 9)


def test_answers_carry_the_line_or_the_size(tmp_path: Path) -> None:
    witness = Witness.init(tmp_path / "w", WITNESS.name, logs=[LOG.verifier])
    ok = witness.answer(body(0, 4))
    assert ok.status == 200 and ok.body.startswith(
        "\u2014 witness.example/w1 ".encode()
    )
    (line,) = ok.cosignatures(signed(4))
    assert witness.key.verify(parse_note(signed(4)).text, line) > 0
    stale = witness.answer(body(0, 9))
    assert (stale.status, stale.body) == (409, b"4\n")
    with pytest.raises(WitnessRefused) as refused:
        stale.cosignatures(signed(9))
    assert (refused.value.status, refused.value.size) == (409, 4)
    fork = witness.answer(body(4, 9, salt=1))  # the fork's own proof from 4
    assert fork.status == 422 and "does not extend size 4" in fork.reason
    assert witness.answer(b"old 1\n").status == 400
    for broken in (WitnessAnswer(409, b"04\n"), WitnessAnswer(200, b"no line\n")):
        with pytest.raises(WitnessRefused) as refused:
            broken.cosignatures(signed(4))
        assert refused.value.status == 502
    flood = "x" * 1_000_000  # a witness chooses its refusal's reason
    for answer in (WitnessAnswer(403, b"", flood), WitnessAnswer(200, flood.encode())):
        with pytest.raises(WitnessRefused) as refused:
            answer.cosignatures(signed(4))
        assert len(refused.value.reason) <= 300


# ------------------------------------------------------------- the keys
def test_one_key_class_two_type_bytes() -> None:
    public = bytes(WITNESS.signing_key.verify_key)
    note_key, cosigner = (
        VerifierKey(WITNESS.name, public),
        CosignerKey(WITNESS.name, public),
    )
    assert isinstance(note_key, PublicNoteKey) and isinstance(cosigner, PublicNoteKey)
    for key, algorithm in ((note_key, ED25519), (cosigner, COSIGNATURE_V1)):
        digest = hashlib.sha256(
            WITNESS.name.encode() + b"\n" + bytes([algorithm]) + public
        ).digest()
        assert key.key_id == digest[:4]
        assert key.encode().endswith(
            base64.b64encode(bytes([algorithm]) + public).decode()
        )
    assert note_key.key_id != cosigner.key_id
    assert note_key.encode() != cosigner.encode()
    assert parse_verifier_key(note_key.encode()) == note_key
    assert parse_cosigner_key(cosigner.encode() + "\n") == cosigner
    with pytest.raises(CosignatureError, match="0x01 is not cosignature/v1"):
        parse_cosigner_key(note_key.encode())
    with pytest.raises(NoteError, match="0x04 is not Ed25519"):
        parse_verifier_key(cosigner.encode())
    with pytest.raises(CosignatureError, match="32 bytes"):
        CosignerKey(WITNESS.name, b"short")
    line = cosign(parse_note(signed(3)).text, WITNESS, 1)
    assert line.key_id == cosigner.key_id

"""The published test vectors (docs/test-vectors.md) are what the code makes,
and they check out with nothing but hashlib, PyNaCl and an RFC 8785 encoder."""

from __future__ import annotations

import base64
import hashlib
import json

import rfc8785
from nacl.signing import VerifyKey

from .vectors import VECTORS, make_vectors


def test_the_code_makes_exactly_the_published_vectors() -> None:
    published = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert make_vectors() == published, "run `python -m tests.vectors` and review"


def jcs_int(text: str) -> int | float:
    """How a JCS reader takes an integer literal: exact within +-(2**53 - 1),
    else the double it stands for (JCS writes 1e20 as 100000000000000000000)."""
    value = int(text)
    return value if abs(value) <= 2**53 - 1 else float(text)


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash, written out here apart from the ledger's."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    left, right = rfc6962_root(leaves[:split]), rfc6962_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def test_the_vectors_check_out_independently() -> None:
    v = json.loads(VECTORS.read_text(encoding="utf-8"))
    keys, block, vote, checkpoint = v["keys"], v["block"], v["vote"], v["checkpoint"]
    leader = VerifyKey(bytes.fromhex(keys["leader_public_hex"]))
    header = block["header"].encode("utf-8")
    body = block["body"].encode("utf-8")
    # RFC 8785 bytes: re-encoding the parsed value gives the same bytes (an
    # integer literal beyond a double's exact range is the double it stands for).
    assert rfc8785.dumps(json.loads(header, parse_int=jcs_int)) == header
    assert rfc8785.dumps(json.loads(body, parse_int=jcs_int)) == body
    parsed = json.loads(header)
    assert parsed["format"] == "flchain-block/2" and "wall_time" not in parsed
    sha = hashlib.sha256
    assert sha(block["body_tag"].encode() + body).hexdigest() == block["body_hash"]
    assert parsed["body_hash"] == block["body_hash"]
    assert sha(block["header_tag"].encode() + header).hexdigest() == block["hash"]
    leader.verify(
        block["header_tag"].encode() + header, bytes.fromhex(block["signature_hex"])
    )
    # The vote: tag + RFC 8785 payload, signed by the verifier.
    payload = vote["payload"].encode("utf-8")
    tag = vote["tag"].encode("utf-8")
    assert payload.startswith(tag)
    assert rfc8785.dumps(json.loads(payload[len(tag) :])) == payload[len(tag) :]
    assert sha(payload).hexdigest() == vote["payload_sha256"]
    VerifyKey(bytes.fromhex(keys["verifier_public_hex"])).verify(
        payload, bytes.fromhex(vote["signature_hex"])
    )
    # It signs the block's position and parent, the rule's digest, its weight.
    signed = json.loads(payload[len(tag) :])
    assert signed["prev_hash"] == block["prev_hash"]
    assert signed["height"] == block["height"] and signed["view"] == 0
    assert signed["rule"] == sha(rfc8785.dumps(vote["rule"])).hexdigest()
    assert signed["candidate"] == vote["stored"]["candidate"]
    assert signed["weight"] == vote["stored"]["weight"]
    assert vote["stored"]["signature"] == vote["signature_hex"]
    # The checkpoint: a C2SP signed note over origin, size, RFC 6962 root.
    text, _, signatures = checkpoint["note"].partition("\n\n")
    origin, size, root = text.split("\n")
    assert origin == checkpoint["origin"] == keys["checkpoint_vkey"].split("+")[0]
    hashes = [bytes.fromhex(h) for h in checkpoint["block_hashes"]]
    assert int(size) == len(hashes) and hashes[-1].hex() == block["hash"]
    assert base64.b64decode(root) == rfc6962_root(hashes)
    (line,) = signatures.splitlines()
    name, blob = line.removeprefix("\u2014 ").split(" ")
    raw = base64.b64decode(blob)
    public = bytes.fromhex(keys["leader_public_hex"])
    key_id = sha(name.encode() + b"\n\x01" + public).digest()[:4]
    assert name == origin and raw[:4] == key_id
    vkey_name, vkey_id, vkey_data = keys["checkpoint_vkey"].split("+")
    assert (vkey_name, vkey_id) == (origin, key_id.hex())
    assert base64.b64decode(vkey_data) == b"\x01" + public
    leader.verify((text + "\n").encode("utf-8"), raw[4:])
    # A committee member's header signature and view change: tag + RFC 8785.
    member = VerifyKey(bytes.fromhex(keys["verifier_public_hex"]))
    for kind, tag in (
        ("header_signature", "flchain-header-sig/1\n"),
        ("view_change", "flchain-view-change/1\n"),
    ):
        statement = v[kind]["statement"].encode("utf-8")
        assert statement.startswith(tag.encode())
        fields = json.loads(statement[len(tag) :])
        assert rfc8785.dumps(fields) == statement[len(tag) :]
        assert fields["chain_id"] == "test-vectors" and fields["height"] == 1
        member.verify(statement, bytes.fromhex(v[kind]["signature_hex"]))
    assert json.loads(v["header_signature"]["statement"].split("\n", 1)[1]) == {
        "block": block["hash"],
        "chain_id": "test-vectors",
        "height": 1,
        "replayed": True,
        "view": 0,
    }
    assert (
        json.loads(v["view_change"]["statement"].split("\n", 1)[1])["prev_hash"]
        == (block["prev_hash"])
    )
    # A trainer's signature over a reply: tag + RFC 8785, node id as text.
    tag = b"flchain-trainer-sig/1\n"
    statement = v["trainer_signature"]["statement"].encode("utf-8")
    assert statement.startswith(tag)
    fields = json.loads(statement[len(tag) :])
    assert rfc8785.dumps(fields) == statement[len(tag) :]
    vote_payload = json.loads(payload[len(vote["tag"]) :])
    assert fields == {
        "model": vote_payload["parent_model"],  # the genesis model it trained on
        "node_id": "12345678901234567890",
        "update": "ab" * 32,
    }
    VerifyKey(bytes.fromhex(keys["trainer_public_hex"])).verify(
        statement, bytes.fromhex(v["trainer_signature"]["signature_hex"])
    )


def test_the_published_page_shows_the_vectors() -> None:
    page = (VECTORS.parents[2] / "docs" / "test-vectors.md").read_text("utf-8")
    v = json.loads(VECTORS.read_text(encoding="utf-8"))
    shown = [
        *v["keys"].values(),
        *(v["block"][k] for k in ("header", "body", "hash", "signature_hex")),
        v["block"]["body_hash"],
        v["vote"]["payload"],
        v["vote"]["payload_sha256"],
        v["vote"]["signature_hex"],
        v["checkpoint"]["note"],
        *v["checkpoint"]["block_hashes"],
        *(
            v[k]["signature_hex"]
            for k in ("header_signature", "view_change", "trainer_signature")
        ),
        *(
            v[k]["statement"].split("\n", 1)[1]
            for k in ("header_signature", "view_change", "trainer_signature")
        ),
    ]
    missing = [value for value in shown if value not in page]
    assert not missing, "update docs/test-vectors.md from the JSON file"

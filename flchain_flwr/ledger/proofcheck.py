"""Checking a proof from :mod:`.proofs` offline, against a trusted key or
checkpoint, and saying what it proves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .blocks import parse_block
from .canonical import HEADER_TAG, is_hex, sha256_hex
from .checkpoint import (
    CheckpointError,
    ledger_origin,
    open_checkpoint,
    parse_checkpoint,
)
from .keys import parse_trusted_key
from .merkle import InvalidProof, MalformedProof, proof_field, verify_proof
from .notes import NoteError, VerifierKey, parse_note
from .proof_quorum import check_proof_quorum
from .statements import signature_ok


@dataclass(frozen=True)
class _ProofAnchor:
    """What a proof is checked against: its chain, and the trust given."""

    chain_id: str
    origin: str
    key: VerifierKey | None
    checkpoint: bytes | None
    chain_fixed_by: str
    """What says the proof is about this chain (for the statement)."""

    @classmethod
    def of(
        cls,
        proof: Mapping[str, Any],
        trusted_key: str | None,
        checkpoint: bytes | None,
        chain_id: str | None,
    ) -> _ProofAnchor:
        """The anchor of ``proof``; ``InvalidProof`` if it is about a chain
        other than ``chain_id`` or the trusted vkey's."""
        proof_chain = proof_field(proof, "chain_id", str)
        try:
            origin = ledger_origin(proof_chain)
        except CheckpointError as exc:
            raise MalformedProof(str(exc)) from None
        if chain_id is not None and proof_chain != chain_id:
            raise InvalidProof(
                f"the proof is about chain {proof_chain!r}, not {chain_id!r}"
            )
        key = None if trusted_key is None else parse_trusted_key(trusted_key, origin)
        if key is not None and key.name != origin:
            raise InvalidProof(
                f"the proof is about {origin!r}; the trusted key is {key.name!r}"
            )
        if chain_id is not None:
            fixed = "the chain id asked for"
        elif trusted_key is not None and "+" in trusted_key:
            fixed = "the trusted vkey's name"
        elif checkpoint is not None:
            fixed = "the checkpoint given"
        else:
            fixed = (
                "the proof alone: a hex key signs every chain of its holder; "
                "give --chain-id to say which one you mean"
            )
        return cls(proof_chain, origin, key, checkpoint, fixed)

    def check(self, proof: Mapping[str, Any], size: int, root: str, own: bool) -> str:
        """Check that the log of ``size`` blocks with ``root`` is the one a
        trusted checkpoint describes: the caller's (its signature checked if a
        key is given), or with ``own`` the proof's own checkpoint, which the
        trusted key must have signed. Returns how; raises ``InvalidProof``."""
        if own or self.checkpoint is None:
            if self.key is None:
                raise ValueError("checking a proof needs a trusted key or a checkpoint")
            if "checkpoint" not in proof:
                raise InvalidProof(
                    "the proof has no 'checkpoint' signed by the trusted key to "
                    "anchor it"
                )
            try:
                note = proof_field(proof, "checkpoint", str).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MalformedProof(
                    f"the proof's checkpoint is not text: {exc}"
                ) from None
            how = "the proof's checkpoint, signed by the trusted key"
        else:
            note = self.checkpoint
            how = "the checkpoint given" + (
                ", signed by the trusted key" if self.key else ""
            )
        try:
            found = (
                open_checkpoint(note, [self.key])[0]
                if self.key is not None
                else parse_checkpoint(parse_note(note).text)
            )
        except (NoteError, CheckpointError) as exc:
            raise InvalidProof(f"checkpoint rejected: {exc}") from None
        if found.origin != self.origin:
            raise InvalidProof(
                f"the checkpoint is of {found.origin!r}, the proof of {self.origin!r}"
            )
        if (found.size, found.root.hex()) != (size, root):
            raise InvalidProof(
                f"the proof's log ({size} blocks, root {root}) is not the "
                f"checkpoint's ({found.size} blocks, root {found.root.hex()})"
            )
        return how


# pylint: disable=too-many-locals
def check_proof(
    proof: Mapping[str, Any],
    *,
    trusted_key: str | None = None,
    checkpoint: bytes | None = None,
    chain_id: str | None = None,
    pov: bool = False,
) -> str:
    """Verify a proof from :meth:`Ledger.prove_update` or
    :meth:`Ledger.prove_consistency` offline; return what it proves.

    A proof's own roots prove nothing about whose ledger it came from, so the
    log it is about must match a trusted checkpoint: ``checkpoint`` (a signed
    checkpoint's bytes, held by the caller), or the proof's own checkpoint
    signed by ``trusted_key`` (a vkey, or the hex Ed25519 key of the ledger's
    signer). ``chain_id`` requires the proof to be about that chain (a hex key
    does not fix it; a vkey's name does). An update proof's header signature
    must verify under the header's leader key, which must be the trusted key
    unless ``pov`` (a PoV chain's blocks are signed by rotating leaders: then
    only the checkpoint vouches for the block). A consistency proof checked
    against an older ``checkpoint`` anchors only its prior end: with
    ``trusted_key`` its later end must then be the proof's own checkpoint,
    signed by that key; without, the statement says the later end is not
    anchored.

    Raises ``ValueError`` if neither anchor is given, ``LedgerError`` if the
    trusted key is malformed, ``InvalidProof`` if the proof does not hold, and
    its subclass ``MalformedProof`` if it is not a well-formed proof at all
    (read a proof's JSON text with
    :func:`~flchain_flwr.ledger.merkle.parse_proof`).
    """
    if trusted_key is None and checkpoint is None:
        raise ValueError("checking a proof needs a trusted key or a checkpoint")
    if not isinstance(proof, Mapping):
        raise MalformedProof("a proof is a JSON object")
    kind = proof_field(proof, "type", str)
    if kind not in ("consistency", "update-in-block"):
        raise MalformedProof(f"unknown proof type {kind[:40]!r}")
    anchor = _ProofAnchor.of(proof, trusted_key, checkpoint, chain_id)
    chain = (
        f"the chain is {anchor.chain_id!r} (origin {anchor.origin}; "
        f"fixed by {anchor.chain_fixed_by})"
    )
    if kind == "consistency":
        return f"{_check_consistency(proof, anchor)}; {chain}"
    header_text = proof_field(proof, "header", str)
    signature = proof_field(proof, "signature", str)
    update = proof_field(proof, "update", dict)
    block = proof_field(proof, "block", dict)
    try:
        header_bytes = header_text.encode("utf-8")
        header, _ = parse_block(header_bytes, b"{}")
    except (ValueError, RecursionError) as exc:  # ValueError: NotCanonical, encoding
        raise MalformedProof(f"the block header is not canonical JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedProof("the block header is not a JSON object")
    block_hash = sha256_hex(HEADER_TAG, header_bytes)
    try:
        if (
            header["height"] != proof["height"]
            or header["chain_id"] != proof["chain_id"]
        ):
            raise InvalidProof("header does not match the claimed height or chain")
        if update["root"] != header["updates_root"]:
            raise InvalidProof("update proof is not anchored in the block header")
        if block["leaf"] != block_hash or block["index"] != header["height"]:
            raise InvalidProof("block proof is not about this block")
        leader = str(header["leader"])
    except KeyError as exc:
        raise MalformedProof(f"malformed proof: {exc!r} is missing") from None
    if not is_hex(signature, 128) or not signature_ok(
        leader, HEADER_TAG + header_bytes, signature
    ):
        raise InvalidProof(f"the header's signature by leader {leader} is invalid")
    if anchor.key is None:
        signed = f"signed by leader {leader}, a key not compared with any trusted key"
    elif leader == anchor.key.public_key.hex():
        signed = f"signed by the trusted key {leader}"
    elif pov:
        signed = (
            f"signed by PoV leader {leader}, whose place in the verifier pool and "
            "whose committee's votes were not checked here (the trusted key's "
            "checkpoint vouches for the block)"
        )
    else:
        raise InvalidProof(
            f"block {header['height']} is signed by {leader}, not by the trusted "
            "key (a PoV chain's blocks are signed by rotating leaders: say --pov)"
        )
    verify_proof(update, "inclusion")
    verify_proof(block, "inclusion")
    how = anchor.check(proof, block["size"], block["root"], own=False)
    quorum_line = check_proof_quorum(proof, header, block_hash)
    if quorum_line is not None:
        signed = f"signed by leader {leader}, the first of its committee; {quorum_line}"
    return (
        f"update {update['leaf']} is in block {header['height']} "
        f"({block_hash}, {signed}), which is block "
        f"{block['index']} of a {block['size']}-block log with root "
        f"{block['root']}; anchored by {how}; {chain}"
    )


def _check_consistency(proof: Mapping[str, Any], anchor: _ProofAnchor) -> str:
    """Check a consistency proof against ``anchor``; say which end is anchored
    by what."""
    verify_proof(dict(proof), "consistency")
    prior = (proof["prior_size"], proof["prior_root"])
    later = (proof["later_size"], proof["later_root"])
    claim = (
        f"the ledger of {later[0]} blocks (root {later[1]}) extends the ledger "
        f"of {prior[0]} blocks (root {prior[1]})"
    )
    try:
        how = anchor.check(proof, *later, own=False)
        return f"{claim}; the later end is anchored by {how}"
    except InvalidProof as later_failed:
        if anchor.checkpoint is None:
            raise
        try:
            held = anchor.check(proof, *prior, own=False)
        except InvalidProof:
            raise later_failed from None
    if anchor.key is None:
        return (
            f"{claim}; only the prior end is anchored, by {held}: the later "
            "ledger is the proof's word (give --trusted-key to check its "
            "checkpoint)"
        )
    how = anchor.check(proof, *later, own=True)
    return f"{claim}; the prior end is anchored by {held}, the later end by {how}"

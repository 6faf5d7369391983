"""Provenance bundles: one file tying a model to the training that made it.

A bundle (RFC 8785 JSON, in the spirit of C2SP ``tlog-proof``) holds::

    {"format": "flchain-provenance/1", "model_hash": <hex>,
     "training": {"origin": <subchain origin>, "height": h,
                  "block": {"header", "body", "signature"},
                  "parent_header": <text, or null at height 0>,
                  "genesis": {"header", "body", "signature"} or null at 0,
                  "proof": <c2sp.org/tlog-proof@v1 of block h in the anchored
                            checkpoint>,
                  "genesis_proof": <tlog-proof of block 0, or null at 0>},
     "anchor": <the main chain's anchor-in-main proof of the anchor block
                holding that checkpoint (MainChain.prove_anchor)>}

:func:`~flchain_flwr.ledger.provenance_build.build_bundle` writes one;
:func:`verify_bundle` checks it offline, holding only keys: the main
chain's checkpoint key (which vouches for the anchor block and for the
witness policy in the main chain's genesis), optionally witness cosigner keys
and verifier pool keys. Every byte of a bundle is either checked structure
(canonical JSON, exact fields) or covered by a hash or signature it checks,
so a bundle changed anywhere fails. Who can forge an accepted bundle: only
someone holding the main chain's key and a quorum of witness keys (to anchor
a false checkpoint), plus, on a PoV chain, a quorum of the committee's keys
drawn for that block (to approve its updates), or the publisher's key
outside PoV. The bundle holds the producing block's body (update digests,
node ids, weights, votes), its parent's header and the genesis block; never
an update nor any other block.
"""

from __future__ import annotations

from typing import Any, Final

from .anchorblock import AnchorError
from .anchorproof import check_anchor_proof
from .canonical import NotCanonical, is_hex, parse_canonical
from .checkpoint import CheckpointError, ledger_origin
from .mainverify import WitnessRule
from .merkle import InvalidProof, MalformedProof
from .notes import NoteError
from .provenance_block import (
    BlockCheckFailed,
    StoredBlock,
    check_training_block,
)
from .provenance_quorum import (
    SIGNATURES_FIELD,
    check_bundle_quorum,
    not_checked,
    training_fields,
)
from .provenance_report import (
    NO_MODEL_FILE,
    NOT_CHECKED,
    ProvenanceReport,
    main_witness_line,
    training_lines,
    witness_line,
)
from .provenance_trust import (
    TRUST_ROLES,
    BundleMalformed,
    ProvenanceError,
    Trust,
    parse_trust,
)
from .tlog_proof import TlogProofError, check_inclusion, parse_tlog_proof

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_BUNDLE_BYTES",
    "TRUST_ROLES",
    "BundleMalformed",
    "ProvenanceError",
    "ProvenanceReport",
    "Trust",
    "parse_trust",
    "verify_bundle",
]

BUNDLE_FORMAT: Final = "flchain-provenance/1"
MAX_BUNDLE_BYTES: Final = 64 << 20
_TOP: Final = frozenset({"format", "model_hash", "training", "anchor"})
_TRAINING: Final = frozenset(
    {"origin", "height", "block", "parent_header", "genesis", "proof", "genesis_proof"}
)
_BLOCK: Final = frozenset({"header", "body", "signature"})
_ANCHOR: Final = frozenset(
    {
        "type",
        "main_chain",
        "genesis",
        "genesis_inclusion",
        "block",
        "inclusion",
        "checkpoint",
    }
)


def _fields(value: Any, expected: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != expected:
        raise BundleMalformed(
            f"the {what} must have exactly the fields {sorted(expected)}"
        )
    return value


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BundleMalformed(f"the {what} must be a string")
    return value


def _stored_block(value: Any, what: str) -> StoredBlock | None:
    if value is None:
        return None
    fields = _fields(value, _BLOCK, what)
    parts = [_text(fields[n], f"{what} {n}") for n in ("header", "body", "signature")]
    header, body, signature = (str(p) for p in parts)
    return StoredBlock(header.encode("utf-8"), body.encode("utf-8"), signature)


def _inclusion(text: Any, what: str, note: str, index: int, leaf: str) -> None:
    proof_text = _text(text, what)
    try:
        proof = parse_tlog_proof(str(proof_text))
        if str(proof.note) != note:
            raise ProvenanceError(f"the {what}'s checkpoint is not the anchored one")
        if proof.index != index:
            raise ProvenanceError(f"the {what} is for leaf {proof.index}, not {index}")
        check_inclusion(proof, bytes.fromhex(leaf))
    except TlogProofError as exc:
        raise ProvenanceError(f"{what}: {exc}") from None


# pylint: disable=too-many-locals
def verify_bundle(
    data: bytes,
    trust: Trust,
    model_hash: str | None = None,
    witnessed: WitnessRule | None = None,
) -> ProvenanceReport:
    """Check a provenance bundle offline (see the module's docstring).

    Parameters
    ----------
    data : bytes
        The bundle file's bytes.
    trust : Trust
        The keys the buyer holds.
    model_hash : str, optional
        The SHA-256 (hex) of the model file (a model blob) the buyer holds:
        it must be the bundle's model hash.
    witnessed : WitnessRule, optional
        Demand a quorum of the policy's witnesses on the main chain's own
        checkpoint (recent, with ``max_age``): the anchoring main chain was
        then not forked or truncated below what the witnesses saw.

    Raises
    ------
    BundleMalformed
        If it is not a bundle at all.
    ProvenanceError
        If any check fails; the message says which.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleMalformed(
            f"{len(data)} bytes: a bundle has at most {MAX_BUNDLE_BYTES}"
        )
    try:
        bundle = _fields(parse_canonical(data, 2), _TOP, "bundle")
    except NotCanonical as exc:
        raise BundleMalformed(f"not a canonical provenance bundle: {exc}") from None
    if bundle["format"] != BUNDLE_FORMAT:
        raise BundleMalformed(f"the bundle's format is not {BUNDLE_FORMAT!r}")
    claimed = bundle["model_hash"]
    if not is_hex(claimed, 64):
        raise BundleMalformed("the bundle's model_hash is not a SHA-256 hex digest")
    checked = []
    if model_hash is not None:
        if model_hash != claimed:
            raise ProvenanceError(
                f"the model file hashes to {model_hash}; the bundle is about {claimed}"
            )
        checked.append(f"the model file hashes to {claimed}")
    parts = training_fields(_TRAINING, bundle["training"])
    training = _fields(bundle["training"], parts, "training part")
    anchor_proof = _fields(bundle["anchor"], _ANCHOR, "anchor part")
    try:
        anchored = check_anchor_proof(anchor_proof, trust.main)
    except MalformedProof as exc:
        raise BundleMalformed(f"anchor: {exc}") from None
    except (
        AnchorError,
        NoteError,
        InvalidProof,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        raise ProvenanceError(f"anchor: {exc}") from None
    if anchor_proof["main_chain"] != anchored.block.fields["chain_id"]:
        raise ProvenanceError("anchor: the proof names another main chain")
    checked.append(
        f"main chain {trust.main.name}: its checkpoint of {anchored.main_size} "
        f"blocks is signed by the trusted key {trust.main}"
    )
    checked.append(
        f"main-chain block {anchored.block.height} (a leaf of that checkpoint) "
        f"anchors {anchored.check.checkpoint.origin} at size "
        f"{anchored.check.checkpoint.size}, root "
        f"{anchored.check.checkpoint.root.hex()}"
    )
    checked.append(witness_line(anchored, trust))
    checked.append(main_witness_line(anchored.main_witnessing, witnessed))
    origin = anchored.check.checkpoint.origin
    if training["origin"] != origin:
        raise ProvenanceError(
            f"the bundle names run {str(training['origin'])[:80]!r}; the anchor "
            f"is of {origin!r}"
        )
    note = str(anchored.block.fields["checkpoint"])
    block = _stored_block(training["block"], "training block")
    genesis = _stored_block(training["genesis"], "genesis block")
    parent = _text(training["parent_header"], "parent header", optional=True)
    height = training["height"]
    if block is None:
        raise BundleMalformed("the bundle holds no training block")
    if isinstance(height, bool) or not isinstance(height, int):
        raise BundleMalformed("the training height must be an integer")
    _inclusion(training["proof"], "block proof", note, height, block.hash)
    if height > 0:
        if genesis is None:
            raise ProvenanceError("the bundle lacks the run's genesis block")
        _inclusion(training["genesis_proof"], "genesis proof", note, 0, genesis.hash)
    elif any(
        training[n] is not None for n in ("genesis_proof", "genesis", "parent_header")
    ):
        raise ProvenanceError(
            "a bundle of a genesis model carries no parent and no second genesis"
        )
    try:
        found = check_training_block(
            block,
            None if parent is None else parent.encode("utf-8"),
            genesis,
            claimed,
            trust.pool,
        )
        headers = check_bundle_quorum(
            block, genesis, found, training.get(SIGNATURES_FIELD), trust.pool
        )
    except BlockCheckFailed as exc:
        raise ProvenanceError(f"training block: {exc}") from None
    try:
        block_origin = ledger_origin(found.chain_id)
    except CheckpointError as exc:
        raise ProvenanceError(f"training block: {exc}") from None
    if found.height != height or block_origin != origin:
        raise ProvenanceError(
            f"the block says it is block {found.height} of chain {found.chain_id!r}; "
            f"the proofs put it at leaf {height} of {origin!r}"
        )
    log_key = anchored.check.log_key
    if log_key.public_key.hex() != found.publisher:
        raise ProvenanceError(
            f"the anchored checkpoint is signed by {log_key}, the run's genesis by "
            f"{found.publisher}: not the same publisher"
        )
    if trust.publisher is not None and trust.publisher != found.publisher:
        raise ProvenanceError(
            f"the run's publisher is {found.publisher}, not the trusted "
            f"{trust.publisher}"
        )
    checked.extend(training_lines(found, origin, log_key, trust))
    if headers is not None:
        checked.append(headers.line(found.height))
    missing = (NO_MODEL_FILE,) if model_hash is None else ()
    return ProvenanceReport(
        origin,
        found,
        claimed,
        tuple(checked),
        (*missing, *not_checked(NOT_CHECKED, headers)),
    )

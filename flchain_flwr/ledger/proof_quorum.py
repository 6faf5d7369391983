"""An update proof's header quorum: what ``check-proof`` needs to check the
committee's signatures over the block, and checks.

On a chain whose genesis declares quorum-signed headers
(:data:`~.quorum.QUORUM_FORMAT`), :meth:`~.chain.Ledger.prove_update` adds
to an update proof (block height > 0)::

    "quorum": {"body": <the block's body text>,
               "header_signatures": <its stored header signatures>,
               "genesis": {"header": <text>, "body": <text>},
               "genesis_block": <inclusion proof of block 0 in the same log>}

:func:`check_proof_quorum` checks that the body is the one the header names,
that the genesis is leaf 0 of the log the proof's checkpoint describes (so the
trusted checkpoint vouches for it and its verifier pool), that the block's
committee is the draw from that pool for the block's parent and view, then the
view-change certificates and the header signatures as ``verify`` does (more
than 2/3 of the committee, each once, over this chain, height, view and block
hash). Who can then forge an accepted proof: someone holding the trusted
checkpoint key and the keys of more than 2/3 of the block's committee. A
pool shrunk by slashing draws another committee than the genesis pool: such
a block is refused here (``verify`` the ledger instead), not guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .canonical import BODY_TAG, HEADER_TAG, NotCanonical, parse_canonical, sha256_hex
from .consensus import PoVRules, block_view, select_committee
from .merkle import InvalidProof, MalformedProof, inclusion_proof, verify_proof
from .quorum import check_signed_block, headers_declared

if TYPE_CHECKING:
    from .blocks import Block
    from .chain import Ledger

QUORUM_FIELD: Final = "quorum"
_FIELDS: Final = frozenset({"body", "header_signatures", "genesis", "genesis_block"})
_FORMAT: Final = "flchain-block/2"
"""Quorum-signed chains are format 2 (RFC 8785)."""


def quorum_proof_part(
    ledger: Ledger, block: Block, hashes: list[str]
) -> dict[str, Any]:
    """The entry :meth:`~.chain.Ledger.prove_update` adds for ``block`` in the
    log of ``hashes`` (``{}`` if its chain declares no quorum headers)."""
    genesis = ledger.block(0)
    pov = genesis.body.get("pov")
    if block.height == 0 or not isinstance(pov, Mapping) or not headers_declared(pov):
        return {}
    part = {
        "body": block.body_bytes.decode("utf-8"),
        "header_signatures": ledger.header_signatures(block.height),
        "genesis": {
            "header": genesis.header_bytes.decode("utf-8"),
            "body": genesis.body_bytes.decode("utf-8"),
        },
        "genesis_block": inclusion_proof(hashes, 0),
    }
    return {QUORUM_FIELD: part}


def _canonical(text: Any, what: str) -> tuple[bytes, Any]:
    if not isinstance(text, str):
        raise MalformedProof(f"the quorum part's {what} must be a string")
    raw = text.encode("utf-8")
    try:
        return raw, parse_canonical(raw, 2)
    except (NotCanonical, RecursionError) as exc:
        raise MalformedProof(
            f"the quorum part's {what} is not canonical: {exc}"
        ) from None


def _genesis_pov(part: Mapping[str, Any], chain_id: str, log: Mapping[str, Any]) -> Any:
    """The genesis ``pov`` entry, once the genesis is shown to be leaf 0 of
    the block's log."""
    genesis = part["genesis"]
    if not isinstance(genesis, dict) or set(genesis) != {"header", "body"}:
        raise MalformedProof("the quorum part's genesis must have header and body")
    g_raw, g_header = _canonical(genesis["header"], "genesis header")
    g_body_raw, g_body = _canonical(genesis["body"], "genesis body")
    proof = part["genesis_block"]
    if not isinstance(proof, dict):
        raise MalformedProof("the quorum part's genesis_block must be an object")
    verify_proof(proof, "inclusion")
    if (proof.get("leaf"), proof.get("index")) != (sha256_hex(HEADER_TAG, g_raw), 0):
        raise InvalidProof("the genesis proof is not of this genesis at leaf 0")
    if (proof.get("size"), proof.get("root")) != (log.get("size"), log.get("root")):
        raise InvalidProof("the genesis proof is of another log than the block's")
    if not isinstance(g_header, dict) or not isinstance(g_body, dict):
        raise InvalidProof("the genesis header and body must be JSON objects")
    if g_header.get("body_hash") != sha256_hex(BODY_TAG, g_body_raw):
        raise InvalidProof("the genesis body is not the one its header names")
    if g_header.get("chain_id") != chain_id:
        raise InvalidProof("the genesis is of another chain")
    pov = g_body.get("pov")
    try:
        if not isinstance(pov, Mapping) or not headers_declared(pov):
            raise InvalidProof(
                "the proof carries header signatures; its genesis declares none"
            )
    except ValueError as exc:
        raise InvalidProof(f"the genesis: {exc}") from None
    return pov


def check_proof_quorum(
    proof: Mapping[str, Any], header: Mapping[str, Any], block_hash: str
) -> str | None:
    """Check an update proof's ``quorum`` part (module doc) against its
    already-checked ``header`` and block log; what it established, or ``None``
    when the proof carries none. Raises ``InvalidProof`` (``MalformedProof``)."""
    if QUORUM_FIELD not in proof:
        return None
    part = proof[QUORUM_FIELD]
    if not isinstance(part, dict) or set(part) != _FIELDS:
        raise MalformedProof(f"the quorum part must have exactly {sorted(_FIELDS)}")
    if header.get("format") != _FORMAT:
        raise InvalidProof(f"a quorum-signed chain's blocks are {_FORMAT}")
    chain_id, height = str(header["chain_id"]), header["height"]
    pov = _genesis_pov(part, chain_id, proof["block"])
    body_raw, body = _canonical(part["body"], "body")
    if header.get("body_hash") != sha256_hex(BODY_TAG, body_raw):
        raise InvalidProof("the quorum part's body is not the one the header names")
    view = block_view(body) if isinstance(body, dict) else None
    if view is None or not isinstance(body, dict):
        raise InvalidProof("the block's body has no valid view")
    try:
        rules = PoVRules.from_json(pov)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidProof(f"the genesis declares unusable PoV rules: {exc}") from None
    prev_hash = str(header["prev_hash"])
    committee = select_committee(rules.pool, prev_hash, rules.committee_size, view)
    if body.get("committee") != committee or header.get("leader") != committee[0]:
        raise InvalidProof(
            f"block {height}'s committee or leader is not the draw from the genesis "
            "pool for its parent and view (a pool shrunk by slashing: verify the "
            "ledger instead)"
        )
    signatures = part["header_signatures"]
    problem, _ = check_signed_block(
        committee, chain_id, height, prev_hash, block_hash, body, signatures
    )
    if problem is not None:
        raise InvalidProof(f"block {height}: {problem}")
    replayed = sum(1 for s in signatures if s["replayed"] is True)
    return (
        f"its header is signed by {len(signatures)} of its {len(committee)} "
        "committee members (the draw from the genesis pool, leaf 0 of the same "
        f"log), {replayed} of them saying they replayed its model"
    )

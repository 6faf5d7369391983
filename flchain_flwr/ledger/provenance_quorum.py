"""A provenance bundle's header quorum: the committee's signatures over the
block that produced the model.

On a chain whose genesis declares quorum-signed headers
(:data:`~.quorum.QUORUM_FORMAT`), a bundle's ``training`` part carries
``header_signatures``: the block's stored signatures
(:meth:`~.ledgerreader.LedgerReader.header_signatures`). They sign the block's
hash, so no hash covers them; :func:`check_bundle_quorum` checks each one
instead, as ``flchain ledger verify`` does: the view-change certificates the
body carries, then more than 2/3 of the committee (already the draw from the
genesis pool) signing the statement over this chain, height, view and block
hash, each member at most once, counting only the pool keys the buyer trusts
when it gives any. Who can then forge the block's model hash: someone holding
the keys of more than 2/3 of that committee (plus the publisher's, the main
chain's and a witness quorum to anchor it), not its leader alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .canonical import NotCanonical, parse_canonical
from .chain import Ledger
from .consensus import quorum
from .provenance_block import BlockCheckFailed, BlockFindings, StoredBlock
from .quorum import check_signed_block, headers_declared

SIGNATURES_FIELD: Final = "header_signatures"
"""The ``training`` field holding the block's header signatures."""
_AGGREGATION: Final = "that the model is the aggregation"


@dataclass(frozen=True)
class HeaderFindings:
    """What :func:`check_bundle_quorum` established."""

    signers: int
    """Valid signatures by distinct committee members (trusted ones, if given)."""
    needed: int
    committee: int
    replayed: int
    """How many of the counted signers say they replayed the model."""

    def line(self, height: int) -> str:
        """The report's "checked" line."""
        return (
            f"block {height}'s header, and so its model hash, is signed by "
            f"{self.signers} of its {self.committee} committee members (more than "
            f"2/3, {self.needed}, needed), each over this chain, height, view and "
            f"block hash; {self.replayed} of them say they recomputed the model "
            "by replaying the parent and the included updates"
        )

    def model_caveat(self) -> str:
        """What stays unchecked about the model (replaces the aggregation item)."""
        who = (
            f"{self.replayed} committee members say they did (a signed word, "
            "not recomputed here)"
            if self.replayed
            else "no signer says it replayed: the quorum attests the header, "
            "not the aggregation"
        )
        return (
            "that the model is the aggregation of the block's included updates "
            f"over its parent is not recomputed by the bundle: {who}; "
            "`flchain ledger verify --replay` by someone with access to the run "
            "checks it"
        )


def training_fields(base: frozenset[str], training: Any) -> frozenset[str]:
    """The fields a ``training`` part must have: ``base``, plus
    :data:`SIGNATURES_FIELD` when it carries one."""
    if isinstance(training, dict) and SIGNATURES_FIELD in training:
        return base | {SIGNATURES_FIELD}
    return base


def _genesis_pov(ledger_genesis_body: Mapping[str, Any]) -> bool:
    pov = ledger_genesis_body.get("pov")
    return isinstance(pov, Mapping) and headers_declared(pov)


def bundle_signatures(ledger: Ledger, height: int) -> dict[str, Any]:
    """The ``training`` entry to add for block ``height``: its header
    signatures if the chain declares quorum headers (``{}`` otherwise)."""
    if height == 0 or not _genesis_pov(ledger.block(0).body):
        return {}
    return {SIGNATURES_FIELD: ledger.header_signatures(height)}


def check_bundle_quorum(
    block: StoredBlock,
    genesis: StoredBlock | None,
    found: BlockFindings,
    signatures: Any,
    pool_keys: Collection[str],
) -> HeaderFindings | None:
    """Check a checked training block's header quorum (see the module doc).

    ``None`` when its chain declares no quorum headers (then ``signatures``
    must be absent). ``found`` is :func:`~.provenance_block.check_training_block`'s
    result, so the block, its genesis and its committee are already checked.

    Raises
    ------
    BlockCheckFailed
        Saying which signature or count fails.
    """
    try:
        g_body = parse_canonical(genesis.body, 2) if genesis is not None else {}
    except NotCanonical:  # a format-1 chain: it predates quorum headers
        g_body = {}
    try:
        declared = isinstance(g_body, dict) and _genesis_pov(g_body)
    except ValueError as exc:
        raise BlockCheckFailed(f"the genesis block: {exc}") from None
    if not declared or found.committee is None:
        if signatures is not None:
            raise BlockCheckFailed(
                "the bundle carries header signatures its chain does not declare"
            )
        return None
    if signatures is None:
        raise BlockCheckFailed(
            "the chain declares quorum-signed headers; the bundle carries none "
            "for the block"
        )
    header = parse_canonical(block.header, 2)
    body = parse_canonical(block.body, 2)
    assert isinstance(header, dict) and isinstance(body, dict)  # checked already
    committee = list(found.committee)
    problem, _ = check_signed_block(
        committee,
        found.chain_id,
        found.height,
        str(header["prev_hash"]),
        found.block_hash,
        body,
        signatures,
    )
    if problem is not None:
        raise BlockCheckFailed(problem)
    counted = [s for s in signatures if not pool_keys or s["verifier"] in pool_keys]
    needed = quorum(len(committee))
    if len(counted) < needed:
        raise BlockCheckFailed(
            f"{len(counted)} of the header's signers are pool keys you trust; "
            f"more than 2/3 ({needed}) of the {len(committee)} must be"
        )
    replayed = sum(1 for s in counted if s["replayed"] is True)
    return HeaderFindings(len(counted), needed, len(committee), replayed)


def not_checked(
    items: tuple[str, ...], headers: HeaderFindings | None
) -> tuple[str, ...]:
    """The report's "not checked" list, its aggregation item saying what the
    header quorum attests (unchanged without one)."""
    if headers is None:
        return items
    return tuple(
        headers.model_caveat() if item.startswith(_AGGREGATION) else item
        for item in items
    )

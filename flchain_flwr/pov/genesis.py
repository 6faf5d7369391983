"""A PoV chain's genesis: what a committee records there, and resuming from it.

The genesis block of a PoV chain records the verifier pool and its deposit
rules, what votes are judged by (the judging rule and the ``server_lr`` of
the shares they are judged at), the header format (quorum-signed) and who
held the verifier keys (:func:`genesis_body`). A run resumes a chain only if
it was written with exactly these settings: :func:`recorded_pov` reads them,
:func:`in_chain_order` takes the chain's order of the same verifiers found
in another order, and :func:`check_resumable` refuses a chain written
otherwise (or in an older vote or header format) with a clear ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..ledger import Ledger, PoVRules, VoteRules
from ..ledger.blocks import COMMITTEE_KIND_FIELD
from ..ledger.quorum import QUORUM_FORMAT


def genesis_body(rules: PoVRules, votes: VoteRules, kind: str) -> dict[str, Any]:
    """Body fields of a PoV chain's genesis block (``kind``: who held the
    verifier keys, see :attr:`~flchain_flwr.pov.Committee.kind`)."""
    return {
        "pov": {
            **rules.to_json(),
            "votes": votes.to_json(),
            "headers": QUORUM_FORMAT,
        },
        COMMITTEE_KIND_FIELD: kind,
    }


def recorded_pov(ledger: Ledger) -> dict[str, Any]:
    """The PoV settings ``ledger``'s genesis records; ``ValueError`` if it is
    not a PoV chain."""
    genesis = ledger.block(0)
    recorded = genesis.body.get("pov")
    if not isinstance(recorded, dict):
        raise ValueError(f"ledger {ledger.path} is not a PoV chain")
    return recorded


def in_chain_order(rules: PoVRules, recorded: Mapping[str, Any]) -> PoVRules:
    """``rules`` with the chain's pool order if the chain records the same
    verifiers (found in another order); else ``rules`` as they are."""
    if isinstance(recorded.get("pool"), list) and set(recorded["pool"]) == set(
        rules.pool
    ):  # the same verifiers, found in another order: the chain's order
        return replace(rules, pool=tuple(recorded["pool"]))
    return rules


def check_resumable(
    ledger: Ledger, recorded: Mapping[str, Any], expected: Mapping[str, Any]
) -> None:
    """``ValueError`` unless ``ledger``'s recorded PoV settings are the
    ``expected`` ones, in the current vote and header formats."""
    if "votes" not in recorded:
        raise ValueError(
            f"ledger {ledger.path} holds format-1 votes (they do not bind "
            "the parent, weight or rule); verify it, but start a new chain"
        )
    if "headers" not in recorded:
        raise ValueError(
            f"ledger {ledger.path} predates quorum-signed headers (its blocks "
            "are signed by their leader alone); verify it, but start a new chain"
        )
    if recorded != expected:
        raise ValueError(
            f"ledger {ledger.path} was not created with this verifier pool, "
            "these deposit rules and this judging rule"
        )

"""Where the next block stands: the vote context its votes sign.

A format-2 vote signs its chain, height, view, previous block hash, parent
model hash and judging rule (:class:`~flchain_flwr.ledger.VoteContext`), so
it counts for one block position only. With a ledger these come from its
head, and the global model must be the head's; without one the committee's
own chain id and the caller's height stand in, and the current model's hash
is both the rotation seed (``prev_hash``) and the parent.
"""

from __future__ import annotations

from ..arrays import NDArrays
from ..ledger import Ledger, VoteContext, model_hash


def vote_position(
    ledger: Ledger | None,
    model: NDArrays,
    height: int,
    view: int,
    *,
    chain_id: str,
    rule_digest: str,
) -> VoteContext:
    """What the votes on the block being decided sign (see the module
    docstring); ``ValueError`` if ``ledger`` has no genesis block or its
    head's model is not ``model``."""
    parent = model_hash(model)
    if ledger is not None:
        head = ledger.head()
        if head is None:
            raise ValueError(f"ledger {ledger.path} has no genesis block")
        if head.header["model_hash"] != parent:
            raise ValueError(
                f"the global model is not the one at the head of {ledger.path}"
            )
        return VoteContext(
            ledger.chain_id,
            head.height + 1,
            head.hash,
            parent,
            rule_digest,
            view,
        )
    return VoteContext(chain_id, height, parent, parent, rule_digest, view)

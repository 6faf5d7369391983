"""A restarted server starts a height from the view changes it recorded.

Members keep only their last statement (:func:`~.views.take_statement`):
after view changes at (h, 0) and (h, 1) none of them signs (h, 0)'s again,
so the certificate of view 0 that a block at view 2 needs exists only where
the server put it. The server records each certificate it completes
(:func:`keep_view_change`, into :mod:`flchain_flwr.ledger.viewchanges`), and
a resumed height starts after the views they cover
(:func:`recorded_view_changes`), re-using them as its block's
``view_changes``. They are checked as ``verify`` checks a block's
(:func:`~flchain_flwr.ledger.quorum.check_view_changes`: more than 2/3 of
the height's committee signed each); a record that fails, or is not for the
head's next height, is ignored with the reason logged. The certificates are
the members' own signatures: a record can at worst be ignored, and members
still decide what they sign.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

from flwr.supercore import log

from ..ledger import Ledger, PoVState, VoteContext
from ..ledger.quorum import check_view_changes
from ..ledger.viewchanges import (
    ViewChangesError,
    read_view_changes,
    record_view_change,
    view_changes_path,
)


def recorded_view_changes(
    ledger: Ledger, state: PoVState, context: VoteContext
) -> list[dict[str, Any]]:
    """The certificates recorded for ``context``'s height (views ``0 ..
    k-1``, each proven), or none (no record, or an unusable one: logged)."""
    assert context.prev_hash is not None
    try:
        certificates = read_view_changes(ledger, context.height, context.prev_hash)
    except ViewChangesError as exc:
        log(WARNING, "PoV: ignoring the view-change record: %s", exc)
        return []
    if not certificates:
        return []
    problem = check_view_changes(
        context.chain_id,
        context.height,
        context.prev_hash,
        len(certificates),
        state.committee(context.prev_hash, 0),
        certificates,
    )
    if problem is not None:
        log(WARNING, "PoV: ignoring the view-change record: %s", problem)
        return []
    log(
        INFO,
        "PoV: views 0..%d of height %d were given up before (recorded "
        "certificates); the height goes on at view %d",
        len(certificates) - 1,
        context.height,
        len(certificates),
    )
    return list(certificates)


def keep_view_change(
    ledger: Ledger, context: VoteContext, certificate: dict[str, Any]
) -> None:
    """Record ``certificate`` (``context``'s view failed) for a restart;
    logged if it cannot follow the views recorded before it."""
    assert context.prev_hash is not None
    if not record_view_change(ledger, context.height, context.prev_hash, certificate):
        log(
            WARNING,
            "PoV: the view change of height %d view %d is not recorded in %s: "
            "the certificates of the views before it are not there",
            context.height,
            context.view,
            view_changes_path(ledger),
        )

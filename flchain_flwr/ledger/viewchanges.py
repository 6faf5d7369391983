"""The view-change certificates completed at the next height, kept until its
block is written.

A member signs only forward in view and keeps only its last statement
(:func:`flchain_flwr.pov.views.take_statement`): once it has signed a view
change at (height, 1) it signs none at (height, 0) again. If the server dies
after its committee gave up views 0 and 1 of a height and before that
height's block, the view-0 certificate the block needs can no longer be
signed, and it existed only in the dead server's memory. So the server
records each certificate it completes (``<ledger>.viewchanges``: the chain,
height and previous hash they are for, and the certificates of views ``0 ..
k-1`` in order), sealed with the ledger key (:mod:`.sealedrecord`); a
restarted server starts that height at view ``k`` with them
(:mod:`flchain_flwr.pov.viewrecord`). Every commit removes the record
(:mod:`.appending`).

Reading it here checks the seal, its fields and that it is for the head's
next height; that the certificates prove what they claim is
:func:`~.quorum.check_view_changes`' to say (it needs the committee).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .sealedrecord import read_sealed, write_sealed

if TYPE_CHECKING:
    from .chain import Ledger

VIEW_CHANGES_FORMAT: Final = "flchain-view-changes/1"
SEAL_TAG: Final = b"flchain-view-changes-seal/1\n"
"""Domain separation of the ledger key's seal over a record."""
_FIELDS: Final = frozenset(
    {"format", "chain_id", "height", "prev_hash", "view_changes", "sealed"}
)


class ViewChangesError(ValueError):
    """A view-change record that cannot be used (it is then ignored)."""


def view_changes_path(ledger: Ledger) -> Path:
    """Where ``ledger``'s view-change certificates are recorded."""
    return ledger.path.with_name(ledger.path.name + ".viewchanges")


def record_view_change(
    ledger: Ledger, height: int, prev_hash: str, certificate: dict[str, Any]
) -> bool:
    """Add ``certificate`` (of view ``certificate["view"]`` at ``height``
    after ``prev_hash``) to the record: it follows the certificates recorded
    there for the views before it, or starts the record at view 0. Whether
    it was recorded (not when the record lacks an earlier view, or is
    unusable)."""
    view = certificate["view"]
    try:
        earlier = read_view_changes(ledger, height, prev_hash)
    except ViewChangesError:
        earlier = []
    if len(earlier) < view:
        return False
    record = {
        "format": VIEW_CHANGES_FORMAT,
        "chain_id": ledger.chain_id,
        "height": height,
        "prev_hash": prev_hash,
        "view_changes": [*earlier[:view], dict(certificate)],
    }
    write_sealed(ledger, view_changes_path(ledger), SEAL_TAG, record)
    return True


def clear_view_changes(ledger: Ledger) -> None:
    """Remove ``ledger``'s view-change record (a block was written)."""
    view_changes_path(ledger).unlink(missing_ok=True)


def read_view_changes(ledger: Ledger, height: int, prev_hash: str) -> list[Any]:
    """The certificates recorded for ``height`` after ``prev_hash`` (empty:
    no record); :class:`ViewChangesError` if the record is malformed, not
    sealed by the ledger's key, or for another chain or position. They are
    not checked against the committee here."""
    path = view_changes_path(ledger)
    record = read_sealed(ledger, path, SEAL_TAG, _FIELDS, ViewChangesError)
    if record is None:
        return []
    if record["format"] != VIEW_CHANGES_FORMAT:
        raise ViewChangesError(f"{path.name} is not {VIEW_CHANGES_FORMAT}")
    if record["chain_id"] != ledger.chain_id:
        raise ViewChangesError(f"{path.name} belongs to another chain")
    if (record["height"], record["prev_hash"]) != (height, prev_hash):
        raise ViewChangesError(
            f"{path.name} is for height {str(record['height'])[:20]} after "
            f"{str(record['prev_hash'])[:12]}…, not height {height} after "
            f"{prev_hash[:12]}…"
        )
    certificates = record["view_changes"]
    if not isinstance(certificates, list):
        raise ViewChangesError(f"{path.name}: view_changes must be a list")
    return certificates

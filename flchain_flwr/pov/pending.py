"""Proposing a locked block again after a restart.

Members that signed the header of a block that was never written sign no
other header and no view change at that (height, view) (:mod:`.views`): two
such signatures would be equivocation. If more than ``n - quorum(n)`` of
them did, no other block can ever reach a quorum there. So the server
records each block before it asks for header signatures
(:mod:`flchain_flwr.ledger.pending`), and a resumed run first proposes that
very block (same bytes, same hash, same leader signature) to its committee
again (:func:`repropose_pending`). A member re-signs the same block hash
after the same checks as the first time (:func:`~.headers.cosign_header`);
with a quorum the block is written and the run continues from it as from
any head. Without one (members not reachable yet, or that lost their run
state and judge it afresh) the run falls back to a new block at that height,
as before this existed; the record is not replaced by that block, so if the
fallback fails too a later restart proposes the locked block again.

The record must carry the ledger key's seal (:mod:`flchain_flwr.ledger.pending`),
so writing the ledger's folder alone cannot make the server propose a block.
One without it, malformed, whose hash is not its header's, that does not
extend the head, that names missing blobs, or whose committee is not the draw
for its previous hash and view is ignored, with the reason logged. The seal
says only that this server recorded it: the members' own checks, and
``verify``, are what make the block valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.signing import VerifyKey

from ..ledger import Block, Ledger, LedgerError
from ..ledger.pending import (
    PendingError,
    pending_path,
    pending_problem,
    read_pending,
)
from .headers import HeaderSigner

if TYPE_CHECKING:
    from .committee import Committee


@dataclass(frozen=True)
class SignedLeader:
    """The leader of a recorded block: its signature is already in the block,
    so it is not asked again (and cannot sign anything else here)."""

    public_key: str

    @property
    def verify_key(self) -> VerifyKey:
        """The leader's public key (the header's ``leader``)."""
        return VerifyKey(self.public_key.encode(), encoder=HexEncoder)

    def sign(self, smessage: bytes) -> Any:
        """Refuse: a re-proposed block keeps the signature it was made with."""
        raise RuntimeError("a re-proposed block is not signed again")


def repropose_pending(ledger: Ledger, committee: Committee) -> Block | None:
    """Write ``ledger``'s pending block if it extends the head and a quorum
    of its committee signs it again; the block written, or ``None`` (no
    usable record, or too few signatures: logged; the run then falls back to
    a new block at that height, and the record stays until a block is
    written there, see :func:`~flchain_flwr.ledger.pending.record_pending`)."""
    head = ledger.head()
    if head is None:
        return None
    try:
        pending = read_pending(ledger)
        if pending is None:
            return None
        problem = pending_problem(
            ledger, head, pending
        ) or committee.state.committee_problem(
            head.hash, pending.view, pending.block.header, pending.block.body
        )
    except PendingError as exc:
        problem = str(exc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        problem = f"it is malformed ({exc!r})"
    if problem is not None:
        log(WARNING, "PoV: ignoring the pending-block record: %s", problem)
        return None
    assert pending is not None
    block = pending.block
    log(
        INFO,
        "PoV: proposing the locked block %s… (height %d, view %d) again",
        block.hash[:16],
        block.height,
        pending.view,
    )
    signer = HeaderSigner(
        committee,
        SignedLeader(str(block.header["leader"])),
        list(block.body["committee"]),
        pending.view,
    )
    try:
        written = ledger.append_block(block, signer)
    except (
        RuntimeError,
        LedgerError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
    ) as exc:
        log(
            WARNING,
            "PoV: the locked block %s… (height %d, view %d), proposed again after "
            "the restart, was not written (%s); falling back to a new block at "
            "that height. The record is kept (%s) until a block is written there, "
            "so a later restart proposes it again",
            block.hash[:16],
            block.height,
            pending.view,
            exc,
            pending_path(ledger),
        )
        return None
    log(INFO, "PoV: wrote the locked block %s… again", written.hash[:16])
    return written

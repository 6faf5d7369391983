"""Deciding a synchronous PoV round again when its block's leader signs no header.

A block whose leader confirmed its lead but then signs no header has its view
given up (:class:`~.headers.ViewGivenUp`), and
:class:`~flchain_flwr.pov.PoVStrategy` decides the round again at the next
view as FedBuff decides such a block again
(:meth:`~.committee.Committee.decides_again`: at most ``committee_size``
times per height, then the run stops, :func:`stop_error`): every candidate
of the round is voted on again, as received (the wrapped strategy is handed
copies it may change), and the wrapped strategy aggregates the newly
approved replies from its state before the round (:class:`Before`: a deep
copy of its attributes, taken before each round's decision; a strategy that
cannot be copied stops the run there instead). The failed decision stays in
the strategy's ``decisions`` and counts for the committee watch.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from flwr.serverapp.strategy import Strategy

from ..strategies.result import RejectedUpdate
from ..strategies.snapshot import Snapshot
from .committee import Committee
from .headers import ViewGivenUp
from .syncblock import NextBlock


@dataclass(frozen=True)
class Before:
    """A :class:`~flchain_flwr.pov.PoVStrategy` before a round's decision:
    what the decision and its block change (not the claim history: the
    round's claims were observed and weighed before)."""

    next_block: NextBlock
    rejected: int
    """How many rejections :attr:`PoVStrategy.rejected` held."""
    strategy: Snapshot

    @classmethod
    def of(cls, next_block: NextBlock, rejected: Sized, strategy: Strategy) -> Before:
        """The state as it is now."""
        return cls(next_block.copy(), len(rejected), Snapshot.of(strategy))

    def restore(self, rejected: list[RejectedUpdate], strategy: Strategy) -> NextBlock:
        """Undo a decision whose block was not written: its rejections (the
        round is voted on again) and the wrapped strategy's aggregation; the
        next block as it was, its votes and view (the next decision reads
        the view changes recorded since)."""
        del rejected[self.rejected :]
        self.strategy.restore(strategy)
        return self.next_block.copy()


def stop_error(
    exc: ViewGivenUp, failures: int, before: Before, committee: Committee
) -> RuntimeError | None:
    """What stops the run after ``failures`` views of the round were given
    up, the last ``exc`` (``None``: decide the round again)."""
    stop = before.strategy.problem or (
        None
        if committee.decides_again(exc, failures)
        else f"{failures} views of the height were given up"
    )
    if stop is None:
        return None
    return RuntimeError(
        f"block {exc.height}: the leader of view {exc.view} did not sign the "
        f"header and the view was given up; the run stops ({stop}), its ledger "
        f"valid up to block {exc.height - 1}"
    )

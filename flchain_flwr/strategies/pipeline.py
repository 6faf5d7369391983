"""The block pipeline: what a triggered buffer flows through to become a version.

::

    buffered updates ──> filter stages ──> server step ──> commit stages
                         (PoV committee)    (pure maths)    (deposits, ledger)

Updates are parsed and validated when their reply is taken (:mod:`.updates`);
a triggered buffer becomes a :class:`~.block.Block`. Each :class:`BlockStage`
may reject updates in :meth:`~BlockStage.filter` and records the new version in
:meth:`~BlockStage.commit`. The strategy never asks whether a committee or a
ledger is there: they are stages, and without them the list is empty. A pass
through the stages holds its rejections until it ends; a pass that is done
again (a PoV leader that signed no header) leaves none behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from flwr.app import RecordDict

from ..arrays import NDArrays
from ..ledger.canonical import sender_update_digest
from ..protocol import UPDATE_KIND_DELTA
from .block import Block, RejectFn, Rejection
from .serverstep import OVERFLOW_REASON, ServerStep


class BlockStage:
    """One stage of the pipeline; every hook is optional."""

    needs_digest = False
    """Whether updates need a digest (votes and ledger entries name them)."""
    needs_payload = False
    """Whether updates keep their reply as received (a ledger stores it)."""

    def filter(self, block: Block, reject: RejectFn) -> None:
        """Remove updates from ``block.updates``, reporting each via ``reject``
        (held in ``block.rejected`` until the attempt ends)."""

    def commit(self, block: Block) -> None:
        """Record ``block`` once its new model is accepted (its own
        rejections are ``block.rejected``)."""

    def rejected(self, rejection: Rejection) -> None:
        """See a rejection that no committed block holds, from any cause (the
        ledger records it in its next block)."""

    def redo(self, error: Exception, failures: int) -> bool:
        """Whether ``error``, raised by a commit stage, is one that deciding
        the block again may get past (this stage readies itself for it);
        ``failures``: how many times the block has failed so far."""
        del error, failures
        return False

    def close(self) -> None:
        """Release what the stage opened."""


class Pipeline:
    """Filter stages, the server step, commit stages, in that order."""

    def __init__(self, stages: Sequence[BlockStage], server_step: ServerStep):
        self.stages = list(stages)
        self.server_step = server_step
        self.needs_digest = any(s.needs_digest for s in self.stages)
        self.needs_payload = any(s.needs_payload for s in self.stages)

    def digest(self, node_id: int, content: RecordDict) -> str:
        """The update's digest, bound to its sender ("" when nobody needs it).

        Two nodes sending byte-identical replies make two distinct candidates;
        the same node replaying its reply makes a duplicate.
        """
        if not self.needs_digest:
            return ""
        return sender_update_digest(node_id, content)

    def payload(self, content: RecordDict) -> RecordDict | None:
        """The reply to keep with its update, as received (``None`` when no
        stage stores it); :func:`.parse_update` has bounded what it holds."""
        return content if self.needs_payload else None

    def base(self, kind: str, reference: NDArrays) -> NDArrays | None:
        """A full-weights reply's base to keep with it (``None`` for a delta,
        or when no stage stores payloads)."""
        return reference if self.needs_payload and kind != UPDATE_KIND_DELTA else None

    def reject(self, rejection: Rejection, *, in_block: bool = False) -> None:
        """Tell the update memory about a rejection, and every stage unless
        ``in_block``: the block just committed holds it (``block.rejected``)."""
        if self.server_step.memory is not None:
            self.server_step.memory.forget(rejection.node_id)
        if not in_block:
            for stage in self.stages:
                stage.rejected(rejection)

    def run(
        self, block: Block, record: RejectFn, now: Callable[[], float]
    ) -> str | None:
        """Take ``block`` through every stage; return why it made no version.

        An attempt's rejections are held in ``block.rejected``, each with
        its time (``now``), and reported, to ``record`` (the loop's account
        of them) and to :meth:`reject`, once the attempt ends without a
        redo: a failed attempt leaves no trace but the view it gave up. When
        a commit stage fails in a way a stage says deciding again may get
        past (:meth:`BlockStage.redo`: a leader that did not sign the header,
        whose view was given up), the block goes through every stage again
        with the updates it started with (every candidate is voted on again,
        at the next view), from the server state before the failed attempt.
        """
        updates, extra, failures = list(block.updates), block.extra, 0
        while True:
            block.rejected = []
            try:
                why = self._attempt(block, now)
            except Exception as exc:
                failures += 1
                if any(stage.redo(exc, failures) for stage in self.stages):
                    block.updates, block.extra = list(updates), extra
                    continue
                self._report(block, record, in_block=False)
                raise
            self._report(block, record, in_block=why is None)
            return why

    def _attempt(self, block: Block, now: Callable[[], float]) -> str | None:
        """One pass of ``block`` through the stages (see :meth:`run`)."""

        def hold(rejection: Rejection) -> None:
            block.rejected.append(replace(rejection, time=now()))

        for stage in self.stages:
            stage.filter(block, hold)
            if not block.updates:
                return "every candidate was rejected"
        before = self.server_step.saved()
        # an update memory forgets held rejections only after this step; it
        # runs without filter stages (memory_conflict), so there are none yet
        if not self.server_step(block):
            for u in block.updates:
                hold(Rejection(u.node_id, u.trained_on, OVERFLOW_REASON, u.digest))
            return "the aggregate would overflow the model"
        try:
            for stage in self.stages:
                stage.commit(block)
        except BaseException:
            self.server_step.restore(before)
            raise
        return None

    def _report(self, block: Block, record: RejectFn, *, in_block: bool) -> None:
        """Report the rejections of the attempt that ended (see :meth:`run`);
        ``in_block``: the block was committed with them."""
        for rejection in block.rejected:
            record(rejection)
            self.reject(rejection, in_block=in_block)

    def close(self) -> None:
        """Close every stage."""
        for stage in self.stages:
            stage.close()

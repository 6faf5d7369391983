"""Replay: recompute every block's global model from its parent and its updates.

A FedBuff (or PoVStrategy) ledger stores, for each included update, the
reply exactly as received (:mod:`.payload`; the entry's ``payload`` names its
blob). For each block :func:`replay` then checks, from stored data alone
and with the server's own code (:func:`~flchain_flwr.strategies.updates.parse_update`,
:func:`~flchain_flwr.strategies.weighting.effective_examples`,
:func:`~flchain_flwr.strategies.serverstep.server_step`, no second copy of the
maths):

1. each payload hashes to its blob name and, with the entry's node id, to the
   entry's ``digest`` (the digest the Merkle root and the committee's votes
   name), and parses as a valid update;
2. ``staleness`` is the parent's version minus ``trained_on``;
3. ``num_examples`` is the recorded example-weighting policy applied to the
   payload's own claim, given the claim history the block records; that
   history must follow from the previous block's by observing this block's
   senders (so an included claim of ``1e30`` examples is capped as the run
   capped it, and a forged history or weight fails);
4. ``weight`` is the recorded staleness function of the staleness, times, with
   work normalisation, the update's work factor, then, with fairness
   weighting, the node's factor, each recomputed as the server computed it
   (see below);
5. with trust weighting (config ``trust_weighting``, :mod:`~flchain_flwr.pov.
   trust`), each update's trust is read from the scores its committee signed
   in the block's votes, and its norm clip recomputed from the stored updates;
6. with server momentum, the velocity continues the previous block's, or
   restarts from zero at the start (after a block without one) or where
   continuing it over the block's updates overflows the model; a restart
   that rests only on a recorded overflow rejection (whose updates are not
   stored) is reported as not replayable, and one without any fails;
7. the recomputed model, velocity and contributions hash or compare equal to
   the recorded ones.

What replay proves for each straggler policy (:mod:`flchain_flwr.strategies`):

- fairness weighting (config ``fairness``, :func:`~flchain_flwr.strategies.
  fairness.inverse_participation`, the server's own function): the factors
  are recomputed from each node's included updates in the chain's earlier
  blocks (what the server counts, and a resumed server counts from its
  ledger) over the candidates the block records (its ``fairness`` field: the
  buffer the server weighed, in order, with their effective examples). The
  included updates must be those candidates, in that order, less ones this
  block rejects; a forged factor, count or candidate list fails naming the
  block. Not established: the candidates the block rejects and their
  effective examples (their payloads are not stored, so a block builder
  holding the signing key can list one more with a matching rejection; on a
  PoV chain the committee's votes bind each included update's share), which
  move the included factors within the policy's ``[1/max_factor,
  max_factor]``.
- work normalisation (config ``work_normalisation``, :func:`~flchain_flwr.
  strategies.nova.work_factors`, the server's own function): the factors are
  recomputed over the candidates the block records in its ``work`` field (the
  buffer the server weighed, in order, with their effective examples and the
  local work the server asked of each, and its digest), matched to the
  included updates by digest; a recorded weight that does not follow, or a malformed,
  non-positive or non-finite work, fails naming the block. Not established:
  that a node was in fact asked the work recorded (the train messages are not
  stored). That is the block builder's word: outside PoV whoever holds the
  ledger's signing key can record other work (and sign the chain again); on
  a quorum-signed PoV chain rewriting a block takes more than 2/3 of its
  committee's keys, but the server that builds a block states the work, and
  the members, who never see its train messages, cannot tell either.
- self-tuning K and tau (config ``buffer_tuning``): they decide when a buffer
  triggers, so which updates a block includes, not how they are weighed;
  replay recomputes each block from what it includes, and does not check that
  the K and tau a block records follow from the tuner.
- FedSA learning rates, BAFL local work and adaptive scheduling: they change
  only what nodes are asked to do (their train config, when they are asked);
  the server aggregates their replies as any others (but with work
  normalisation, above), and replay replays the replies as stored. It does
  not establish what a node was asked to do.

The arithmetic is fixed and documented in the functions it calls: the step is
``sum_i w_i n_i delta_i / sum_i n_i`` accumulated in float64 in the block's
update order (``n_i`` the effective examples, ``w_i`` the staleness weight,
each delta cast to float64 and scaled by ``w_i n_i / sum n`` before it is
added); with momentum ``v = momentum * v_prev + step`` in float64; then
``new = parent + lr * step`` computed in float64 and cast back to each array's
dtype (integers rounded half to even and saturated); non-trainable arrays
follow the recorded ``state_rule`` (the weighted average of ``base_i +
delta_i`` in float64, clipped to the reported range). Settings come from the
block's recorded config (``server_lr``, ``server_momentum``, ``staleness_fn``,
``example_weighting``, ``state_rule``, ``state_patterns``, the record keys).

Blocks that cannot be replayed are reported as such, with the reason, never
as ok: blocks written before payloads were stored (``PoVStrategy``'s were
until it stored them), blocks whose settings are not recorded, and blocks of
other strategies. ``PoVStrategy`` hands the committee's approved updates to a
Flower strategy's own aggregation (FedAvg, Krum, ...), which replay does not
recompute: of its blocks (recorded settings ``wrapper: PoVStrategy``) replay
checks steps 1 and 2 (each payload against its entry, which must say it was
trained on the parent version, with staleness 0, and the payload's example
claim), each trainer signature as below, and the recorded contributions,
recomputed from the payloads and the recorded model's step from its parent;
they are reported apart ("payloads and signatures checked; model not
recomputed"), and the replay is not complete. It records its settings once,
in a fresh ledger's genesis block: a block whose settings differ from its
previous block's where either is the wrapper's fails (a FedBuff block marked
as a wrapper's would otherwise go unrecomputed).

Trainer signatures (:mod:`.trainers`): a payload that carries one must verify
over its content without the record, its node id and the model hash of the
version it was trained on, and its entry's ``trainer`` must be that key (an
entry without one, a payload without one); with ``require_signed_replies`` in
the block's settings every included payload must carry one. (That a node id
keeps one key along the chain is a rule of the blocks alone: ``verify``
checks it.)

What replay does not establish: that a node sent an update stored under its
id when the reply is not signed by its trainer (on a PoV chain the
committee's votes name the digest), an update's ``trained_on`` when the reply does not
state it (the DGC mod's replies do), and claims of replies that were taken but
not included (their payloads are not stored: the claim history only has to
be consistent with the block's included and rejected senders).

This module holds the entry points (:func:`replay`, :class:`PendingReplay`,
:func:`replay_pending`) and their report. The rest lives beside it: one
block's replay in :mod:`.replayer`, an included entry's payload check in
:mod:`.replaypayload`, a wrapped strategy's block in :mod:`.replaywrapped`,
each update's weighing in :mod:`.replayweights`, the recorded settings in
:mod:`.replaysettings`, and what they share in :mod:`.replaytypes` (the names
this module held before they moved are also importable from here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..strategies.fairness import count_participation
from ..strategies.serverstep import server_step
from .blocks import CONFIG_FIELD, Block
from .chain import Ledger
from .payload import PAYLOAD_FIELD
from .replayer import Replayer
from .replaysettings import REPLAYABLE_STRATEGY, rule_weighs_by_trust
from .replaytypes import (
    Failed,
    MissingData,
    ModelNotRecomputed,
    NotReplayable,
    ReplaySource,
    StepFn,
)
from .replayweights import included_nodes, ledger_participation

__all__ = [  # what this module held before the split, still importable from it
    "REPLAYABLE_STRATEGY",
    "MissingData",
    "PendingReplay",
    "ReplayReport",
    "ReplaySource",
    "StepFn",
    "included_nodes",
    "ledger_participation",
    "replay",
    "replay_pending",
    "rule_weighs_by_trust",
]


_PAYLOADS_ONLY = "payloads and signatures checked; model not recomputed"
"""How the report lists :attr:`ReplayReport.payloads_only` blocks."""


@dataclass(frozen=True)
class ReplayReport:
    """Outcome of :func:`replay`: the first block that failed, or which
    blocks replayed and which could not be, with why."""

    ok: bool
    blocks: int
    """Blocks looked at (a failure stops the replay there)."""
    replayed: tuple[int, ...] = ()
    not_replayable: tuple[tuple[int, str], ...] = ()
    bad_height: int | None = None
    reason: str = ""
    checked: int = 0
    """Included updates of the replayed and payload-checked blocks (each
    checked against its payload)."""
    signed: int = 0
    """Of those, the ones whose payload carries a valid trainer signature."""
    payloads_only: tuple[tuple[int, str], ...] = ()
    """Blocks whose payloads, signatures and contributions were checked but
    whose model was not recomputed, with why."""

    @property
    def complete(self) -> bool:
        """Whether every block after the genesis block was replayed exactly."""
        return self.ok and not self.not_replayable and not self.payloads_only

    def __str__(self) -> str:
        if not self.ok:
            where = "ledger" if self.bad_height is None else f"block {self.bad_height}"
            return f"replay FAILED at {where}: {self.reason}"
        later = max(self.blocks - 1, 0)
        lines = [
            f"replay: {len(self.replayed)} of {later} blocks after genesis "
            "recomputed exactly from their parent and included updates"
        ]
        for what, blocks in (
            (_PAYLOADS_ONLY, self.payloads_only),
            ("not replayable", self.not_replayable),
        ):
            by_reason: dict[str, list[int]] = {}
            for height, why in blocks:
                by_reason.setdefault(why, []).append(height)
            for why, heights in by_reason.items():
                lines.append(f"{what}: {_ranges(heights)}: {why}")
        if self.signed:  # chains without trainer signatures report as before
            which = (
                "the blocks whose payloads were checked"
                if self.payloads_only
                else "the replayed blocks"
            )
            lines.append(
                f"trainers: {self.signed} of {self.checked} included updates in "
                f"{which} signed by their trainers (each signature checked over "
                "its stored payload, its node id and the model it was trained on)"
            )
        return "\n".join(lines)


def _ranges(heights: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"blocks 1-3, 7"``."""
    spans: list[list[int]] = []
    for h in heights:
        if spans and h == spans[-1][1] + 1:
            spans[-1][1] = h
        else:
            spans.append([h, h])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"block{'s' if len(heights) > 1 else ''} {text}"


def replay(ledger: Ledger, *, step: StepFn = server_step) -> ReplayReport:
    """Recompute every block's model from its parent and its stored updates.

    Meant for a ledger :meth:`~Ledger.verify` accepts (run that first: replay
    trusts the links, hashes and signatures it checks).

    Parameters
    ----------
    ledger : Ledger
        The ledger to replay.
    step : callable (default: :func:`~flchain_flwr.strategies.serverstep.server_step`)
        The server step to replay with (a benchmark passes a timed one).

    Returns
    -------
    ReplayReport
        ``ok`` unless a block fails (then the first such block and why); the
        blocks replayed, and those that could not be, with the reason.
    """
    replayer = Replayer(ledger, step)
    prev: Block | None = None
    count = 0
    replayed: list[int] = []
    skipped: list[tuple[int, str]] = []
    payloads_only: list[tuple[int, str]] = []
    failure: tuple[int | None, str] | None = None
    try:
        for block in ledger.blocks():
            count += 1
            replayer.record(block)
            if prev is not None:
                try:
                    replayer.block(prev, block)
                    replayed.append(block.height)
                except ModelNotRecomputed as exc:
                    payloads_only.append((block.height, str(exc)))
                except NotReplayable as exc:
                    skipped.append((block.height, str(exc)))
                except Failed as exc:
                    failure = (block.height, str(exc))
                except Exception as exc:  # any corruption is a finding, not a crash
                    failure = (block.height, f"block cannot be replayed: {exc!r}")
                if failure is not None:
                    break
            count_participation(replayer.participation, included_nodes(block))
            prev = block
    except Exception as exc:  # an unreadable ledger is a finding, not a crash
        failure = (None, f"the ledger cannot be read: {exc}")
    if failure is not None:
        return ReplayReport(
            False, count, tuple(replayed), tuple(skipped), failure[0], failure[1]
        )
    return ReplayReport(
        True,
        count,
        tuple(replayed),
        tuple(skipped),
        checked=replayer.checked,
        signed=replayer.signed,
        payloads_only=tuple(payloads_only),
    )


class PendingReplay:
    """Replays each block about to extend ``ledger``'s head, before it is
    written (what an in-process committee checks before it signs a header).

    The blocks already stored are read once, as the chain grows.
    """

    def __init__(self, ledger: Ledger, *, step: StepFn = server_step) -> None:
        self._replayer = Replayer(ledger, step)
        self._ledger = ledger
        self._prev: Block | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger it replays."""
        return self._ledger

    def check(self, block: Block) -> tuple[bool, str | None]:
        """``(replayed, problem)`` for the pending ``block``: ``(True, None)``
        if it replays exactly, ``(False, None)`` if it cannot be replayed
        (PoVStrategy's blocks, or no stored payloads), ``(False, why)`` if
        its recorded model, velocity or contributions are not the replay's."""
        start = 0 if self._prev is None else self._prev.height + 1
        for height in range(start, block.height):
            stored = self.ledger.block(height)
            self._replayer.record(stored)
            count_participation(self._replayer.participation, included_nodes(stored))
            self._prev = stored
        config = block.body.get(CONFIG_FIELD)
        if isinstance(config, dict) and self.ledger.config_digest(config) != str(
            block.header["config_digest"]
        ):
            return False, "its recorded config does not hash to its config_digest"
        if self._prev is None or not _replayable(block, self._replayer.configs):
            return False, None
        # what a pending block tells the replay is kept only if it replays:
        # a refused proposal must not change how the next one is checked
        kept = (dict(self._replayer.versions), dict(self._replayer.configs))
        self._replayer.record(block)
        try:
            self._replayer.block(self._prev, block)
        except (NotReplayable, Failed) as exc:
            self._replayer.versions, self._replayer.configs = kept
            return False, None if isinstance(exc, NotReplayable) else str(exc)
        return True, None


def replay_pending(
    source: ReplaySource,
    earlier: Sequence[Block],
    block: Block,
    config: Mapping[str, Any],
) -> tuple[bool, str | None]:
    """:meth:`PendingReplay.check` without a ledger: replay ``block`` over the
    last of ``earlier`` (blocks before it, oldest first, linked by their
    hashes, back to the oldest version its updates were trained on), reading
    models, payloads and server state from ``source``, with ``config`` the
    settings behind ``block``'s ``config_digest`` (the caller checks that they
    hash to it). Fairness weighting counts every earlier block, so a block
    written with it is not replayed here (``(False, None)``)."""
    replayer = Replayer(source, server_step)
    for stored in earlier:
        replayer.record(stored)
    replayer.record(block)
    replayer.configs[str(block.header["config_digest"])] = dict(config)
    if (
        not earlier
        or not _replayable(block, replayer.configs)
        or str(config.get("fairness", "")).strip() not in ("", "none")
    ):
        return False, None
    try:
        replayer.block(earlier[-1], block)
    except NotReplayable:
        return False, None
    except Failed as exc:
        return False, str(exc)
    return True, None


def _replayable(block: Block, configs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``block`` holds what a replay needs (payloads, FedBuff's
    recorded settings); one that does not is not replayed at all."""
    config = block.body.get(CONFIG_FIELD)
    if not isinstance(config, dict):
        config = configs.get(str(block.header["config_digest"]))
    return (
        isinstance(config, Mapping)
        and config.get("strategy") == REPLAYABLE_STRATEGY
        and all(PAYLOAD_FIELD in u for u in block.body.get("included", []))
    )

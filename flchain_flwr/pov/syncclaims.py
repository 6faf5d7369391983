"""A synchronous PoV round's claimed example counts, bounded as FedBuff's are.

A reply's ``weighted_by_key`` (its claimed example count) is the client's word.
:class:`~flchain_flwr.pov.PoVStrategy` bounds it by its example weighting over
the run's claim history (:mod:`~flchain_flwr.strategies.weighting`) before the
committee votes (:func:`weighed`): the votes sign each candidate's share at its
effective count, an approved reply reaches the wrapped strategy with
``weighted_by_key`` set to that count (:func:`counted`), and a block's entries
(``num_examples``) and contributions use it; the block records the claim
history (``server_state``) and each bounded claim is logged. A federated
evaluation's claims go through the same policy before the wrapped strategy
averages them (:func:`weigh_evaluations`), as FedBuff weighs them.
"""

from __future__ import annotations

from dataclasses import replace
from logging import WARNING

from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore import log

from ..strategies.claims import ClaimHistory
from ..strategies.metricweights import evaluation_counts, with_counts
from ..strategies.updates import counted_metrics
from ..strategies.weighting import ExampleWeighting, effective_examples
from .syncintake import Taken


def weighed(
    server_round: int,
    taken: list[Taken],
    weighting: ExampleWeighting,
    claims: ClaimHistory,
) -> list[Taken]:
    """``taken`` at their effective example counts, as FedBuff weighs a
    buffer (:func:`~flchain_flwr.strategies.weighting.effective_examples`),
    each claim first observed in ``claims``; the bounded claims logged.

    Raises
    ------
    WeightingError
        If the counts cannot weigh a step.
    """
    if not taken:
        return taken
    claimed = [t.update.num_examples for t in taken]
    for t, claim in zip(taken, claimed, strict=True):
        claims.observe(t.node_id, claim)
    counts = effective_examples(weighting, claimed, claims)
    bounded = [
        f"node {t.node_id} claims {claim:.12g}, counted as {count:.12g}"
        for t, claim, count in zip(taken, claimed, counts, strict=True)
        if count < claim
    ]
    if bounded:
        log(
            WARNING,
            "Round %d, example weighting %s: %s",
            server_round,
            weighting.spec,
            "; ".join(bounded),
        )
    return [
        replace(t, candidate=replace(t.candidate, examples=count))
        for t, count in zip(taken, counts, strict=True)
    ]


def counted(content: RecordDict, weighted_by_key: str, count: float) -> RecordDict:
    """``content`` with ``weighted_by_key`` set to ``count``, in a copy of
    the metric record that holds it (the record as received, which was
    digested and voted on, is kept)."""
    holders = counted_metrics(content, weighted_by_key)
    ((name, metrics),) = holders.items()
    record = MetricRecord(dict(metrics))
    record[weighted_by_key] = count
    return RecordDict({k: record if k == name else v for k, v in content.items()})


def weigh_evaluations(
    answered: list[Message], weighting: ExampleWeighting, weighted_by_key: str
) -> None:
    """Set each evaluate reply's claimed count in ``answered`` (none an
    error) to its effective count, as FedBuff weighs a federated evaluation
    (:func:`~flchain_flwr.strategies.metricweights.evaluation_counts`).

    Raises
    ------
    WeightingError
        If the counts cannot weigh an average (no reply is changed).
    """
    if not answered:  # nothing to weigh
        return
    contents = [r.content for r in answered]
    counts = evaluation_counts(weighting, contents, weighted_by_key)
    weighed = with_counts(contents, counts, weighted_by_key)
    for reply, content in zip(answered, weighed, strict=True):
        reply.content = content

"""Work normalisation: weigh each update by the local work it was asked for (FedNova).

With BAFL's adaptive work (:mod:`.bafl`) a fast node may be asked for 4x the
base local steps and a slow one for 0.25x, so the fast node's delta is some
16x larger and the average drifts towards the fast nodes' objective: the
objective inconsistency of Wang, Liu, Liang, Joshi and Poor ("Tackling the
Objective Inconsistency Problem in Heterogeneous Federated Optimization",
NeurIPS 2020). :class:`WorkNormalisation` multiplies the staleness weight
``w_i`` of each buffered update by::

    f_i = (1 / tau_i) * sum_k n_k / sum_k (n_k / tau_k)

where ``tau_i`` is the local work the server asked of update ``i`` and
``n_i`` its effective examples (:func:`work_factors`). FedBuff's step
``sum_i w_i n_i f_i delta_i / sum_i n_i`` is then::

    tau_eff * sum_i p_i w_i (delta_i / tau_i),
    p_i = n_i / sum_k n_k,   tau_eff = sum_k n_k / sum_k (n_k / tau_k)

FedNova's normalised averaging: each delta divided by its local work, the
average scaled back by ``tau_eff``, here the buffer's example-weighted
harmonic mean of the local work. Since ``sum_i n_i f_i = sum_i n_i``, the
weights stay relative to the buffer's total and the server's step is not
made larger (FedNova's own ``tau_eff = sum_i p_i tau_i``, the arithmetic
mean, would make it larger). Equal work gives factors of 1 (exactly 1 with
no work set; within rounding where ``1 / tau`` is not exact). Fairness
weighting (:mod:`.fairness`) multiplies after it; an update memory
(:mod:`.memory`) keeps each update with the weight it got in its own buffer.

``tau_i`` is the server's own record of what its train message asked (the
scheduling policy's ``work_key`` in the message's train config,
:func:`asked_work`), never the client's word; without a work key every
``tau_i`` is 1 and every factor exactly 1. Two updates' factors differ by exactly
the inverse ratio of their work, so none is more than ``max tau / min tau``
(with BAFL at most its ``high / low``); since BAFL asks a node that answers
slowly for less, a node can buy up to that by delaying its replies
(docs/stragglers.md quantifies it). A ledger block records the
buffer the factors were computed over, with each update's work
(:data:`WORK_FIELD`, :func:`~.candidates.candidates_record`), and
``verify --replay`` recomputes them from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .scheduling import SchedulingPolicy

WORK_FIELD = "work"
"""The block body field holding :func:`~.candidates.candidates_record` with
each candidate's work and digest."""


def work_factors(work: Sequence[float], examples: Sequence[float]) -> list[float]:
    """One factor per buffered update (see the module's docstring).

    ``work`` is each update's asked local work (finite, > 0), ``examples``
    the buffer's effective example counts; all factors are 1 when the
    examples weigh nothing.
    """
    factors = _factors([1.0 / w for w in work], examples)
    if all(math.isfinite(f) for f in factors):
        return factors
    # 1/w overflowed (w tiny) or the sum did (w spread over ~300 decades): the
    # same factors, relative to the least work, whose ratios all lie in (0, 1]
    least = min(work)
    return _factors([least / w for w in work], examples)


def _factors(raw: Sequence[float], examples: Sequence[float]) -> list[float]:
    total = sum(examples)
    weighted = sum(n * r for n, r in zip(examples, raw, strict=True))
    if not weighted > 0:
        return [1.0] * len(raw)
    return [r * total / weighted for r in raw]


def asked_work(config: Mapping[str, object] | None, key: str | None) -> float:
    """The local work a train config asks for: its value under ``key`` if
    that is a finite number > 0, else 1."""
    if config is None or key is None:
        return 1.0
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 1.0
    work = float(value)
    return work if math.isfinite(work) and work > 0 else 1.0


@dataclass(frozen=True)
class WorkNormalisation:
    """Weight factors from each update's asked local work (FedNova)."""

    def factors(self, work: Sequence[float], examples: Sequence[float]) -> list[float]:
        """One factor per buffered update."""
        return work_factors(work, examples)

    @property
    def spec(self) -> str:
        """``"fednova"``."""
        return "fednova"


def work_normalisation(spec: str) -> WorkNormalisation | None:
    """``""`` or ``"none"``: off; ``"fednova"``."""
    name = spec.strip()
    if name in ("", "none"):
        return None
    if name == "fednova":
        return WorkNormalisation()
    raise ValueError(
        f"unknown work normalisation {spec!r}; expected '', 'none' or 'fednova'"
    )


def normalisation_caution(
    normalisation: WorkNormalisation | None, scheduling: SchedulingPolicy
) -> str | None:
    """A warning for work normalisation beside a scheduling that asks no
    per-node local work (no ``work_key``: every factor is then 1)."""
    if normalisation is None or scheduling.work_key is not None:
        return None
    return (
        "work normalisation is on, but the scheduling asks no per-node local "
        "work (no adaptive-work): every factor is 1, so it has no effect"
    )

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
``tau_i`` is 1 and every factor exactly 1.

Who can buy what. Two updates' factors differ by exactly the inverse ratio of
their work, ``R = max tau / min tau`` at most (with BAFL at most its
``high / low``, 12 at base 3). Since BAFL asks a node that answers slowly for
less, a node can buy that by delaying its replies: an update holding a share
``p`` of its buffer's effective examples gets a factor of up to
``R / (1 + (R - 1) p)`` (so at most ``R p / (1 + (R - 1) p)`` of the step,
staleness and fairness weights aside: fairness multiplies after it, and a
node that delays participates less, so its fairness factor grows too). On
the virtual grid of ``tests/test_nova.py`` one node of ten delaying each
reply 5 s took 32.9 % of the weight against 10 % of the examples
(docs/stragglers.md).

``fednova:<max>`` bounds that (:func:`capped_factors`): each factor ``f_i``,
which is relative to the buffer (``tau_eff / tau_i``), is clipped to
``[1/max, max]``, then all are scaled by one number so that
``sum_i n_i f_i = sum_i n_i`` again. That scaling can push a factor back past
``max`` (one update asked 1 step among four asked 12, equal examples: 3.75
clips to 2, the others' 0.3125 to 0.5, and the scaling by 5/4 gives 2.5), so
what holds is the bound above with ``Q = min(R, max**2)`` for ``R``: two
factors differ by at most ``min(tau_j / tau_i, max**2)`` times, and
``1 / (p + (1 - p) Q) <= f_i <= Q / (1 + (Q - 1) p)``, inside
``[1/max**2, max**2]``; the upper bound is reached when the update's factor
and all the others' are clipped. So a cap of ``max`` limits what a node can
buy by delaying to what a work ratio of ``max**2`` would give it. With
BAFL's ``R`` = 12, one update asked 1 step among K - 1 asked 12, equal
examples, gets 3.75 uncapped at K = 5 (three quarters of the step), 2.5
capped at 2 (half), 3.46 at 3 and 3.75 at 4 (not clipped); at K = 20, 7.74
uncapped, 2.81, 3.93 and 4.92. A cap of 4 or more (``max**2`` >= 12) gives
no better bound than ``R``'s, though it clips. On the same grid the delaying node
took 26.0 % of the weight with a cap of 2, 31.2 % with 3 and 32.6 % with 4
(32.9 % uncapped): the cap lowers the factor of each update, not the node's
participation. A cap of 1 makes every factor 1. Plain ``fednova`` stays
uncapped (its benchmark rows are unchanged).

A ledger block records the buffer the factors were computed over, with each
update's work (:data:`WORK_FIELD`, :func:`~.candidates.candidates_record`),
the run's settings record the spec (the cap with it), and ``verify --replay``
recomputes the factors from both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..numbertext import decimal_number, number_text
from .maxfactor import check_max_factor, clip_factor
from .renormalise import overflow_free
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
    # where 1/w overflows (w tiny) or a product does (w spread over ~300
    # decades, examples near the float maximum): relative to the least work
    least = min(work, default=1.0)
    raw = overflow_free(
        [1.0 / w for w in work], examples, lambda: [least / w for w in work]
    )
    factors = _factors(raw, examples)
    return [1.0] * len(raw) if factors is None else factors


def _factors(raw: Sequence[float], examples: Sequence[float]) -> list[float] | None:
    """``raw`` scaled so that their example-weighted total is
    ``sum(examples)``; ``None`` where the examples weigh nothing."""
    total = sum(examples)
    weighted = sum(n * r for n, r in zip(examples, raw, strict=True))
    if not weighted > 0:
        return None
    return [r * total / weighted for r in raw]


def capped_factors(
    factors: Sequence[float], examples: Sequence[float], max_factor: float
) -> list[float]:
    """``factors`` clipped to ``[1/max_factor, max_factor]``, then scaled so
    that their example-weighted total is ``sum(examples)`` again.

    ``factors`` are relative to the buffer (:func:`work_factors`); the result
    may leave ``[1/max_factor, max_factor]`` but not ``[1/max_factor**2,
    max_factor**2]`` (the module's docstring has the exact bound). Where no
    factor needed clipping, or the examples weigh nothing, the clipped
    factors are returned unscaled.
    """
    clipped = [clip_factor(f, max_factor) for f in factors]
    if clipped == list(factors):  # the total is kept: rescaling adds only rounding
        return clipped
    scaled = _factors(overflow_free(clipped, examples), examples)
    return clipped if scaled is None else scaled


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
    """Weight factors from each update's asked local work (FedNova), capped
    at ``max_factor`` (:func:`capped_factors`) unless it is ``None``."""

    max_factor: float | None = None

    def __post_init__(self) -> None:
        if self.max_factor is not None:
            check_max_factor(self.max_factor)

    def factors(self, work: Sequence[float], examples: Sequence[float]) -> list[float]:
        """One factor per buffered update."""
        factors = work_factors(work, examples)
        if self.max_factor is None:
            return factors
        return capped_factors(factors, examples, self.max_factor)

    @property
    def spec(self) -> str:
        """``"fednova"``, or ``"fednova:<max_factor>"`` with a cap."""
        if self.max_factor is None:
            return "fednova"
        return f"fednova:{number_text(self.max_factor)}"


def work_normalisation(spec: str) -> WorkNormalisation | None:
    """``""`` or ``"none"``: off; ``"fednova"`` (uncapped) or
    ``"fednova:<max_factor>"`` (a finite number >= 1)."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "fednova" and len(params) <= 1:
        try:
            return WorkNormalisation(*(decimal_number(p) for p in params))
        except ValueError as exc:
            raise ValueError(f"bad work normalisation {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown work normalisation {spec!r}; expected '', 'none', 'fednova' "
        "or 'fednova:<max>'"
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

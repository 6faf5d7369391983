"""Fairness-aware weighting: compensate nodes that rarely reach the model.

FedBuff scales an update by its staleness, ``1/sqrt(1+s)``: a slow device's
updates are both rare and stale, so when data and device class go together its
data is under-learnt ("delayed nodes may be given low weight, resulting in
sustained low participation", the asynchronous FLchain survey, §3.2.3).
:class:`InverseParticipation` multiplies each buffered update's weight by the
node's inverse participation share (its aggregated updates, plus one, against
the mean over the nodes seen), renormalised so that the buffer's total weight
is unchanged, and bounded::

    raw_i = (mean_j c_j + 1) / (c_i + 1)
    f_i   = clip(raw_i * sum_k n_k / sum_k n_k raw_k, 1 / max_factor, max_factor)

so it moves weight from frequent to rare nodes within a buffer without making
the server's step larger. It works beside any staleness function (with
``staleness="constant"`` it replaces FedBuff's).

A ledger can replay it (``flchain ledger verify --replay``): ``c_j`` counts
node ``j``'s included updates in the chain's earlier blocks (a resumed run
counts them from its ledger too), and each block records the buffer's
candidates (:func:`~.candidates.candidates_record`), since a PoV committee
may reject some of them after the factors were computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..numbertext import decimal_number, number_text
from .maxfactor import check_max_factor, clip_factor
from .renormalise import overflow_free

FAIRNESS_FIELD = "fairness"
"""The block body field holding :func:`~.candidates.candidates_record`."""


def inverse_participation(
    node_ids: Sequence[int],
    examples: Sequence[float],
    participation: Mapping[int, int],
    max_factor: float,
) -> list[float]:
    """One factor per buffered update (see the module's docstring).

    ``participation`` holds each node's aggregated updates before this buffer;
    nodes in the buffer but not in it count 0. ``examples`` are the buffer's
    effective example counts (finite, total > 0); near the float maximum the
    raw factors are taken relative to the largest, which keeps the scale
    (:func:`~.renormalise.overflow_free`).
    """
    seen = len(participation) + sum(1 for n in set(node_ids) if n not in participation)
    mean = sum(participation.values()) / seen if seen else 0.0
    raw = overflow_free(
        [(mean + 1.0) / (participation.get(n, 0) + 1.0) for n in node_ids], examples
    )
    total = sum(examples)
    weighted = sum(n * r for n, r in zip(examples, raw, strict=True))
    scale = total / weighted if weighted > 0 else 1.0
    return [clip_factor(r * scale, max_factor) for r in raw]


def count_participation(participation: dict[int, int], node_ids: Iterable[int]) -> None:
    """Count one aggregated update for each of ``node_ids`` (repeats count twice)."""
    for node_id in node_ids:
        participation[node_id] = participation.get(node_id, 0) + 1


@dataclass(frozen=True)
class InverseParticipation:
    """Weight factors from inverse participation, within ``[1/max, max]``."""

    max_factor: float = 4.0

    def __post_init__(self) -> None:
        check_max_factor(self.max_factor)

    def factors(
        self,
        node_ids: Sequence[int],
        examples: Sequence[float],
        participation: Mapping[int, int],
    ) -> list[float]:
        """One factor per buffered update."""
        return inverse_participation(node_ids, examples, participation, self.max_factor)

    @property
    def spec(self) -> str:
        """``"inverse:<max_factor>"``."""
        return f"inverse:{number_text(self.max_factor)}"


def fairness_weighting(spec: str) -> InverseParticipation | None:
    """``""`` or ``"none"``: off; ``"inverse"`` or ``"inverse:<max_factor>"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "inverse" and len(params) <= 1:
        try:
            return InverseParticipation(*(decimal_number(p) for p in params))
        except ValueError as exc:
            raise ValueError(f"bad fairness weighting {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown fairness weighting {spec!r}; expected '', 'none', 'inverse' or "
        "'inverse:<max_factor>'"
    )

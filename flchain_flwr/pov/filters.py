"""Cheap pre-filters that run before the committee scores anything.

- :class:`IQRFilter`: after the asynchronous FLchain survey (§3.2.2, after Xu et
  al.): build a temporary global model from the candidates, measure each
  candidate's distance to it, and drop the upper outliers of the box plot,
  ``d > Q3 + k * IQR``. The whisker ``k`` moves with the round: loose while
  updates are large and diverse, tighter later. Quartiles tolerate fewer than a
  quarter of outliers.
- :class:`MedianFilter`: compare each candidate with the coordinate-wise median
  of the batch (robust while fewer than half are malicious): drop those whose
  norm is more than ``max_norm_ratio`` times the median norm (boosted or noisy
  updates) or whose cosine with the median update is below ``min_cosine``
  (updates pointing against the batch, e.g. sign-flipped).

A filter maps candidate deltas to ``{index: reason}`` for those it rules out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..arrays import NDArrays


class Prefilter(Protocol):
    """Rules candidates out before the committee votes."""

    def outliers(self, deltas: Sequence[NDArrays], round_: int) -> dict[int, str]:
        """Index -> reason for each candidate ruled out."""


@dataclass(frozen=True)
class IQRFilter:
    """Drop candidates whose distance to the candidates' mean is an outlier.

    Parameters
    ----------
    k_start, k_end : float (default: 3.0, 1.5)
        Whisker length in IQRs at round 0 and from ``schedule_rounds`` on (linear
        in between). 1.5 is Tukey's classic fence, 3.0 his "far out" one.
    schedule_rounds : int (default: 50)
        Rounds (global versions) over which the whisker moves from start to end.
    min_candidates : int (default: 4)
        With fewer candidates quartiles mean nothing: everything passes.
    """

    k_start: float = 3.0
    k_end: float = 1.5
    schedule_rounds: int = 50
    min_candidates: int = 4

    def __post_init__(self) -> None:
        if self.k_start < 0 or self.k_end < 0:
            raise ValueError("whisker lengths must be >= 0")
        if self.schedule_rounds < 1 or self.min_candidates < 3:
            raise ValueError("need schedule_rounds >= 1 and min_candidates >= 3")

    def whisker(self, round_: int) -> float:
        """The whisker ``k`` at global version ``round_``."""
        progress = min(max(round_, 0) / self.schedule_rounds, 1.0)
        return self.k_start + (self.k_end - self.k_start) * progress

    def outliers(self, deltas: Sequence[NDArrays], round_: int) -> dict[int, str]:
        """Index -> reason for each candidate the box plot rules out."""
        if len(deltas) < self.min_candidates:
            return {}
        distances = distances_to_mean(deltas)
        q1, q3 = np.percentile(distances, [25, 75])
        k = self.whisker(round_)
        fence = float(q3 + k * (q3 - q1))
        return {
            i: (
                f"IQR outlier: distance {d:.4g} to the candidates' mean is above "
                f"Q3 + {k:.2f} IQR = {fence:.4g}"
            )
            for i, d in enumerate(distances)
            if d > fence
        }


def distances_to_mean(deltas: Sequence[NDArrays]) -> np.ndarray:
    """L2 distance of each update to the mean update (float64, over all arrays).

    Equal to each local model's distance to the temporary global model built by
    averaging them, when all were trained on the same model.
    """
    flat = _flatten(deltas)
    return np.asarray(np.linalg.norm(flat - flat.mean(axis=0), axis=1))


@dataclass(frozen=True)
class MedianFilter:
    """Drop candidates far from the batch's coordinate-wise median update.

    Parameters
    ----------
    max_norm_ratio : float (default: 4.0)
        Largest allowed ``||delta|| / median_j ||delta_j||``.
    min_cosine : float | None (default: 0.0)
        Smallest allowed cosine between a delta and the coordinate-wise median
        delta; ``None`` turns the direction test off.
    min_candidates : int (default: 3)
        With fewer candidates the median means nothing: everything passes.
    """

    max_norm_ratio: float = 4.0
    min_cosine: float | None = 0.0
    min_candidates: int = 3

    def __post_init__(self) -> None:
        if self.max_norm_ratio <= 1.0:
            raise ValueError("max_norm_ratio must be > 1")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine < 1.0:
            raise ValueError("min_cosine must be in [-1, 1)")
        if self.min_candidates < 3:
            raise ValueError("min_candidates must be >= 3")

    def outliers(self, deltas: Sequence[NDArrays], round_: int) -> dict[int, str]:
        """Index -> reason for each candidate ruled out (``round_`` is unused)."""
        if len(deltas) < self.min_candidates:
            return {}
        flat = _flatten(deltas)
        norms = np.linalg.norm(flat, axis=1)
        median_norm = float(np.median(norms))
        median = np.median(flat, axis=0)
        median_len = float(np.linalg.norm(median))
        out: dict[int, str] = {}
        for i, norm in enumerate(norms):
            if median_norm > 0 and norm > self.max_norm_ratio * median_norm:
                out[i] = (
                    f"norm {norm:.4g} is more than {self.max_norm_ratio:g}x the "
                    f"batch's median norm {median_norm:.4g}"
                )
            elif self.min_cosine is not None and norm > 0 and median_len > 0:
                cosine = float(flat[i] @ median) / (norm * median_len)
                if cosine < self.min_cosine:
                    out[i] = (
                        f"cosine {cosine:.3f} with the batch's median update is "
                        f"below {self.min_cosine:g}"
                    )
        return out


def _flatten(deltas: Sequence[NDArrays]) -> np.ndarray:
    """One float64 row per update, over the float arrays of the first."""
    names = [k for k, v in deltas[0].items() if v.dtype.kind == "f"]
    return np.stack(
        [
            np.concatenate([np.ravel(d[name]).astype(np.float64) for name in names])
            for d in deltas
        ]
    )

"""Adaptive poisoning attacks: the maths, on flat vectors and on update dicts.

Every function here takes ``pool``, the colluders' own honest updates (each
attacker trains honestly first, then the colluders pool what they computed; they
never see an honest node's update), and returns the one malicious update every
colluder sends.

- :func:`min_max` / :func:`min_sum`: Shejwalkar & Houmansadr, "Manipulating the
  Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated
  Learning", NDSS 2021, the aggregation-agnostic attacks. The malicious update is
  ``mean + gamma * p`` for a perturbation ``p`` (``"unit"``: ``-mean/|mean|``,
  ``"std"``: ``-std``, ``"sign"``: ``-sign(mean)``), with ``gamma`` as large as
  binary search finds while the update's largest distance (min-max) or sum of
  squared distances (min-sum) to the benign updates stays within the largest
  such figure among the benign updates themselves. They know nothing of the
  defence.
- :func:`cosine_edge`: a defence-aware attacker against a direction test
  (cosine with a reference update above ``min_cosine``) behind a norm bound
  (norm at most ``max_norm_ratio`` times the batch's median norm: the median
  pre-filter's, or the PoV rule's own ``max_norm_ratio`` where that is
  smaller, see :mod:`flchain_flwr.pov.norms`). It takes the
  colluders' mean as its estimate of the verifiers' reference, sends an update
  whose cosine with that estimate is ``min_cosine + margin`` (just above the
  threshold), the rest of it along the part of ``-sign(mean)`` orthogonal to the
  mean, at ``norm_slack * max_norm_ratio`` times the colluders' median norm: the
  largest angle and step the rule would let through, as far as the colluders
  can tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ..arrays import NDArrays

Perturbation = Literal["unit", "std", "sign"]
PERTURBATIONS: tuple[Perturbation, ...] = ("unit", "std", "sign")


# ---------------------------------------------------------------- flat maths
def perturbation(benign: np.ndarray, kind: Perturbation) -> np.ndarray:
    """The direction ``p`` the NDSS 2021 attacks move the benign mean along."""
    mean = benign.mean(axis=0)
    match kind:
        case "unit":
            norm = float(np.linalg.norm(mean))
            return -mean / norm if norm > 0 else np.zeros_like(mean)
        case "std":
            return np.asarray(-benign.std(axis=0))
        case "sign":
            return np.asarray(-np.sign(mean))
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")


def max_distance(benign: np.ndarray, update: np.ndarray) -> float:
    """Largest L2 distance from ``update`` to a benign update."""
    return float(np.linalg.norm(benign - update, axis=1).max())


def sum_squared_distances(benign: np.ndarray, update: np.ndarray) -> float:
    """Sum of squared L2 distances from ``update`` to the benign updates."""
    return float((np.linalg.norm(benign - update, axis=1) ** 2).sum())


def min_max_bound(benign: np.ndarray) -> float:
    """Largest distance between two benign updates (min-max's budget)."""
    return max(max_distance(benign, row) for row in benign)


def min_sum_bound(benign: np.ndarray) -> float:
    """Largest sum of squared distances from a benign update to the others."""
    return max(sum_squared_distances(benign, row) for row in benign)


def largest_gamma(
    fits: Callable[[float], bool], *, relative_tolerance: float = 1e-6
) -> float:
    """The largest ``gamma >= 0`` with ``fits(gamma)``, by doubling then bisection.

    ``fits`` must hold at 0 and describe an interval ``[0, gamma*]`` (true of a
    convex distance kept under a bound). Returns a ``gamma`` that fits, within
    ``relative_tolerance`` of ``gamma*``; ``inf`` is never returned: a ``fits``
    that holds up to ``2**60`` gives 0 (no perturbation bounded the attack).
    """
    if not fits(0.0):
        raise ValueError("the constraint does not hold at gamma = 0")
    high = 1e-12
    while fits(high):
        high *= 2.0
        if high > 2.0**60:
            return 0.0
    low = high / 2.0 if high > 1e-12 else 0.0
    while high - low > relative_tolerance * high:
        middle = (low + high) / 2.0
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def min_max_vector(benign: np.ndarray, kind: Perturbation) -> tuple[np.ndarray, float]:
    """Min-max's malicious update for rows ``benign``, and the gamma chosen."""
    mean, p = benign.mean(axis=0), perturbation(benign, kind)
    bound = min_max_bound(benign)
    gamma = largest_gamma(lambda g: max_distance(benign, mean + g * p) <= bound)
    return mean + gamma * p, gamma


def min_sum_vector(benign: np.ndarray, kind: Perturbation) -> tuple[np.ndarray, float]:
    """Min-sum's malicious update for rows ``benign``, and the gamma chosen."""
    mean, p = benign.mean(axis=0), perturbation(benign, kind)
    bound = min_sum_bound(benign)
    gamma = largest_gamma(
        lambda g: sum_squared_distances(benign, mean + g * p) <= bound
    )
    return mean + gamma * p, gamma


def cosine_edge_vector(
    benign: np.ndarray,
    *,
    min_cosine: float,
    margin: float,
    max_norm_ratio: float,
    norm_slack: float,
) -> np.ndarray:
    """The cosine-edge update for rows ``benign`` (see the module docstring)."""
    if not -1.0 <= min_cosine < 1.0 or margin < 0 or not 0 < norm_slack <= 1:
        raise ValueError("need min_cosine in [-1, 1), margin >= 0, 0 < slack <= 1")
    mean = benign.mean(axis=0)
    mean_norm = float(np.linalg.norm(mean))
    if mean_norm == 0:
        return np.zeros_like(mean)
    along = mean / mean_norm
    harm = -np.sign(mean)
    orthogonal = harm - float(harm @ along) * along
    orthogonal_norm = float(np.linalg.norm(orthogonal))
    if orthogonal_norm == 0:  # a one-coordinate update: nothing is orthogonal
        orthogonal = np.zeros_like(mean)
    else:
        orthogonal /= orthogonal_norm
    c = min(min_cosine + margin, 1.0)
    direction = c * along + math.sqrt(max(1.0 - c * c, 0.0)) * orthogonal
    median_norm = float(np.median(np.linalg.norm(benign, axis=1)))
    return np.asarray(norm_slack * max_norm_ratio * median_norm * direction)


# ------------------------------------------------------------ update dicts
def flatten(pool: Sequence[NDArrays]) -> tuple[list[str], np.ndarray]:
    """Float array names of the last update, and one float64 row per update."""
    names = [k for k, v in pool[-1].items() if v.dtype.kind == "f"]
    rows = [
        np.concatenate([np.ravel(d[k]).astype(np.float64) for k in names]) for d in pool
    ]
    return names, np.stack(rows)


def unflatten(vector: np.ndarray, names: list[str], like: NDArrays) -> NDArrays:
    """``vector`` back into ``like``'s float arrays; other arrays from ``like``."""
    out = dict(like)
    offset = 0
    for k in names:
        size = like[k].size
        out[k] = vector[offset : offset + size].reshape(like[k].shape)
        offset += size
    return out


def min_max(pool: Sequence[NDArrays], kind: Perturbation = "std") -> NDArrays:
    """Min-max on update dicts (non-float arrays from the last update)."""
    names, benign = flatten(pool)
    return unflatten(min_max_vector(benign, kind)[0], names, pool[-1])


def min_sum(pool: Sequence[NDArrays], kind: Perturbation = "std") -> NDArrays:
    """Min-sum on update dicts (non-float arrays from the last update)."""
    names, benign = flatten(pool)
    return unflatten(min_sum_vector(benign, kind)[0], names, pool[-1])


def cosine_edge(
    pool: Sequence[NDArrays],
    *,
    min_cosine: float,
    margin: float = 0.1,
    max_norm_ratio: float = 4.0,
    norm_slack: float = 0.9,
) -> NDArrays:
    """The cosine-edge attack on update dicts (see the module docstring)."""
    names, benign = flatten(pool)
    vector = cosine_edge_vector(
        benign,
        min_cosine=min_cosine,
        margin=margin,
        max_norm_ratio=max_norm_ratio,
        norm_slack=norm_slack,
    )
    return unflatten(vector, names, pool[-1])

"""The update and label attacks' maths: pure transforms, no Flower.

:mod:`.attacks` applies them to a poisoning node's honest update (or, for label
flipping, to its training labels); the adaptive attacks' maths is in
:mod:`.adaptive`. Only float arrays are changed; integer arrays pass through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from ..arrays import NDArrays


def _floats(delta: NDArrays) -> list[str]:
    return [k for k, v in delta.items() if v.dtype.kind == "f"]


def sign_flip(delta: NDArrays, scale: float = 1.0) -> NDArrays:
    """``-scale * delta`` on float arrays."""
    return {k: -scale * v if v.dtype.kind == "f" else v for k, v in delta.items()}


def scaled(delta: NDArrays, scale: float = 10.0) -> NDArrays:
    """``scale * delta`` on float arrays (boosting / model replacement)."""
    return {k: scale * v if v.dtype.kind == "f" else v for k, v in delta.items()}


def gaussian_noise(delta: NDArrays, std: float, rng: np.random.Generator) -> NDArrays:
    """``delta`` plus i.i.d. Gaussian noise of standard deviation ``std``."""
    return {
        k: v + rng.normal(0.0, std, v.shape) if v.dtype.kind == "f" else v
        for k, v in delta.items()
    }


def alie(pool: Sequence[NDArrays], z: float) -> NDArrays:
    """``mean - z * std`` per coordinate over the colluders' honest updates."""
    out = dict(pool[-1])
    for k in _floats(pool[-1]):
        stacked = np.stack([d[k] for d in pool])
        out[k] = stacked.mean(axis=0) - z * stacked.std(axis=0)
    return out


def ipm(pool: Sequence[NDArrays], epsilon: float) -> NDArrays:
    """``-epsilon * mean`` of the colluders' honest updates."""
    out = dict(pool[-1])
    for k in _floats(pool[-1]):
        out[k] = -epsilon * np.stack([d[k] for d in pool]).mean(axis=0)
    return out


def alie_z(num_nodes: int, num_malicious: int) -> float:
    """Baruch et al.'s z_max: ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n-s)/n)``."""
    s = math.floor(num_nodes / 2 + 1) - num_malicious
    p = (num_nodes - s) / num_nodes
    if not 0.0 < p < 1.0:
        raise ValueError(f"no ALIE z for n={num_nodes}, f={num_malicious}")
    return NormalDist().inv_cdf(p)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``c -> num_classes - 1 - c``."""
    return (num_classes - 1 - y).astype(y.dtype)

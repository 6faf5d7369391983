"""A node's held-out evaluation data: test examples in its own label mix.

A node's own partition is its training data: a model trained on it (the local
half of a personalised mix, :mod:`flchain_flwr.mods.personal`) scores well there
whatever it learnt. With personalisation on, the app evaluates instead on
examples of the held-out test set drawn in the proportions of the node's
labels, so the global model and the personalised one are compared on data
neither was trained on, from the distribution the node serves. (Not named
``local_test.py``: Flower leaves ``*_test.py`` files out of an app's FAB.)
"""

from __future__ import annotations

import zlib

import numpy as np


def local_test_indices(
    y_test: np.ndarray, y_local: np.ndarray, size: int, seed: int
) -> np.ndarray:
    """Indices into ``y_test``: about ``size`` examples with ``y_local``'s label
    proportions (per class ``round(size * share)``, at least one for a class
    the node holds), drawn without replacement where the test set has enough,
    sorted. Classes the test set lacks are left out.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y_local, return_counts=True)
    chosen: list[np.ndarray] = []
    for label, count in zip(labels, counts, strict=True):
        pool = np.flatnonzero(y_test == label)
        if pool.size == 0:
            continue
        k = max(1, round(size * count / len(y_local)))
        chosen.append(rng.choice(pool, size=k, replace=k > pool.size))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen))


def local_test_seed(seed: int, partition_id: int) -> int:
    """The draw's seed for one node of a run."""
    return zlib.crc32(f"local-test/{seed}/{partition_id}".encode())

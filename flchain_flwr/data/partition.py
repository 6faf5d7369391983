"""Non-IID partitioning with flwr-datasets, on in-memory labels."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    *,
    seed: int = 42,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Split example indices into ``num_partitions`` label-skewed parts.

    Uses flwr-datasets' :class:`DirichletPartitioner` (per-class Dirichlet(alpha)
    proportions; smaller ``alpha`` = more skew) on an in-memory dataset, so it
    needs no network. Returns one sorted index array per partition.
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    return list(
        _cached_partition(
            tuple(int(v) for v in labels),
            num_partitions,
            float(alpha),
            seed,
            min_partition_size,
        )
    )


@lru_cache(maxsize=16)
def _cached_partition(
    labels: tuple[int, ...],
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int,
) -> tuple[np.ndarray, ...]:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    dataset = Dataset.from_dict(
        {"label": list(labels), "index": list(range(len(labels)))}
    )
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=True,
        seed=seed,
    )
    partitioner.dataset = dataset
    return tuple(
        np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
        for i in range(num_partitions)
    )

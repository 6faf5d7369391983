"""Non-IID partitioning with flwr-datasets, on in-memory labels."""

from __future__ import annotations

from collections.abc import Sequence
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


def tier_partition(
    labels: np.ndarray,
    num_partitions: int,
    tier_classes: Sequence[Sequence[int]],
    alpha: float,
    *,
    seed: int = 42,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Split example indices by device tier, each tier over its own classes.

    Partition ``i`` belongs to tier ``i % len(tier_classes)`` (the round-robin
    order of :func:`~flchain_flwr.sim.devices.tiered`). The examples whose label
    is in a tier's classes are split among that tier's partitions by
    :func:`dirichlet_partition` (Dirichlet(alpha) within the tier); labels in
    no tier's classes are left out.
    """
    tiers = len(tier_classes)
    if tiers < 1 or num_partitions < tiers:
        raise ValueError(
            f"need 1 <= tiers <= num_partitions, got {tiers} tiers for "
            f"{num_partitions} partitions"
        )
    flat = [int(c) for classes in tier_classes for c in classes]
    if len(flat) != len(set(flat)) or any(not classes for classes in tier_classes):
        raise ValueError(f"tier classes must be non-empty and disjoint: {tier_classes}")
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_partitions
    for tier, classes in enumerate(tier_classes):
        members = list(range(tier, num_partitions, tiers))
        idx = np.flatnonzero(np.isin(labels, np.asarray(classes)))
        split = dirichlet_partition(
            labels[idx],
            len(members),
            alpha,
            seed=seed + tier,
            min_partition_size=min_partition_size,
        )
        for member, local in zip(members, split, strict=True):
            parts[member] = idx[local]
    return parts


def parse_tier_classes(text: str) -> list[list[int]]:
    """``"0,1,2,3;4,5,6;7,8,9"`` -> ``[[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]``."""
    try:
        tiers = [[int(c) for c in tier.split(",")] for tier in text.split(";")]
    except ValueError:
        raise ValueError(
            f"tier classes must look like '0,1,2;3,4,5', got {text!r}"
        ) from None
    return tiers

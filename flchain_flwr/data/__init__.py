"""Dataset loaders and partitioning helpers (offline-first)."""

from .digits import load_digits_split
from .partition import dirichlet_partition, parse_tier_classes, tier_partition

__all__ = [
    "dirichlet_partition",
    "load_digits_split",
    "parse_tier_classes",
    "tier_partition",
]

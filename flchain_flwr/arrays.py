"""Named arrays (a model or an update as ``name -> ndarray``) and their conversions.

A leaf module: strategies, the PoV committee and the ledger all use it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

NDArrays = dict[str, np.ndarray]


def to_ndarrays(arrays: ArrayRecord) -> NDArrays:
    """Decode an ArrayRecord into a name -> ndarray dict (insertion order kept)."""
    return {name: arr.numpy() for name, arr in arrays.items()}


def to_arrayrecord(ndarrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Encode a name -> ndarray mapping as an ArrayRecord."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(v)) for name, v in ndarrays.items()}
    )


def apply_step(
    model: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray], lr: float
) -> NDArrays:
    """Return ``model + lr * step`` in each array's own dtype (a new dict).

    Integers are rounded and clipped to their range; a float result that
    overflows its dtype comes out as Inf, which callers check for.
    """
    out: NDArrays = {}
    for name, value in model.items():
        updated = value.astype(np.float64) + lr * step[name]
        if value.dtype.kind in "iu":
            info = np.iinfo(value.dtype)
            updated = np.clip(np.rint(updated), info.min, info.max)
        elif value.dtype.kind == "b":
            updated = np.rint(np.clip(updated, 0, 1))
        with np.errstate(over="ignore"):
            out[name] = updated.astype(value.dtype)
    return out

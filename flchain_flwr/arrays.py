"""Named arrays (a model or an update as ``name -> ndarray``) and their conversions.

A leaf module: strategies, the PoV committee and the ledger all use it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

NDArrays = dict[str, np.ndarray]

_FLOAT_EXACT = 2.0**52
"""Integers up to this magnitude, and sums of two of them, are exact in float64."""


def to_ndarrays(arrays: ArrayRecord) -> NDArrays:
    """Decode an ArrayRecord into a name -> ndarray dict (insertion order kept).

    Each array comes back with exactly the shape and dtype its ``Array``
    declares (0-dim arrays stay 0-dim).

    Raises
    ------
    ValueError
        If an array's bytes decode to another shape or dtype than it declares.
    TypeError
        If an array is not in Flower's numpy serialisation (e.g. a sparse one).
    """
    out: NDArrays = {}
    for name, arr in arrays.items():
        value = arr.numpy()
        if value.shape != tuple(arr.shape) or value.dtype != np.dtype(arr.dtype):
            raise ValueError(
                f"array {name!r} declares {arr.dtype}{list(arr.shape)} "
                f"but holds {value.dtype}{list(value.shape)}"
            )
        out[name] = value
    return out


def to_arrayrecord(ndarrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Encode a name -> ndarray mapping as an ArrayRecord.

    Shape and dtype are kept exactly (0-dim and empty arrays included); values
    are stored in C order, so equal arrays always encode to equal bytes.
    """
    return ArrayRecord({name: Array(_c_order(v)) for name, v in ndarrays.items()})


def _c_order(value: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-dim array into shape (1,)
    return np.asarray(value, order="C")


def apply_step(
    model: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray], lr: float
) -> NDArrays:
    """Return ``model + lr * step`` in each array's own dtype and shape (a new dict).

    Floats are computed in float64 and cast back; a result that overflows its
    dtype comes out as Inf, which callers check for. Integers become
    ``rint(v + lr * step)`` (ties to even), computed exactly (no float rounding
    of large int64 values) and saturated at the dtype's range, so they never
    wrap. Booleans become ``rint(clip(v + lr * step, 0, 1))``.

    Raises
    ------
    ValueError
        If the step for an integer or boolean array holds NaN.
    """
    out: NDArrays = {}
    for name, value in model.items():
        increment = lr * np.asarray(step[name], dtype=np.float64)
        if value.dtype.kind in "iub" and np.isnan(increment).any():
            raise ValueError(f"step for integer array {name!r} holds NaN")
        if value.dtype.kind in "iu":
            out[name] = saturating_add(value, _rounded_increment(value, increment))
        elif value.dtype.kind == "b":
            updated = np.rint(np.clip(value.astype(np.float64) + increment, 0, 1))
            out[name] = np.asarray(updated.astype(value.dtype))
        else:
            with np.errstate(over="ignore"):
                updated = value.astype(np.float64) + increment
                out[name] = np.asarray(updated.astype(value.dtype))
    return out


def _rounded_increment(value: np.ndarray, increment: np.ndarray) -> np.ndarray:
    """The integral ``k`` with ``value + k == rint(value + increment)`` exactly.

    ``rint(increment)`` except at a tie (a fractional part of exactly 0.5),
    where the rounded sum must be even: for an odd ``value`` the other neighbour.
    """
    rounded = np.rint(increment)
    floor = np.floor(increment)
    with np.errstate(invalid="ignore"):  # inf - inf: not a tie, and not chosen
        tie = (increment - floor) == 0.5
        other = 2.0 * floor + 1.0 - rounded
    adjusted: np.ndarray = np.where(tie & ((value % 2) != 0), other, rounded)
    return adjusted


def saturating_add(value: np.ndarray, increment: np.ndarray) -> np.ndarray:
    """Exact ``value + increment`` for an integer array, saturated at its dtype.

    Parameters
    ----------
    value : np.ndarray
        An array of any signed or unsigned integer dtype.
    increment : np.ndarray
        Integral float64 values (e.g. from ``np.rint``), broadcastable to
        ``value``; ``±inf`` saturates.

    Returns
    -------
    np.ndarray
        An array of ``value``'s dtype and shape. Every result is exact: the
        dtype's extremes (``INT64_MAX``, ``UINT64_MAX``, ...) are reached
        exactly, never wrapped round.
    """
    info = np.iinfo(value.dtype)
    flat = value.reshape(-1)
    inc = np.broadcast_to(np.asarray(increment, np.float64), value.shape).reshape(-1)
    if np.isnan(inc).any():
        raise ValueError("increment holds NaN")
    as_float = flat.astype(np.float64)
    # Where both terms are small, float64 is exact and the dtype's bounds are
    # far enough away (or exact: every dtype narrower than 64 bits) to clip in it.
    fast = (np.abs(inc) <= _FLOAT_EXACT) & (np.abs(as_float) <= _FLOAT_EXACT)
    total = np.where(fast, as_float + inc, 0.0)
    out = np.clip(total, info.min, info.max).astype(value.dtype)
    for i in np.flatnonzero(~fast):
        out[i] = _saturate(int(flat[i]), float(inc[i]), info)
    return out.reshape(value.shape)


def _saturate(value: int, increment: float, info: np.iinfo) -> int:
    """``value + increment`` in Python's exact integers, clipped to ``info``."""
    if increment == np.inf:
        return int(info.max)
    if increment == -np.inf:
        return int(info.min)
    return min(max(value + int(increment), int(info.min)), int(info.max))

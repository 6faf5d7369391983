"""Non-trainable state (BatchNorm statistics, counters): which arrays, and their rule.

A model's running statistics are not weights: a client reports the *values* it
measured, not a step to take. Applying stale deltas to them as if they were
weights moves them outside anything a client measured; under FedBuff it drove
a BatchNorm model's smallest ``running_var`` from 1.0 to 0.09, then to -0.36
(NaN losses). The rules, by name:

- ``"average"`` (default): the weighted average of the values the clients
  reported, ``reported_i = base_i + delta_i`` where ``base_i`` is the array in
  the version node ``i`` trained on. Weights are effective examples * staleness
  weight, normalised to sum 1, so the result stays inside what the clients
  reported (a ``running_var`` reported positive stays positive), however stale;
- ``"delta"``: the old behaviour, state moves with the ordinary server step;
- ``"keep"``: the server keeps its own values (FedBN-style local statistics:
  each client keeps its own, the global model never learns them).

Pure helpers: nothing here touches strategy state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Final, Literal

import numpy as np

from ..arrays import NDArrays, apply_step

StateRule = Literal["average", "delta", "keep"]
STATE_RULES: Final[tuple[StateRule, ...]] = ("average", "delta", "keep")
DEFAULT_STATE_RULE: Final[StateRule] = "average"

STATE_SUFFIXES: Final = ("running_mean", "running_var", "num_batches_tracked")
"""Name endings of PyTorch's normalisation-layer buffers."""


def state_rule(name: str) -> StateRule:
    """Check a rule name from a run config (``"average"``, ``"delta"``, ``"keep"``)."""
    for rule in STATE_RULES:
        if name == rule:
            return rule
    raise ValueError(f"unknown state rule {name!r}; choose one of {STATE_RULES}")


def state_names(
    model: Mapping[str, np.ndarray], patterns: Iterable[str] = ()
) -> frozenset[str]:
    """The names of the model's non-trainable arrays.

    Parameters
    ----------
    model : Mapping[str, np.ndarray]
        The global model, e.g. a PyTorch ``state_dict`` as numpy arrays.
    patterns : Iterable[str]
        Further names, as shell-style patterns matched against the whole name
        (``fnmatch``; e.g. ``"*.ema_*"``, ``"encoder.step"``).

    Returns
    -------
    frozenset[str]
        Every array of an integer or boolean dtype, every array whose name ends
        in ``running_mean``, ``running_var`` or ``num_batches_tracked``, and
        every array matching a pattern.
    """
    globs = tuple(patterns)
    return frozenset(
        name
        for name, value in model.items()
        if value.dtype.kind in "biu"
        or name.endswith(STATE_SUFFIXES)
        or any(fnmatchcase(name, glob) for glob in globs)
    )


def normalised(weights: Sequence[float]) -> list[float]:
    """``weights`` divided by their sum.

    Raises
    ------
    ValueError
        If a weight is negative or not finite, or the sum is not finite and > 0.
    """
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    total = float(sum(weights))
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"weights must sum to a finite total > 0, got {total}")
    return [w / total for w in weights]


def average_reported(
    reported: Sequence[np.ndarray], weights: Sequence[float]
) -> np.ndarray:
    """The weighted average of reported values, in their dtype, inside their hull.

    Parameters
    ----------
    reported : Sequence[np.ndarray]
        One array per client, all of one shape and dtype.
    weights : Sequence[float]
        One weight per client, ``>= 0`` with a finite sum ``> 0`` (normalised
        here).

    Returns
    -------
    np.ndarray
        Element-wise ``sum_i p_i reported_i`` (``p`` the normalised weights),
        clipped to ``[min_i reported_i, max_i reported_i]`` so that rounding
        cannot leave the clients' range. Floats are averaged in float64 and
        cast back. Integers (counters such as ``num_batches_tracked``) are
        averaged and rounded half to even: like every other state, a counter
        becomes what the clients reported on average (the maximum would let
        one client's count stand for all). Booleans: the weighted majority
        (``True`` above one half).
    """
    if not reported:
        raise ValueError("cannot average zero reports")
    if len(reported) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(reported)} reports")
    shares = normalised(weights)
    stacked = np.stack(reported)
    mean = np.zeros(stacked.shape[1:], dtype=np.float64)
    for value, share in zip(stacked, shares, strict=True):
        mean += share * value.astype(np.float64)
    dtype = stacked.dtype
    if dtype.kind == "f":
        low = stacked.min(axis=0).astype(np.float64)
        high = stacked.max(axis=0).astype(np.float64)
        return np.asarray(np.clip(mean, low, high).astype(dtype))
    if dtype.kind == "b":
        return np.asarray(mean > 0.5)
    # ints: round in float64, then clip to the reports in the integer domain
    zero = np.zeros(stacked.shape[1:], dtype=dtype)
    rounded = apply_step({"x": zero}, {"x": mean}, 1.0)["x"]
    return np.asarray(np.clip(rounded, stacked.min(axis=0), stacked.max(axis=0)))


def aggregate_state(
    current: Mapping[str, np.ndarray],
    names: Collection[str],
    bases: Sequence[Mapping[str, np.ndarray]],
    deltas: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    rule: StateRule = DEFAULT_STATE_RULE,
) -> NDArrays:
    """The new values of the state arrays ``names`` under ``rule``.

    Parameters
    ----------
    current : Mapping[str, np.ndarray]
        The global model before this version (gives ``"keep"`` its values).
    names : Collection[str]
        The state arrays (:func:`state_names`), all in ``current``.
    bases : Sequence[Mapping[str, np.ndarray]]
        For each update, the global model of the version it was trained on.
    deltas : Sequence[Mapping[str, np.ndarray]]
        For each update, its delta (:attr:`ParsedUpdate.delta`).
    weights : Sequence[float]
        For each update, its :attr:`~.block.BufferedUpdate.average_weight`.
    rule : {"average", "delta", "keep"}
        See the module docstring.

    Returns
    -------
    NDArrays
        ``name -> value`` in ``current``'s dtype and shape, to put over the
        server step's result (``new.update(...)``): for ``"average"`` the
        weighted average of ``base_i + delta_i``, for ``"keep"`` a copy of
        ``current``; for ``"delta"`` nothing (empty), as the step already
        moved the state the old way.
    """
    rule = state_rule(rule)
    if not len(bases) == len(deltas) == len(weights):
        raise ValueError("bases, deltas and weights differ in length")
    if rule == "delta":
        return {}
    ordered = [name for name in current if name in names]  # the model's order
    if rule == "keep":
        return {name: current[name].copy() for name in ordered}
    out: NDArrays = {}
    for name in ordered:
        reported = [
            reported_value(base[name], delta[name])
            for base, delta in zip(bases, deltas, strict=True)
        ]
        out[name] = average_reported(reported, weights)
    return out


def reported_value(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """What a client reported, ``base + delta``, in ``base``'s dtype and shape.

    Integers are added exactly and saturate at the dtype's range.
    """
    return apply_step({"x": base}, {"x": delta}, 1.0)["x"]

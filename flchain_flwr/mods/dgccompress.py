"""DGC's maths: a node's :class:`DGCState` and the pure :func:`compress`.

As in PyTorch's PowerSGD hook, the state sits beside the function that moves
it on: :func:`compress` takes an update and a state and returns what is sent
(:class:`Compressed`) and the next state, modifying neither. The state is kept
in ``Context.state`` (:meth:`DGCState.load`, :meth:`DGCState.save`), so it
survives across messages in simulation and in deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Final

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore import log

from ..arrays import NDArrays
from ..compression.quantize import QUANTIZED, dequantize, quantize
from ..compression.sparse import encode, payload_size
from .dgcconfig import DGCConfig

STATE_RESIDUAL: Final = "flchain.dgc.residual"
STATE_MOMENTUM: Final = "flchain.dgc.momentum"
STATE_INFO: Final = "flchain.dgc"

_FLOAT16_MAX: Final = float(np.finfo(np.float16).max)


@dataclass
class DGCState:
    """A node's DGC state: momentum ``u``, residual ``v``, rounds compressed."""

    momentum: NDArrays = field(default_factory=dict)
    residual: NDArrays = field(default_factory=dict)
    rounds: int = 0

    @classmethod
    def load(cls, state: RecordDict) -> DGCState:
        """Read the state a previous message left in ``Context.state``."""
        info = state.get(STATE_INFO)
        if not isinstance(info, ConfigRecord):
            return cls()
        residual = state.get(STATE_RESIDUAL)
        momentum = state.get(STATE_MOMENTUM)
        return cls(
            momentum=_ndarrays(momentum) if isinstance(momentum, ArrayRecord) else {},
            residual=_ndarrays(residual) if isinstance(residual, ArrayRecord) else {},
            rounds=int(info.get("rounds", 0)),  # type: ignore[arg-type]
        )

    def save(self, state: RecordDict) -> None:
        """Write this state into ``Context.state``."""
        state[STATE_RESIDUAL] = ArrayRecord(
            {k: Array(v) for k, v in self.residual.items()}
        )
        state[STATE_MOMENTUM] = ArrayRecord(
            {k: Array(v) for k, v in self.momentum.items()}
        )
        state[STATE_INFO] = ConfigRecord({"rounds": self.rounds})

    def matches(self, delta: Mapping[str, np.ndarray]) -> bool:
        """Whether the stored tensors fit this update (else start afresh)."""
        return all(
            k in store and store[k].shape == v.shape
            for store in (self.residual, self.momentum)
            if store
            for k, v in delta.items()
        )


def _ndarrays(record: ArrayRecord) -> NDArrays:
    return {k: v.numpy() for k, v in record.items()}


@dataclass(frozen=True)
class Compressed:
    """What :func:`compress` sends, and how much of it."""

    arrays: dict[str, Array]  # in the order of the update's tensors
    sent_entries: int
    total_entries: int

    @property
    def density(self) -> float:
        """Fraction of all entries that were sent."""
        return self.sent_entries / self.total_entries if self.total_entries else 0.0


def _select(v: np.ndarray, density: float, cfg: DGCConfig, seed: int) -> np.ndarray:
    """Boolean mask of the entries to send: the top ``density`` fraction of ``|v|``."""
    flat = np.abs(v).reshape(-1)
    k = max(1, math.ceil(density * flat.size))
    if k >= flat.size:
        return np.ones(v.shape, dtype=bool)
    if flat.size > cfg.sample_above:
        rng = np.random.default_rng(seed)
        sample = flat[rng.integers(0, flat.size, size=max(1000, flat.size // 100))]
        threshold = np.quantile(sample, 1.0 - density)
        candidates = np.flatnonzero(flat >= threshold)
        if len(candidates) >= k:  # DGC's hierarchical selection: top-k of those
            top = np.argpartition(flat[candidates], len(candidates) - k)
            mask = np.zeros(flat.size, dtype=bool)
            mask[candidates[top[len(candidates) - k :]]] = True
            return mask.reshape(v.shape)
    chosen = np.argpartition(flat, flat.size - k)[flat.size - k :]
    mask = np.zeros(flat.size, dtype=bool)
    mask[chosen] = True
    return mask.reshape(v.shape)


def _masks(
    accumulated: NDArrays, density: float, cfg: DGCConfig, seed: int
) -> dict[str, np.ndarray]:
    """Per tensor, the boolean mask of the entries to send."""
    masks = {
        name: np.ones(v.shape, dtype=bool)
        for name, v in accumulated.items()
        if v.size < cfg.min_sparse_size
    }
    large = [name for name in accumulated if name not in masks]
    if cfg.selection == "tensor" or len(large) < 2:
        for index, name in enumerate(large):
            masks[name] = _select(accumulated[name], density, cfg, seed + index)
        return masks
    flat = np.concatenate([np.abs(accumulated[name]).reshape(-1) for name in large])
    chosen = _select(flat, density, cfg, seed)
    start = 0
    for name in large:
        size = accumulated[name].size
        masks[name] = chosen[start : start + size].reshape(accumulated[name].shape)
        start += size
    return masks


def _clip(update: NDArrays, clip_norm: float) -> NDArrays:
    """``update`` scaled down to L2 norm ``clip_norm`` if it is larger."""
    norm = math.sqrt(
        sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values())
    )
    if norm > clip_norm:
        return {
            k: np.asarray(v * v.dtype.type(clip_norm / norm)) for k, v in update.items()
        }
    return update


def _encode_tensor(
    v: np.ndarray, mask: np.ndarray, dtype: np.dtype, value_dtype: str
) -> tuple[Array, np.ndarray, np.ndarray]:
    """One tensor's entries under ``mask``, in the smaller of sparse and dense.

    Returns the Array sent (in ``dtype``), the mask of the entries it sends, and
    the values the server decodes from it (in ``v``'s dtype, zero elsewhere).
    """
    flat_idx = np.flatnonzero(mask)
    picked = v.reshape(-1)[flat_idx]
    codes, scale = None, None
    if value_dtype in QUANTIZED:  # entries whose code is 0 stay in v
        kept, codes, scale = quantize(picked, value_dtype)
        flat_idx = flat_idx[kept]
    elif value_dtype == "float16" and np.any(np.abs(picked) > _FLOAT16_MAX):
        value_dtype = "float32"  # float16 would turn these into inf
    sparse_bytes = payload_size(v.size, len(flat_idx), value_dtype)
    if sparse_bytes >= v.size * dtype.itemsize:  # dense is smaller
        dense = v.astype(dtype)
        return Array(dense), np.ones(v.shape, dtype=bool), dense.astype(v.dtype)
    sent_mask = np.zeros(v.shape, dtype=bool)
    sent_mask.reshape(-1)[flat_idx] = True
    values = (
        dequantize(codes, scale or 0.0)
        if codes is not None
        else picked.astype(value_dtype)
    )
    array = encode(
        flat_idx,
        codes if codes is not None else values,
        shape=tuple(v.shape),
        dtype=str(dtype),
        value_dtype=value_dtype,
        scale=scale,
    )
    sent_values = np.zeros_like(v)
    # what the server decodes: the values in the tensor's own dtype
    sent_values.reshape(-1)[flat_idx] = values.astype(dtype).astype(v.dtype)
    return array, sent_mask, sent_values


# pylint: disable=too-many-locals
def compress(
    delta: Mapping[str, np.ndarray], state: DGCState, cfg: DGCConfig
) -> tuple[Compressed, DGCState]:
    """One round of DGC: returns what to send and the node's next state.

    Pure: ``delta`` and ``state`` are not modified. A float tensor whose
    accumulated update holds NaN or Inf (a broken local step) is sent dense as
    it is, so the server rejects the update with its reason, and its residual
    and momentum start again from zero: a residual that stayed NaN would
    otherwise stop that tensor's updates for good (quantized codes drop NaN).
    Every tensor keeps its shape, 0-d ones included (a BatchNorm counter,
    CLIP's ``logit_scale``): NumPy arithmetic on 0-d arrays gives scalars,
    which Flower's ``Array`` refuses, so such results go through ``np.asarray``.
    """
    dtypes = {k: np.asarray(v).dtype for k, v in delta.items()}
    floats = [k for k, dt in dtypes.items() if dt.kind == "f"]
    # float64 tensors keep float64 state, so the residual stays exact for them too
    update = {
        k: np.asarray(delta[k], dtype=np.result_type(dtypes[k], np.float32))
        for k in floats
    }
    if cfg.clip_norm is not None:
        update = _clip(update, cfg.clip_norm)
    if not state.matches(update):
        state = DGCState(rounds=state.rounds)
    density = cfg.density_at(state.rounds)
    momentum: NDArrays = {}
    residual: NDArrays = {}
    arrays: dict[str, Array] = {}
    sent = total = 0
    for name, dt in dtypes.items():  # integer and bool tensors: dense int64 deltas
        if dt.kind != "f":
            # np.ascontiguousarray would send a 0-d tensor (BatchNorm's
            # num_batches_tracked) with shape (1,), which the server refuses
            arrays[name] = Array(np.asarray(delta[name], dtype=np.int64, order="C"))
            sent += int(np.asarray(delta[name]).size)
            total += int(np.asarray(delta[name]).size)
    corrected: NDArrays = {}  # u: the update after momentum correction
    accumulated: NDArrays = {}  # v: what is sent from
    for name, d in update.items():
        u: np.ndarray = d
        if cfg.momentum:
            m = d.dtype.type(cfg.momentum)
            gain = d.dtype.type(1.0 - cfg.momentum if cfg.unit_gain else 1.0)
            u = np.asarray(m * state.momentum.get(name, np.zeros_like(d)) + gain * d)
        corrected[name] = u
        accumulated[name] = (
            np.asarray(state.residual.get(name, np.zeros_like(d)) + u)
            if cfg.accumulate
            else u.copy()
        )
    broken = [k for k, v in accumulated.items() if not np.isfinite(v).all()]
    if broken:
        log(
            WARNING,
            "dgc: %s not finite: sent dense for the server to reject; "
            "residual and momentum reset",
            ", ".join(repr(k) for k in broken),
        )
    finite = {k: v for k, v in accumulated.items() if k not in broken}
    masks = _masks(finite, density, cfg, seed=state.rounds * 7919)
    for name, d in update.items():
        u, v = corrected[name], accumulated[name]
        if name in broken:
            arrays[name] = Array(v.astype(dtypes[name]))
            sent, total = sent + d.size, total + d.size
            if cfg.accumulate:
                residual[name] = np.zeros_like(v)
            if cfg.momentum:
                momentum[name] = np.zeros_like(u)
            continue
        arrays[name], mask, sent_values = _encode_tensor(
            v, masks[name], dtypes[name], cfg.value_dtype
        )
        sent += int(mask.sum())
        total += d.size
        if cfg.accumulate:
            residual[name] = np.asarray(v - sent_values)
        if cfg.momentum:
            momentum[name] = (
                np.where(mask, 0.0, u).astype(u.dtype) if cfg.masking else u
            )
    next_state = DGCState(momentum=momentum, residual=residual, rounds=state.rounds + 1)
    ordered = {name: arrays[name] for name in dtypes}
    return Compressed(ordered, sent, total), next_state


__all__ = [
    "STATE_INFO",
    "STATE_MOMENTUM",
    "STATE_RESIDUAL",
    "Compressed",
    "DGCState",
    "compress",
]

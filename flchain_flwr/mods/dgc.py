"""Deep Gradient Compression (Lin et al., ICLR 2018) as a Flower client mod.

Shaped like PyTorch's PowerSGD hook: :class:`DGCConfig` says what to do,
:class:`DGCState` is the per-node state (momentum ``u``, residual ``v``, rounds
seen), :func:`compress` is a pure function from an update and a state to what is
sent and the next state, and :func:`dgc_mod` wires it into a ClientApp::

    app = ClientApp(mods=[dgc_mod(DGCConfig(density=0.001))])

For each train reply the mod turns the returned weights into the update
``delta = trained - received``, then: clips it by norm (optional), applies
momentum correction (``u <- m u + (1 - m) delta; v <- v + u``), keeps the top
``density`` fraction of ``|v|`` per tensor (exact, or DGC's sampled threshold
with a second top-k for large tensors), zeroes ``u`` and ``v`` where it sent
(momentum factor masking), and keeps the rest of ``v`` as the residual for the
next round. Tensors smaller than ``min_sparse_size`` are sent in full. Each
tensor travels in the smaller of the sparse and the dense encoding. The density
follows a warm-up schedule over the node's first rounds. State lives in
``Context.state``, so it survives across messages in simulation and in
deployment. Evaluate and query messages, and replies that carry an error, pass
through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Final

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.supercore import log

from ..compression.quantize import QUANTIZED, dequantize, quantize
from ..compression.sparse import SPARSE_STYPE, VALUE_TYPES, encode, payload_size
from ..protocol import (
    MODEL_VERSION_KEY,
    SPARSE_REPLIES_KEY,
    TRAINED_ON_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
)

STATE_RESIDUAL: Final = "flchain.dgc.residual"
STATE_MOMENTUM: Final = "flchain.dgc.momentum"
STATE_INFO: Final = "flchain.dgc"
FORMAT_KEY: Final = "format"
DGC_WARMUP: Final = (0.25, 0.0625, 0.015, 0.004)
"""DGC's warm-up densities (25 %, 6.25 %, 1.5 %, 0.4 %), then the target density."""

_FLOAT16_MAX: Final = float(np.finfo(np.float16).max)

NDArrays = dict[str, np.ndarray]
ClientAppCallable = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, ClientAppCallable], Message]


@dataclass(frozen=True)
class DGCConfig:
    """What the DGC mod does.

    The defaults are the setting that kept accuracy best in
    ``benchmarks/compression.py`` (Fashion-MNIST CNN, 10 nodes, Dirichlet 0.5,
    FedBuff K = 5; ``results/compression.json``): 356x fewer bytes than dense
    float32 at 0.07 points below dense's accuracy, where DGC's own recipe
    (momentum correction, masking and warm-up) lost 6 points at that density.

    Parameters
    ----------
    density : float (default: 0.003)
        Fraction of the large tensors' entries sent per round after warm-up.
        0.3 % was the sparsest density within a point of dense (0.1 % lost 3).
    momentum : float (default: 0.0)
        Momentum correction factor ``m``; 0 turns it off. In DGC the momentum is
        the optimizer's, moved before sparsification. A federated client's delta
        already carries its local optimizer's momentum and the server applies the
        sent deltas as they are, so the default accumulates deltas (``m = 0``;
        m = 0.9 lost 10 points in the ablation); use ``m > 0`` when server
        momentum is moved to the clients (then run the server without it).
    unit_gain : bool (default: True)
        Momentum correction with dampening, ``u <- m u + (1 - m) delta``: the
        sent updates add up to the deltas' sum, as without momentum. DGC's form,
        ``u <- m u + delta`` (``False``), multiplies every step by ``1 / (1 - m)``
        (10x at m = 0.9): right for gradients scaled by a learning rate tuned for
        momentum SGD, but a delta is already a whole local training's step, and
        the server applies it at rate 1.
    accumulate : bool (default: True)
        Keep what is not sent as a residual for later rounds (off = plain top-k,
        2.2 points lower in the ablation).
    masking : bool (default: False)
        Momentum factor masking: zero ``u`` where entries were sent (only acts
        with ``momentum > 0``).
    clip_norm : float | None (default: None)
        Local clipping: scale the update down to this L2 norm if it is larger.
    warmup : tuple[float, ...] (default: ())
        Densities for the node's first rounds (never below ``density``);
        :data:`DGC_WARMUP` is DGC's 25 % -> 0.4 % schedule (3.8x the bytes in
        the ablation, for 1.2 points on one seed, within its noise).
    min_sparse_size : int (default: 1024)
        Tensors with fewer elements are sent dense.
    value_dtype : str (default: "float16")
        How sent values travel: ``float32``; ``float16`` (half the bytes, the
        rounding error stays in the residual; a tensor with values beyond
        float16's range sends float32); or scaled integers with one float32
        scale per tensor, their error kept in the residual too: ``int8``
        (``q * max|v| / 127``), ``int4`` (``q * max|v| / 7``, two per byte) or
        ``sign`` (Sparse Ternary Compression: one bit, ``+-mean|v|``).
    sample_above : int (default: 262144)
        Tensors with more elements select by DGC's sampled threshold (about 1 % of
        the entries, then an exact top-k among the candidates) instead of an
        exact top-k over the whole tensor.
    selection : str (default: "global")
        ``"global"``: the top ``density`` of all large tensors' entries together,
        so a tensor gets the share its magnitudes earn; ``"tensor"``: the top
        ``density`` of each large tensor (DGC's layer-wise selection; 1.8 points
        lower in the ablation).
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in the instruction and in the reply.
    """

    density: float = 0.003
    momentum: float = 0.0
    unit_gain: bool = True
    accumulate: bool = True
    masking: bool = False
    clip_norm: float | None = None
    warmup: tuple[float, ...] = ()
    min_sparse_size: int = 1024
    value_dtype: str = "float16"
    sample_above: int = 262_144
    selection: str = "global"
    arrayrecord_key: str = "arrays"

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.momentum and not self.accumulate:
            raise ValueError("momentum correction needs accumulate=True")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError("clip_norm must be > 0")
        if any(not 0.0 < w <= 1.0 for w in self.warmup):
            raise ValueError("warm-up densities must be in (0, 1]")
        if self.value_dtype not in VALUE_TYPES:
            raise ValueError(f"value_dtype must be one of {VALUE_TYPES}")
        if self.selection not in ("tensor", "global"):
            raise ValueError("selection must be 'tensor' or 'global'")
        if self.min_sparse_size < 1 or self.sample_above < 1:
            raise ValueError("min_sparse_size and sample_above must be >= 1")

    def density_at(self, round_index: int) -> float:
        """The density for the node's ``round_index``-th train reply (from 0)."""
        if round_index < len(self.warmup):
            return max(self.warmup[round_index], self.density)
        return self.density

    @classmethod
    def plain_topk(cls, density: float, **kwargs: Any) -> DGCConfig:
        """Top-k sparsification only: no residual, momentum, masking or warm-up."""
        return cls(
            density=density,
            momentum=0.0,
            accumulate=False,
            masking=False,
            warmup=(),
            **kwargs,
        )

    @classmethod
    def from_run_config(
        cls, cfg: Mapping[str, Any], prefix: str = "dgc-"
    ) -> DGCConfig | None:
        """Read ``dgc-*`` keys of a run config; ``None`` if ``dgc-density`` >= 1."""
        density = float(cfg.get(f"{prefix}density", 1.0))
        if density >= 1.0:
            return None
        kwargs: dict[str, Any] = {"density": density}
        if f"{prefix}momentum" in cfg:
            kwargs["momentum"] = float(cfg[f"{prefix}momentum"])
        if f"{prefix}clip-norm" in cfg and float(cfg[f"{prefix}clip-norm"]) > 0:
            kwargs["clip_norm"] = float(cfg[f"{prefix}clip-norm"])
        if f"{prefix}warmup" in cfg:
            kwargs["warmup"] = DGC_WARMUP if bool(cfg[f"{prefix}warmup"]) else ()
        for key in ("accumulate", "masking", "unit-gain"):
            if f"{prefix}{key}" in cfg:
                kwargs[key.replace("-", "_")] = bool(cfg[f"{prefix}{key}"])
        for key in ("value-dtype", "selection"):
            if f"{prefix}{key}" in cfg:
                kwargs[key.replace("-", "_")] = str(cfg[f"{prefix}{key}"])
        return cls(**kwargs)


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
    """
    dtypes = {k: np.asarray(v).dtype for k, v in delta.items()}
    floats = [k for k, dt in dtypes.items() if dt.kind == "f"]
    # float64 tensors keep float64 state, so the residual stays exact for them too
    update = {
        k: np.asarray(delta[k], dtype=np.result_type(dtypes[k], np.float32))
        for k in floats
    }
    if cfg.clip_norm is not None:
        norm = math.sqrt(
            sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values())
        )
        if norm > cfg.clip_norm:
            update = {
                k: v * v.dtype.type(cfg.clip_norm / norm) for k, v in update.items()
            }
    if not state.matches(update):
        state = DGCState(rounds=state.rounds)
    density = cfg.density_at(state.rounds)
    momentum: NDArrays = {}
    residual: NDArrays = {}
    arrays: dict[str, Array] = {}
    sent = total = 0
    for name, dt in dtypes.items():  # integer and bool tensors: dense int64 deltas
        if dt.kind != "f":
            arrays[name] = Array(np.ascontiguousarray(delta[name], dtype=np.int64))
            sent += int(np.asarray(delta[name]).size)
            total += int(np.asarray(delta[name]).size)
    corrected: NDArrays = {}  # u: the update after momentum correction
    accumulated: NDArrays = {}  # v: what is sent from
    for name, d in update.items():
        u: np.ndarray = d
        if cfg.momentum:
            m = d.dtype.type(cfg.momentum)
            gain = d.dtype.type(1.0 - cfg.momentum if cfg.unit_gain else 1.0)
            u = m * state.momentum.get(name, np.zeros_like(d)) + gain * d
        corrected[name] = u
        accumulated[name] = (
            state.residual.get(name, np.zeros_like(d)) + u
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
        mask = masks[name]
        sent_values: np.ndarray
        flat_idx = np.flatnonzero(mask)
        picked = v.reshape(-1)[flat_idx]
        value_dtype = cfg.value_dtype
        codes, scale = None, None
        if value_dtype in QUANTIZED:  # entries whose code is 0 stay in v
            kept, codes, scale = quantize(picked, value_dtype)
            flat_idx = flat_idx[kept]
        elif value_dtype == "float16" and np.any(np.abs(picked) > _FLOAT16_MAX):
            value_dtype = "float32"  # float16 would turn these into inf
        sparse_bytes = payload_size(d.size, len(flat_idx), value_dtype)
        if sparse_bytes >= d.size * dtypes[name].itemsize:  # dense is smaller
            mask = np.ones(d.shape, dtype=bool)
            arrays[name] = Array(v.astype(dtypes[name]))
            sent_values = v.astype(dtypes[name]).astype(v.dtype)
        else:
            mask = np.zeros(d.shape, dtype=bool)
            mask.reshape(-1)[flat_idx] = True
            values = (
                dequantize(codes, scale or 0.0)
                if codes is not None
                else picked.astype(value_dtype)
            )
            arrays[name] = encode(
                flat_idx,
                codes if codes is not None else values,
                shape=tuple(v.shape),
                dtype=str(dtypes[name]),
                value_dtype=value_dtype,
                scale=scale,
            )
            sent_values = np.zeros_like(v)
            # what the server decodes: the values in the tensor's own dtype
            sent_values.reshape(-1)[flat_idx] = values.astype(dtypes[name]).astype(
                v.dtype
            )
        sent += int(mask.sum())
        total += d.size
        if cfg.accumulate:
            residual[name] = v - sent_values
        if cfg.momentum:
            momentum[name] = (
                np.where(mask, 0.0, u).astype(u.dtype) if cfg.masking else u
            )
    next_state = DGCState(momentum=momentum, residual=residual, rounds=state.rounds + 1)
    ordered = {name: arrays[name] for name in dtypes}
    return Compressed(ordered, sent, total), next_state


def server_decodes_sparse(message: Message) -> bool:
    """Whether ``message`` announces that its server decodes sparse replies."""
    return any(
        record.get(SPARSE_REPLIES_KEY) is True
        for record in message.content.config_records.values()
    )


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == MessageType.TRAIN


def _reply_delta(
    msg: Message, reply: Message, key: str
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The update in a train reply as a delta, or ``None`` and why not."""
    sent = msg.content.array_records.get(key)
    got = reply.content.array_records.get(key)
    if sent is None or got is None:
        return None, f"no ArrayRecord {key!r} in the instruction or the reply"
    if any(a.stype == SPARSE_STYPE for a in sent.values()):
        return None, "the instruction is a downlink delta: put downlink_mod() first"
    if list(sent.keys()) != list(got.keys()):
        return None, "the reply's arrays differ from the received ones"
    info = reply.content.config_records.get(UPDATE_INFO_KEY)
    is_delta = info is not None and info.get(UPDATE_KIND_KEY) == UPDATE_KIND_DELTA
    if any(a.stype == SPARSE_STYPE for a in got.values()):
        return None, "the reply is already compressed"
    delta = {}
    for name in sent:
        trained = got[name].numpy()
        if is_delta:
            delta[name] = trained
        elif trained.dtype.kind == "f":
            delta[name] = trained - sent[name].numpy()
        else:  # ints, uints, bools: a signed delta, no wrap-around
            delta[name] = trained.astype(np.int64) - sent[name].numpy().astype(np.int64)
    return delta, ""


def dgc_mod(config: DGCConfig | None = None) -> Mod:
    """A Flower client mod that compresses train replies with DGC.

    With ``config=None`` the mod reads ``dgc-*`` keys from the run config at each
    message (:meth:`DGCConfig.from_run_config`); ``dgc-density`` >= 1 (or absent)
    then means "send dense, no mod".

    The mod compresses only when the train message says the server decodes
    sparse replies (:data:`~flchain_flwr.protocol.SPARSE_REPLIES_KEY`, set by
    ``FedBuff`` and ``DecompressReplies``). Any other server (Flower's plain
    ``FedAvg``) gets the ordinary dense reply, and the node logs once why.
    """
    warned = False

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        nonlocal warned
        reply = call_next(msg, context)
        if not _is_train(msg) or reply.has_error():
            return reply
        cfg = (
            config
            if config is not None
            else DGCConfig.from_run_config(context.run_config)
        )
        if cfg is None:
            return reply
        if not server_decodes_sparse(msg):
            if not warned:
                warned = True
                log(
                    WARNING,
                    "dgc_mod: the server does not announce %r in its train "
                    "messages, so replies are sent dense (uncompressed); use "
                    "FedBuff, or wrap the strategy in DecompressReplies(...)",
                    SPARSE_REPLIES_KEY,
                )
            return reply
        delta, problem = _reply_delta(msg, reply, cfg.arrayrecord_key)
        if delta is None:  # not ours to compress: send it as it is, dense
            log(WARNING, "dgc_mod: reply sent uncompressed: %s", problem)
            return reply
        compressed, state = compress(delta, DGCState.load(context.state), cfg)
        state.save(context.state)
        content = RecordDict(
            {
                name: record
                for name, record in reply.content.items()
                if name not in (cfg.arrayrecord_key, UPDATE_INFO_KEY)
            }
        )
        content[cfg.arrayrecord_key] = ArrayRecord(compressed.arrays)
        info: dict[str, Any] = {
            UPDATE_KIND_KEY: UPDATE_KIND_DELTA,
            FORMAT_KEY: SPARSE_STYPE,
            "density": compressed.density,
        }
        sent_config = msg.content.config_records.get("config")
        if sent_config is not None and MODEL_VERSION_KEY in sent_config:
            info[TRAINED_ON_KEY] = sent_config[MODEL_VERSION_KEY]
        content[UPDATE_INFO_KEY] = ConfigRecord(info)
        reply.content = content
        return reply

    return mod


__all__ = [
    "DGC_WARMUP",
    "Compressed",
    "DGCConfig",
    "DGCState",
    "compress",
    "dgc_mod",
]

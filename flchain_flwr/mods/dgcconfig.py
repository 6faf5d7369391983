"""What the DGC mod does: :class:`DGCConfig` and DGC's warm-up schedule.

:func:`~.dgc.dgc_mod` takes a config (or reads one from the run config with
:meth:`DGCConfig.from_run_config`); :func:`~.dgccompress.compress` follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..compression.sparse import VALUE_TYPES
from ..configvalues import (
    ConfigValue,
    bad_value,
    flag_value,
    number_value,
    text_value,
)

DGC_WARMUP: Final = (0.25, 0.0625, 0.015, 0.004)
"""DGC's warm-up densities (25 %, 6.25 %, 1.5 %, 0.4 %), then the target density."""

SELECTIONS: Final = ("tensor", "global")
"""How the sent entries are chosen (:attr:`DGCConfig.selection`)."""


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
        if self.selection not in SELECTIONS:
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
        cls, cfg: Mapping[str, ConfigValue], prefix: str = "dgc-"
    ) -> DGCConfig | None:
        """Read ``dgc-*`` keys of a run config; ``None`` if ``dgc-density`` is
        absent or >= 1. Each key is read by its typed reader: a bad value is a
        ValueError naming the key (a string is no flag, NaN no number)."""
        if f"{prefix}density" not in cfg:
            return None
        density = number_value(cfg, f"{prefix}density", low=0.0, low_open=True)
        if density >= 1.0:
            return None
        kwargs: dict[str, Any] = {"density": density}
        if f"{prefix}momentum" in cfg:
            kwargs["momentum"] = number_value(
                cfg, f"{prefix}momentum", low=0.0, high=1.0, high_open=True
            )
        if f"{prefix}clip-norm" in cfg:  # 0: no clipping
            kwargs["clip_norm"] = (
                number_value(cfg, f"{prefix}clip-norm", low=0.0) or None
            )
        if f"{prefix}warmup" in cfg:
            kwargs["warmup"] = DGC_WARMUP if flag_value(cfg, f"{prefix}warmup") else ()
        for key in ("accumulate", "masking", "unit-gain"):
            if f"{prefix}{key}" in cfg:
                kwargs[key.replace("-", "_")] = flag_value(cfg, f"{prefix}{key}")
        for key, choices in (("value-dtype", VALUE_TYPES), ("selection", SELECTIONS)):
            if f"{prefix}{key}" in cfg:
                kwargs[key.replace("-", "_")] = _choice(cfg, f"{prefix}{key}", choices)
        return cls(**kwargs)


def _choice(cfg: Mapping[str, ConfigValue], key: str, choices: tuple[str, ...]) -> str:
    """``cfg[key]``, one of ``choices``; ValueError naming the key otherwise."""
    value = text_value(cfg, key)
    if value not in choices:
        raise bad_value(key, value, f"one of {', '.join(choices)}")
    return value


__all__ = ["DGC_WARMUP", "DGCConfig"]

"""Personalisation: each node evaluates a mix of its local and the global model.

When data and device class go together, the global model can serve a node's
own data badly (the stragglers benchmark's slow tier). The asynchronous FLchain
survey (§3.2.3) points to a per-node balance of local and global weights (Xu
et al., "SCEI", arXiv:2103.07050). This mod keeps, per node, the personalised
model of APFL (Deng, Kamani and Mahdavi, "Adaptive Personalized Federated
Learning", arXiv:2003.13461, 2020)::

    personal = alpha * local + (1 - alpha) * global

with a fixed ``alpha`` (APFL's fixed-alpha variant; its adaptive alpha, a
gradient step on alpha, needs the training loop and is not implemented). Unlike
APFL, ``local`` is not trained on the mixture's gradient: it is the model the
node's own last training produced (the weights its train reply carried), so the
mod needs nothing from the app but its ordinary replies. The global model is
what the server trains and aggregates; the mix is used only for the node's own
evaluation.

Shaped like :mod:`.dgc`: :class:`PersonalConfig` says what to do,
:class:`PersonalState` is the per-node state (the local model, kept in
``Context.state`` across messages), :func:`mix` and :func:`personal_metrics` are
pure, and :func:`personal_mod` wires them into a ClientApp::

    app = ClientApp(mods=[downlink_mod(), dgc_mod(), personal_mod()])  # last

It must come after mods that rewrite train replies (DGC turns them into
deltas) and after the downlink mod (which rebuilds the full model it sees). On
an evaluate message it evaluates the global model (the app's own reply), then,
once the node has trained, the mix, and adds the mix's metrics to the reply
under ``personal-<name>`` (``personal-eval-acc`` beside ``eval-acc``). Before
the node has trained, the personal metrics are the global ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any, Final

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..arrays import NDArrays, to_arrayrecord, to_ndarrays
from ..configvalues import ConfigValue, number_value
from ..protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY

STATE_LOCAL: Final = "flchain.personal.local"
STATE_INFO: Final = "flchain.personal"
PREFIX: Final = "personal-"


@dataclass(frozen=True)
class PersonalConfig:
    """What the personalisation mod does.

    Parameters
    ----------
    alpha : float (default: 0.5)
        Weight of the local model in the mix, in [0, 1] (0: the global model).
    keep : tuple[str, ...] (default: ("num-examples",))
        Metrics that get no personal twin: the example count that weights the
        aggregation (both models are evaluated on the same examples).
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in messages and replies.
    """

    alpha: float = 0.5
    keep: tuple[str, ...] = ("num-examples",)
    arrayrecord_key: str = "arrays"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, ConfigValue]) -> PersonalConfig | None:
        """``personal-alpha`` of a run config, a number in [0, 1] (else a
        ValueError naming the key); ``None`` if absent or 0 (off)."""
        if "personal-alpha" not in cfg:
            return None
        alpha = number_value(cfg, "personal-alpha", low=0.0, high=1.0)
        return cls(alpha=alpha) if alpha > 0.0 else None


@dataclass
class PersonalState:
    """A node's local model (``None`` before it has trained) and its trainings."""

    local: NDArrays | None = None
    trainings: int = 0

    @classmethod
    def load(cls, state: RecordDict) -> PersonalState:
        """Read the state a previous message left in ``Context.state``."""
        info = state.get(STATE_INFO)
        local = state.get(STATE_LOCAL)
        if not isinstance(info, ConfigRecord) or not isinstance(local, ArrayRecord):
            return cls()
        return cls(to_ndarrays(local), int(info.get("trainings", 0)))  # type: ignore[arg-type]

    def save(self, state: RecordDict) -> None:
        """Write this state into ``Context.state``."""
        if self.local is None:
            return
        state[STATE_LOCAL] = to_arrayrecord(self.local)
        state[STATE_INFO] = ConfigRecord({"trainings": self.trainings})


def mix(global_model: NDArrays, local: NDArrays, alpha: float) -> NDArrays:
    """``alpha * local + (1 - alpha) * global`` per floating-point array, in
    float64, cast back to the global array's dtype.

    Other arrays (counters, masks: a mix of two counts means nothing) and
    arrays the local model lacks or holds in another shape are the global's.
    """
    out: NDArrays = {}
    for name, g in global_model.items():
        mine = local.get(name)
        if g.dtype.kind != "f" or mine is None or mine.shape != g.shape:
            out[name] = g.copy()
            continue
        mixed = alpha * mine.astype(np.float64) + (1.0 - alpha) * g.astype(np.float64)
        out[name] = np.asarray(mixed.astype(g.dtype))  # a 0-d mix is a scalar
    return out


def personal_metrics(
    global_metrics: Mapping[str, Any],
    mixed_metrics: Mapping[str, Any] | None,
    keep: tuple[str, ...],
) -> dict[str, Any]:
    """``global_metrics`` plus ``personal-<name>`` for each of them but the
    ``keep`` names (the example count both share): the mix's value, or the
    global's when ``mixed_metrics`` is ``None`` or lacks it."""
    out = dict(global_metrics)
    for name, value in global_metrics.items():
        if name.startswith(PREFIX) or name in keep:
            continue
        chosen = value
        if mixed_metrics is not None and name in mixed_metrics:
            chosen = mixed_metrics[name]
        out[PREFIX + name] = chosen
    return out


def _trained_weights(reply: Message, key: str) -> NDArrays | None:
    """The full weights a train reply carries, or ``None`` (error, delta)."""
    if reply.has_error() or key not in reply.content.array_records:
        return None
    info = reply.content.config_records.get(UPDATE_INFO_KEY)
    if info is not None and info.get(UPDATE_KIND_KEY) == UPDATE_KIND_DELTA:
        return None
    return to_ndarrays(reply.content.array_records[key])


def personal_mod(config: PersonalConfig | None = None) -> Mod:
    """A Flower client mod that reports each node's personalised metrics.

    With ``config=None`` it reads ``personal-alpha`` from the run config at each
    message (:meth:`PersonalConfig.from_run_config`; 0 or absent: off, every
    message passes through untouched).
    """
    warned = False

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        nonlocal warned
        cfg = config or PersonalConfig.from_run_config(context.run_config)
        if cfg is None:
            return call_next(msg, context)
        if msg.metadata.message_type == MessageType.TRAIN:
            reply = call_next(msg, context)
            trained = _trained_weights(reply, cfg.arrayrecord_key)
            if trained is None and not reply.has_error() and not warned:
                warned = True
                log(
                    WARNING,
                    "personal_mod: a train reply without full weights; place "
                    "the mod after mods that send deltas (dgc_mod)",
                )
            if trained is not None:
                state = PersonalState.load(context.state)
                PersonalState(trained, state.trainings + 1).save(context.state)
            return reply
        if msg.metadata.message_type != MessageType.EVALUATE:
            return call_next(msg, context)
        reply = call_next(msg, context)
        if reply.has_error() or len(reply.content.metric_records) != 1:
            return reply
        local = PersonalState.load(context.state).local
        mixed_metrics = None
        records = msg.content.array_records
        if local is not None and cfg.arrayrecord_key in records:
            received = to_ndarrays(records[cfg.arrayrecord_key])
            original = msg.content
            content = RecordDict(dict(original.items()))
            content[cfg.arrayrecord_key] = to_arrayrecord(
                mix(received, local, cfg.alpha)
            )
            msg.content = content  # the same message, the mix in its arrays
            try:
                mixed = call_next(msg, context)
            finally:
                msg.content = original
            if not mixed.has_error() and len(mixed.content.metric_records) == 1:
                mixed_metrics = dict(next(iter(mixed.content.metric_records.values())))
        name, metrics = next(iter(reply.content.metric_records.items()))
        merged = personal_metrics(dict(metrics), mixed_metrics, cfg.keep)
        reply.content[name] = MetricRecord(merged)
        return reply

    return mod


__all__ = [
    "PersonalConfig",
    "PersonalState",
    "mix",
    "personal_metrics",
    "personal_mod",
]

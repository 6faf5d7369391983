"""Malicious node profiles for simulated federations.

Update attacks run as a client mod, :func:`attack_mod`, which every node's
ClientApp carries and which only acts on nodes whose ``node_config`` names an
attack (``attack = "sign-flip"`` etc.); honest nodes are untouched. The mod
takes the honest reply (full weights), computes the honest update against the
model received, and sends ``received + poisoned update`` instead. Data
poisoning (label flipping) needs the app's cooperation: it calls
:func:`poisoned_labels` on its training labels.

Attacks (parameters from ``node_config``):

- ``sign-flip``: ``-attack-scale * delta`` (default scale 1);
- ``scaling``: ``attack-scale * delta`` (default 10; model replacement);
- ``gaussian-noise``: ``delta + N(0, attack-noise-std^2)`` (default std 0.1);
- ``label-flip``: trains on labels ``c -> num_classes - 1 - c``;
- ``alie``: "A Little Is Enough" (Baruch et al., NeurIPS 2019): every colluder
  sends ``mean - attack-z * std`` of the colluders' honest updates, per
  coordinate (default z from the paper's formula for the node counts given);
- ``ipm``: inner-product manipulation (Xie et al., UAI 2019): every colluder
  sends ``-attack-epsilon * mean`` of the colluders' honest updates (default
  epsilon 0.1);
- ``min-max`` / ``min-sum``: Shejwalkar & Houmansadr (NDSS 2021), see
  :mod:`.adaptive`; ``attack-perturbation`` ``"unit"``, ``"std"`` (default) or
  ``"sign"``;
- ``cosine-edge``: the defence-aware direction-test attacker of
  :func:`.adaptive.cosine_edge`, told the defence's ``attack-min-cosine``
  (default 0) and ``attack-max-norm-ratio`` (default 4: the median filter's;
  give the rule's own norm bound where it is smaller), aiming
  ``attack-margin`` (default 0.1) above the threshold at ``attack-norm-slack``
  (default 0.9) of the norm limit;
- ``inflation``: the cosine-edge update, claiming ``attack-claim`` examples
  (default 1e6) in every metric record's ``num-examples``.

ALIE, IPM, min-max, min-sum, cosine-edge and inflation work from the honest
updates the colluders computed themselves (never from honest nodes' updates): a
:class:`Collusion` shared by the malicious nodes' mods pools each colluder's
latest honest update (the first colluder to reply in a round sees the others'
from the round before). It
works where nodes share a process (the virtual-clock simulator); elsewhere each
colluder only knows its own update. The attacks' pure transforms are in
:mod:`.poisoning`.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..configvalues import integer_value, number_value
from ..protocol import SERVER_ROUND_KEY
from .adaptive import PERTURBATIONS, Perturbation, cosine_edge, min_max, min_sum
from .poisoning import (
    alie,
    alie_z,
    flip_labels,
    gaussian_noise,
    ipm,
    scaled,
    sign_flip,
)

ATTACK_KEY = "attack"
CLAIM_KEY = "num-examples"


class Attack(StrEnum):
    """The attacks :func:`attack_mod` and :func:`poisoned_labels` implement."""

    SIGN_FLIP = "sign-flip"
    SCALING = "scaling"
    GAUSSIAN_NOISE = "gaussian-noise"
    LABEL_FLIP = "label-flip"
    ALIE = "alie"
    IPM = "ipm"
    MIN_MAX = "min-max"
    MIN_SUM = "min-sum"
    COSINE_EDGE = "cosine-edge"
    INFLATION = "inflation"


class Collusion:
    """The colluders' shared pool: each one's latest honest update, per run.

    Thread-safe. A new run id clears what earlier runs left behind.
    """

    def __init__(self) -> None:
        self._run_id: int | None = None
        self._latest: dict[int, NDArrays] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles ClientApps (and so this mod) into its actors: a copy starts
        # empty, since colluders in other processes cannot share memory anyway.
        return {}

    def __setstate__(self, _: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def share(self, run_id: int, node_id: int, delta: NDArrays) -> list[NDArrays]:
        """Add ``node_id``'s honest update; return the pool, this one last."""
        with self._lock:
            if run_id != self._run_id:
                self._run_id, self._latest = run_id, {}
            self._latest[node_id] = delta
            return [d for n, d in self._latest.items() if n != node_id] + [delta]


def attack_of(context: Context) -> Attack | None:
    """The attack named in the node's config, or ``None`` for an honest node."""
    name = context.node_config.get(ATTACK_KEY)
    if not name:
        return None
    try:
        return Attack(str(name))
    except ValueError:
        raise ValueError(
            f"unknown attack {name!r}; choose one of {[a.value for a in Attack]}"
        ) from None


def poisoned_labels(context: Context, y: np.ndarray, num_classes: int) -> np.ndarray:
    """``y`` flipped when the node is a label-flipping attacker, else ``y``."""
    return flip_labels(y, num_classes) if attack_of(context) is Attack.LABEL_FLIP else y


def _param(context: Context, key: str, default: float) -> float:
    """Node config ``key``, a finite number (``default`` if absent)."""
    node = context.node_config
    return number_value(node, key, source="node config") if key in node else default


def _count(context: Context, key: str, default: int) -> int:
    """Node config ``key``, an integer >= 0 (``default`` if absent)."""
    node = context.node_config
    return (
        integer_value(node, key, minimum=0, source="node config")
        if key in node
        else default
    )


def attack_mod(
    collusion: Collusion | None = None, arrayrecord_key: str = "arrays"
) -> Mod:
    """A client mod that poisons train replies of nodes configured as attackers.

    Put it after any compression mod (``ClientApp(mods=[dgc_mod(),
    attack_mod()])``) so it sees the app's full weights.
    """
    pool = collusion or Collusion()

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        attack = attack_of(context)
        if (
            attack in (None, Attack.LABEL_FLIP)
            or msg.metadata.message_type != MessageType.TRAIN
            or reply.has_error()
        ):
            return reply
        sent = to_ndarrays(msg.content.array_records[arrayrecord_key])
        got = to_ndarrays(reply.content.array_records[arrayrecord_key])
        honest = {
            k: got[k].astype(np.float64) - sent[k].astype(np.float64) for k in sent
        }
        poisoned = _poison(attack, honest, msg, context, pool)
        weights = apply_step(sent, poisoned, 1.0)
        weights = {k: weights[k] if sent[k].dtype.kind == "f" else got[k] for k in sent}
        reply.content[arrayrecord_key] = to_arrayrecord(weights)
        if attack is Attack.INFLATION:
            inflate_claims(reply, _param(context, "attack-claim", 1e6))
        return reply

    return mod


def _poison(
    attack: Attack | None,
    delta: NDArrays,
    msg: Message,
    context: Context,
    pool: Collusion,
) -> NDArrays:
    match attack:
        case Attack.SIGN_FLIP:
            return sign_flip(delta, _param(context, "attack-scale", 1.0))
        case Attack.SCALING:
            return scaled(delta, _param(context, "attack-scale", 10.0))
        case Attack.GAUSSIAN_NOISE:
            seed = _count(context, "attack-seed", 0)
            rng = np.random.default_rng(
                [context.node_id & 0xFFFFFFFF, seed, _server_round(msg)]
            )
            return gaussian_noise(delta, _param(context, "attack-noise-std", 0.1), rng)
        case Attack.ALIE:
            shared = pool.share(context.run_id, context.node_id, delta)
            if len(shared) < 2:
                return delta
            n = _count(context, "num-partitions", 0)
            f = _count(context, "attack-colluders", 0)
            default_z = alie_z(n, f) if n and f else 1.0
            return alie(shared, _param(context, "attack-z", default_z))
        case Attack.IPM:
            shared = pool.share(context.run_id, context.node_id, delta)
            return ipm(shared, _param(context, "attack-epsilon", 0.1))
        case Attack.MIN_MAX | Attack.MIN_SUM:
            shared = pool.share(context.run_id, context.node_id, delta)
            if len(shared) < 2:
                return delta
            kind = _perturbation(context)
            return (min_max if attack is Attack.MIN_MAX else min_sum)(shared, kind)
        case Attack.COSINE_EDGE | Attack.INFLATION:
            shared = pool.share(context.run_id, context.node_id, delta)
            return cosine_edge(
                shared,
                min_cosine=_param(context, "attack-min-cosine", 0.0),
                margin=_param(context, "attack-margin", 0.1),
                max_norm_ratio=_param(context, "attack-max-norm-ratio", 4.0),
                norm_slack=_param(context, "attack-norm-slack", 0.9),
            )
        case _:
            return delta


def inflate_claims(reply: Message, claim: float) -> None:
    """Set ``num-examples`` to ``claim`` in every metric record of ``reply`` that
    has one (an int when ``claim`` is integral, as the app sends)."""
    value: int | float = int(claim) if float(claim).is_integer() else claim
    for record in reply.content.metric_records.values():
        if CLAIM_KEY in record:
            record[CLAIM_KEY] = value


def _perturbation(context: Context) -> Perturbation:
    name = str(context.node_config.get("attack-perturbation", "std"))
    for kind in PERTURBATIONS:
        if kind == name:
            return kind
    raise ValueError(f"unknown attack-perturbation {name!r}; choose {PERTURBATIONS}")


def _server_round(msg: Message) -> int:
    """The round a train message is for (0 if it does not say)."""
    for record in msg.content.config_records.values():
        value = record.get(SERVER_ROUND_KEY)
        if isinstance(value, int):
            return value
    return 0


def attacker_node_configs(
    num_nodes: int,
    fraction: float,
    attack: Attack | str | None,
    *,
    seed: int = 0,
    **params: Any,
) -> list[dict[str, Any]]:
    """Per-node ``node_config`` for a federation where ``fraction`` of the nodes
    run ``attack`` (chosen deterministically from ``seed``); ``None`` = all honest.

    Every node gets ``partition-id`` and ``num-partitions``; attackers also get
    ``attack``, ``attack-colluders`` (their number) and ``attack-*`` ``params``
    (underscores become dashes).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must be in [0, 1)")
    malicious: set[int] = set()
    name = None if attack is None else Attack(attack).value
    if name is not None:
        count = round(fraction * num_nodes)
        malicious = set(
            np.random.default_rng(seed).choice(num_nodes, count, replace=False).tolist()
        )
    configs: list[dict[str, Any]] = []
    for i in range(num_nodes):
        cfg: dict[str, Any] = {"partition-id": i, "num-partitions": num_nodes}
        if i in malicious:
            cfg[ATTACK_KEY] = name
            cfg["attack-colluders"] = len(malicious)
            for key, value in params.items():
                cfg[f"attack-{key.replace('_', '-')}"] = value
        configs.append(cfg)
    return configs

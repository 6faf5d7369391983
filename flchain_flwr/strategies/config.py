"""Build strategies from a Flower run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..configvalues import (
    ConfigValue,
    bad_value,
    flag_value,
    integer_value,
    number_value,
    parsed_value,
    seconds_or_none,
    text_value,
)
from ..ledger import Ledger
from ..ledger.checkpoint import new_chain_origin
from .adaptive import AdaptiveScheduling, ConfigAdjuster
from .anchor import anchorer_from_run_config
from .arguments import MaxStaleness
from .bafl import bafl_local_work
from .fairness import fairness_weighting
from .fedbuff import FedBuff
from .fedsa import fedsa_learning_rate
from .memory import UpdateMemory, memory_conflict, update_memory
from .nova import work_normalisation
from .scheduling import SchedulingPolicy, scheduling_policy
from .staleness import staleness_fn
from .state import state_rule
from .tuning import buffer_tuning
from .weighting import example_weighting


def fedbuff_from_run_config(
    cfg: Mapping[str, ConfigValue], **overrides: object
) -> FedBuff:
    """FedBuff configured by run-config keys; absent keys keep FedBuff's defaults.

    Keys (each maps to the :class:`FedBuff` argument of the same name):

    - ``buffer-size`` (int >= 1); ``max-wait`` (seconds, <= 0 or inf: none);
    - ``staleness`` (a name for :func:`~flchain_flwr.strategies.staleness_fn`);
      ``max-staleness`` (``"auto"`` or an int, < 0: none);
    - ``server-lr`` (> 0); ``server-momentum`` (in [0, 1)); ``seed`` (int);
    - ``example-weighting`` (a spec for
      :func:`~flchain_flwr.strategies.weighting.example_weighting`, e.g.
      ``"median:4"``, ``"claimed"``);
    - ``scheduling`` (``"random"`` or ``"shuffle"``);
    - straggler policies, each off when absent or ``""``: ``adaptive-lr``
      (``"fedsa[:<low>:<high>]"``, scales the run's ``lr`` per node),
      ``adaptive-work`` (``"bafl[:<low>:<high>]"``, scales ``local-steps`` if
      > 0, else ``local-epochs``, per node), ``fairness``
      (``"inverse[:<max_factor>]"``), ``work-normalisation``
      (``"fednova[:<max_factor>]"``: each update weighed by the inverse of the
      local work it was asked for, with ``adaptive-work``; the factor clipped
      to ``[1/max, max]`` before renormalising), ``update-memory``
      (``"mifa[:<max_age>]"``), ``buffer-tuning``
      (``"staleness:<target>[:<min_k>:<max_k>[:<slack>[:<smoothing>]]]"``);
    - ``state-rule`` (``"average"``, ``"delta"`` or ``"keep"``);
    - ``downlink`` (bool: sparse downlink deltas, with the client's
      ``downlink_mod``); ``downlink-from-initial`` (bool: first models as
      deltas from the initial model, which the client's mod builds);
      ``queued-dispatch`` (true, false or ``"auto"``:
      one more train message queued per training node; ``"auto"`` only over
      Flower's deployment grid); ``require-signed-replies`` (bool: reject
      train replies not signed by their trainers, see
      :func:`~flchain_flwr.mods.signreply.signreply_mod`);
    - ``fraction-train`` (in (0, 1]); ``fraction-evaluate`` (in [0, 1], 0: no
      federated evaluation); ``concurrency`` (int, <= 0: none, i.e. from
      ``fraction-train``);
    - ``evaluate-every`` (versions, <= 0: once per FedAvg round's worth of
      updates);
    - ``message-ttl`` (seconds, <= 0 or inf: ``start``'s timeout);
      ``membership-refresh`` (seconds > 0); ``ledger-path`` ("": no ledger);
      ``ledger-key`` (the ledger's signing key file, "": ``<ledger-path>.key``;
      keep it off the ledger's disk in deployment) and ``ledger-checkpoint``
      (where each block's signed checkpoint goes, "":
      ``<ledger-path>.checkpoint``); ``ledger-chain-id`` (a new ledger's chain
      id, "": a random one; an existing ledger must hold that chain);
      ``anchor-main``, ``anchor-spool`` or ``anchor-key``,
      ``anchor-witnesses``, ``anchor-every``, ``anchor-every-seconds``:
      anchoring in a main chain, or spooling anchor requests for its operator (see
      :func:`~flchain_flwr.strategies.anchor.anchorer_from_run_config`;
      witness SuperNodes, ``anchor-witness-nodes``, need the grid: pass
      ``anchor=anchorer_from_run_config(cfg, grid)``);
      ``ledger-durable`` (bool, default true: fsync every block and blob, so
      a power loss loses no committed block; false: only a killed process is
      survived, which is faster).

    ``overrides`` are passed to :class:`FedBuff` as they are, over the keys.

    Raises
    ------
    ValueError
        If a key holds a value of the wrong type or out of range; the message
        names the key.
    """
    kwargs: dict[str, object] = {}
    if "buffer-size" in cfg:
        kwargs["buffer_size"] = integer_value(cfg, "buffer-size", minimum=1)
    if "max-wait" in cfg:
        kwargs["max_wait"] = seconds_or_none(cfg, "max-wait")
    if "staleness" in cfg:
        kwargs["staleness_fn"] = parsed_value(cfg, "staleness", staleness_fn)
    if "max-staleness" in cfg:
        kwargs["max_staleness"] = _max_staleness(cfg)
    if "server-lr" in cfg:
        kwargs["server_lr"] = number_value(cfg, "server-lr", low=0.0, low_open=True)
    if "server-momentum" in cfg:
        kwargs["server_momentum"] = number_value(
            cfg, "server-momentum", low=0.0, high=1.0, high_open=True
        )
    if "seed" in cfg:
        kwargs["seed"] = integer_value(cfg, "seed")
    if "example-weighting" in cfg:
        kwargs["example_weighting"] = parsed_value(
            cfg, "example-weighting", example_weighting
        )
    if "scheduling" in cfg:
        kwargs["scheduling"] = parsed_value(cfg, "scheduling", scheduling_policy)
    adaptive = _straggler_scheduling(cfg, kwargs.get("scheduling"))
    if adaptive is not None:
        kwargs["scheduling"] = adaptive
    if "fairness" in cfg:
        kwargs["fairness"] = parsed_value(cfg, "fairness", fairness_weighting)
    if "work-normalisation" in cfg:
        kwargs["work_normalisation"] = parsed_value(
            cfg, "work-normalisation", work_normalisation
        )
    if "update-memory" in cfg:
        kwargs["update_memory"] = parsed_value(cfg, "update-memory", update_memory)
    if "buffer-tuning" in cfg:
        kwargs["buffer_tuning"] = parsed_value(cfg, "buffer-tuning", buffer_tuning)
    if "state-rule" in cfg:
        kwargs["state_rule"] = parsed_value(cfg, "state-rule", state_rule)
    if "downlink" in cfg:
        kwargs["downlink"] = flag_value(cfg, "downlink")
    if "downlink-from-initial" in cfg:
        kwargs["downlink_from_initial"] = flag_value(cfg, "downlink-from-initial")
    if "queued-dispatch" in cfg:
        queued = cfg["queued-dispatch"]
        if queued != "auto" and not isinstance(queued, bool):
            raise bad_value("queued-dispatch", queued, "true, false or 'auto'")
        kwargs["queued_dispatch"] = queued
    if "require-signed-replies" in cfg:
        kwargs["require_signed_replies"] = flag_value(cfg, "require-signed-replies")
    if "fraction-train" in cfg:
        kwargs["fraction_train"] = number_value(
            cfg, "fraction-train", low=0.0, high=1.0, low_open=True
        )
    if "fraction-evaluate" in cfg:
        kwargs["fraction_evaluate"] = number_value(
            cfg, "fraction-evaluate", low=0.0, high=1.0
        )
    if "concurrency" in cfg:
        concurrency = integer_value(cfg, "concurrency")
        kwargs["concurrency"] = concurrency if concurrency > 0 else None
    if "evaluate-every" in cfg:
        every = integer_value(cfg, "evaluate-every")
        kwargs["evaluate_every"] = every if every > 0 else None
    if "message-ttl" in cfg:
        kwargs["message_ttl"] = seconds_or_none(cfg, "message-ttl")
    if "membership-refresh" in cfg:
        kwargs["membership_refresh"] = number_value(
            cfg, "membership-refresh", low=0.0, low_open=True
        )
    if "ledger-path" in cfg:
        ledger_path = text_value(cfg, "ledger-path")
        durable = True
        if "ledger-durable" in cfg:
            if not isinstance(cfg["ledger-durable"], bool):
                raise bad_value("ledger-durable", cfg["ledger-durable"], "a boolean")
            durable = cfg["ledger-durable"]
        places = {
            k: text_value(cfg, k)
            for k in ("ledger-key", "ledger-checkpoint")
            if k in cfg
        }
        chain_id = ledger_chain_id(cfg)
        memory = kwargs.get("update_memory")
        conflict = memory_conflict(  # before a ledger file is made for nothing
            memory if isinstance(memory, UpdateMemory) else None,
            ledger=bool(ledger_path),
            committee=overrides.get("committee") is not None,
            fairness=kwargs.get("fairness") is not None,
        )
        if conflict is not None:
            raise ValueError(conflict)
        if ledger_path:
            kwargs["ledger"] = Ledger(
                ledger_path,
                durable=durable,
                key_path=places.get("ledger-key") or None,
                checkpoint_path=places.get("ledger-checkpoint") or None,
                chain_id=chain_id,
            )
    try:
        if str(cfg.get("anchor-main", "")) and "anchor" not in overrides:
            kwargs["anchor"] = anchorer_from_run_config(cfg)
        kwargs.update(overrides)
        return FedBuff(**kwargs)  # type: ignore[arg-type]
    except BaseException:  # the caller never gets the ledger opened above
        opened = kwargs.get("ledger")
        if isinstance(opened, Ledger) and opened is not overrides.get("ledger"):
            opened.close()
        raise


def ledger_chain_id(cfg: Mapping[str, ConfigValue]) -> str | None:
    """``ledger-chain-id``, checked (a string that can name a checkpoint
    origin); ``None`` when absent or ``""`` (a random one).

    Raises
    ------
    ValueError
        Naming the key, for another type or an id that cannot be an origin.
    """
    if "ledger-chain-id" not in cfg:
        return None
    return parsed_value(cfg, "ledger-chain-id", _origin_name) or None


def _origin_name(chain_id: str) -> str:
    if chain_id:
        new_chain_origin(chain_id)  # a ValueError for spaces, '+', 129 chars...
    return chain_id


@contextmanager
def closing_ledger(strategy: FedBuff) -> Iterator[FedBuff]:
    """``strategy``, whose ledger (one :func:`fedbuff_from_run_config` opened
    from ``ledger-path``) is closed when the block ends, also on error."""
    try:
        yield strategy
    finally:
        if isinstance(strategy.ledger, Ledger):
            strategy.ledger.close()


def _straggler_scheduling(
    cfg: Mapping[str, ConfigValue], base: object
) -> AdaptiveScheduling | None:
    """The ``adaptive-lr`` and ``adaptive-work`` policies over ``base``, if any."""
    adjusters: list[ConfigAdjuster] = []
    work_key = None
    if cfg.get("adaptive-lr", "") != "":
        base_lr = _needed(cfg, "adaptive-lr", "lr")
        lr = parsed_value(cfg, "adaptive-lr", lambda t: fedsa_learning_rate(t, base_lr))
        adjusters.extend([lr] if lr is not None else [])
    if cfg.get("adaptive-work", "") != "":
        steps = (
            integer_value(cfg, "local-steps", minimum=0) if "local-steps" in cfg else 0
        )
        work_key = "local-steps" if steps > 0 else "local-epochs"
        work = steps or int(_needed(cfg, "adaptive-work", "local-epochs"))
        local = parsed_value(
            cfg, "adaptive-work", lambda t: bafl_local_work(t, work, work_key)
        )
        adjusters.extend([local] if local is not None else [])
    if not adjusters:
        return None
    policy = base if isinstance(base, SchedulingPolicy) else None
    return AdaptiveScheduling(adjusters, base=policy, work_key=work_key)


def _needed(cfg: Mapping[str, ConfigValue], by: str, key: str) -> float:
    """``cfg[key]``, a number > 0 that the policy in ``cfg[by]`` scales."""
    if key not in cfg:
        raise ValueError(f"run config key {by!r} needs the key {key!r} (its base)")
    return number_value(cfg, key, low=0.0, low_open=True)


def _max_staleness(cfg: Mapping[str, ConfigValue]) -> MaxStaleness:
    """``"auto"``, or an int (< 0: no limit)."""
    value = cfg["max-staleness"]
    if value == "auto":
        return "auto"
    try:
        limit = integer_value(cfg, "max-staleness")
    except ValueError:
        expected = "'auto' or an integer (< 0: no limit)"
        raise bad_value("max-staleness", value, expected) from None
    return limit if limit >= 0 else None

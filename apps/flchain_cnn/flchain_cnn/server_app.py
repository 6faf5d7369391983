"""ServerApp: FedBuff in place of FedAvg; the rest is a standard Flower ServerApp."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flchain_cnn.settings import app_settings
from flchain_cnn.task import (
    evaluate,
    initial_arrays,
    load_test,
    load_trusted,
    new_model,
)
from flchain_cnn.verifiers import app_rule, app_verifier
from flchain_flwr.configvalues import (
    ConfigValue,
    flag_value,
    integer_value,
    number_value,
    seconds_or_none,
)
from flchain_flwr.ledger.keys import load_or_create_key
from flchain_flwr.mods import DGCConfig, PersonalConfig
from flchain_flwr.pov import (
    Committee,
    IQRFilter,
    MedianFilter,
    Prefilter,
)
from flchain_flwr.pov.discovery import declared_pool, discover_verifiers
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.simkeys import seeded_verifier_key
from flchain_flwr.strategies import (
    DecompressReplies,
    closing_ledger,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.anchor import anchorer_from_run_config
from flchain_flwr.strategies.config import ledger_chain_id

app = ServerApp()

FEDBUFF_ONLY = (
    "adaptive-lr",
    "adaptive-work",
    "fairness",
    "work-normalisation",
    "update-memory",
    "buffer-tuning",
    "downlink",
    "downlink-from-initial",
    "ledger-path",
    "anchor-main",
    "pov-verifiers",
    "pov-remote-verifiers",
    "server-momentum",
    "max-wait",
    "concurrency",
    "evaluate-every",
    "fraction-evaluate",
    "personal-alpha",  # acts on evaluate messages; the FedAvg path sends none
    "require-signed-replies",
)
"""Run-config keys, off by default, that only the FedBuff path reads: set
beside ``strategy = "fedavg"`` they would be ignored, so they are refused.
(FedBuff's keys with a default that is on, such as ``buffer-size`` or
``staleness``, are ignored by the FedAvg path; the DGC keys and the data keys
act on the nodes and work with either.)"""


def strategy_name(cfg: Mapping[str, ConfigValue]) -> str:
    """The run config's ``strategy`` ("fedbuff" or "fedavg"), checked.

    Raises ValueError for another name, and for ``"fedavg"`` beside any
    :data:`FEDBUFF_ONLY` key that is set (Flower's FedAvg would silently run
    without it: no straggler policy, downlink, ledger or committee).
    """
    name = cfg.get("strategy", "fedbuff")
    if name not in ("fedbuff", "fedavg"):
        raise ValueError(
            f"run config key 'strategy' is {name!r}: expected 'fedbuff' or 'fedavg'"
        )
    ignored = [k for k in FEDBUFF_ONLY if cfg.get(k) not in (None, "", 0, False)]
    if name == "fedavg" and ignored:
        raise ValueError(
            f"run config: strategy 'fedavg' (Flower's FedAvg) does not read "
            f"{', '.join(ignored)}; they are FedBuff's. Unset them, or use "
            "strategy = 'fedbuff'"
        )
    return str(name)


def check_client_mod_keys(cfg: Mapping[str, ConfigValue]) -> None:
    """Read the client mods' keys (``personal-alpha``, ``dgc-*``) as every
    node's mod will: a bad value is one ValueError naming its key here, at
    start, rather than a failure of every node's every message, which ends
    the run only when no usable reply has come for its timeout."""
    PersonalConfig.from_run_config(cfg)
    DGCConfig.from_run_config(cfg)


def central_evaluator(
    dataset: str,
    allow_download: bool = False,
    test_subset: int = 0,
    size: str = "default",
    reserved: int = 0,
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for ``dataset``: accuracy on the server's held-out test set
    (without the ``reserved`` trusted examples of PoV verifiers)."""
    x, y = load_test(dataset, allow_download, test_subset, reserved)

    def central_evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        net = new_model(dataset, 0, size)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(net, x, y)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    return central_evaluate


def pov_committee(cfg: Mapping[str, ConfigValue]) -> Committee | None:
    """The PoV committee the run config asks for (``pov-verifiers`` > 0), else None.

    Each verifier holds its own shard of ``pov-trusted-examples`` examples from
    the end of the test set; with ``pov-reference-epochs`` > 0 it also trains
    its reference update there (:func:`~flchain_cnn.verifiers.app_verifier`).
    With a ledger, verifier keys persist beside it (random at first, so the run
    can resume and nobody else holds them); otherwise they are derived from
    ``seed`` (:func:`~flchain_flwr.pov.simkeys.seeded_verifier_key`), so that
    the committee draws, and so the run, repeat for a seed.
    """
    settings = app_settings(cfg)
    if settings.verifiers <= 0:
        return None
    rules = committee_rules(cfg)  # checked before any data is loaded
    if settings.ledger_path:
        ledger_chain_id(cfg)  # checked before key files are written beside it
    shards = load_trusted(
        settings.dataset,
        settings.verifiers,
        settings.trusted_examples,
        settings.allow_download,
    )
    verifiers = []
    for index, (x, y) in enumerate(shards):
        if settings.ledger_path:
            key_dir = Path(settings.ledger_path + ".verifiers")
            key_dir.mkdir(parents=True, exist_ok=True)
            key = load_or_create_key(key_dir / f"verifier-{index}.key")
        else:
            key = seeded_verifier_key(settings.seed, index)
        verifiers.append(app_verifier(cfg, x, y, key, index))
    return Committee(verifiers, **rules)  # type: ignore[arg-type]


def committee_rules(cfg: Mapping[str, ConfigValue]) -> dict[str, object]:
    """The committee settings the ``pov-*`` keys ask for, local or remote alike
    (each key read by its typed reader: a ValueError names a bad one)."""
    cfg = {"pov-median-direction": True, **cfg}
    median_direction = flag_value(cfg, "pov-median-direction")
    prefilters: list[Prefilter] = []
    if flag_value(cfg, "pov-median-filter"):
        prefilters.append(MedianFilter(min_cosine=0.0 if median_direction else None))
    if flag_value(cfg, "pov-iqr"):
        prefilters.append(IQRFilter())
    rule = app_rule(cfg)
    return {
        "committee_size": integer_value(cfg, "pov-committee-size", minimum=0) or None,
        "threshold": rule.threshold,
        "prefilters": prefilters,
        "consensus_delay": number_value(cfg, "pov-consensus-delay", low=0.0),
        "trust_weighting": rule.trust_weighting,
        "outage_limit": seconds_or_none(cfg, "pov-outage-limit", low=0.0),
    }


def remote_committee(grid: Grid, cfg: Mapping[str, ConfigValue]) -> RemoteCommittee:
    """A PoV committee of ``pov-remote-verifiers`` verifier SuperNodes, found on
    ``grid`` (see :mod:`flchain_flwr.pov.discovery`), with the same rules as
    :func:`pov_committee`'s. Resuming a PoV ledger, exactly the pool its
    genesis declares must be found (in any order)."""
    settings = app_settings(cfg)
    rules = committee_rules(cfg)  # checked before waiting for any node
    timeouts = {
        key: number_value(cfg, key, low=0.0, low_open=True)
        for key in ("pov-discovery-timeout", "pov-remote-timeout")
    }
    nodes = discover_verifiers(
        grid,
        expected=settings.remote_verifiers,
        pool=declared_pool(settings.ledger_path) if settings.ledger_path else None,
        timeout=timeouts["pov-discovery-timeout"],
    )
    return RemoteCommittee(
        grid,
        nodes,
        timeout=timeouts["pov-remote-timeout"],
        **rules,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` global versions with FedBuff (or Flower's FedAvg)."""
    cfg = context.run_config
    strategy_kind = strategy_name(cfg)  # before any discovery on the grid
    settings = app_settings(cfg)  # so are the app's other keys
    check_client_mod_keys(cfg)  # and those the nodes' mods read
    committee = (
        remote_committee(grid, cfg)
        if settings.remote_verifiers > 0
        else pov_committee(cfg)
    )
    reserved = settings.shards * settings.trusted_examples if committee else 0
    evaluator = central_evaluator(
        settings.dataset,
        settings.allow_download,
        settings.test_subset,
        settings.model,
        reserved,
    )
    started = time.monotonic()
    timeline: list[list[float]] = []

    def timed_evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluator(version, arrays)
        seconds = time.monotonic() - started
        accuracy = cast(float, metrics["accuracy"])
        timeline.append([version, seconds, accuracy])
        print(f"version {version}: accuracy {accuracy:.4f} at {seconds:.1f}s")
        return metrics

    initial = initial_arrays(cfg)
    if strategy_kind == "fedavg":
        nodes = settings.min_nodes
        result = DecompressReplies(
            FedAvg(
                fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes
            )
        ).start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=settings.rounds,
            evaluate_fn=timed_evaluate,
        )
        history: dict[str, object] = {}
    else:
        # Witness SuperNodes (anchor-witness-nodes) are found on the grid here.
        strategy = fedbuff_from_run_config(
            cfg,
            min_available_nodes=settings.min_nodes,
            committee=committee,
            anchor=anchorer_from_run_config(cfg, grid),
        )
        with closing_ledger(strategy):  # the ledger-path it opened
            fedbuff_result = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=settings.rounds,
                evaluate_fn=timed_evaluate,
            )
        history = fedbuff_result.history_dict()
        result = fedbuff_result
    evaluations = result.evaluate_metrics_serverapp
    if evaluations:
        version = max(evaluations)
        accuracy = evaluations[version]["accuracy"]
        print(f"final accuracy: {accuracy:.4f} (version {version})")
    if settings.results_path:
        path = Path(settings.results_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        history["timeline"] = timeline
        history["strategy"] = strategy_kind
        path.write_text(json.dumps(history, indent=2))

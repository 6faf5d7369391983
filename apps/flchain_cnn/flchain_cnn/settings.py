"""The app's own run-config keys, read once and checked.

Every key goes through the typed readers of :mod:`flchain_flwr.configvalues`:
a bad value (a string where a flag or a number belongs, a fraction where a
count does, NaN) is one ValueError naming the key, before anything is built.
FedBuff's keys are read by :func:`~flchain_flwr.strategies.fedbuff_from_run_config`,
the PoV rule's by :func:`~flchain_cnn.verifiers.app_rule`, the client mods'
by their configs (:class:`~flchain_flwr.mods.DGCConfig`,
:class:`~flchain_flwr.mods.PersonalConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flchain_flwr.configvalues import (
    ConfigValue,
    flag_value,
    integer_value,
    number_value,
    text_value,
)

OPTIONAL: Mapping[str, ConfigValue] = {
    "model": "default",
    "tier-classes": "",
    "min-nodes": 1,
    "ledger-path": "",
    "pov-verifiers": 0,
    "pov-remote-verifiers": 0,
    "local-epochs": 0,
    "local-steps": 0,
}
"""The keys a run config may leave out, and what they then are."""

MAX_SEED = 2**63 - 1
"""The largest ``seed``: a TOML integer (int64) that ``torch.manual_seed`` and
NumPy's ``default_rng`` both take (neither takes a negative one as given)."""


@dataclass(frozen=True)
class AppSettings:
    """What the app's keys ask for (their meaning: the app's pyproject.toml)."""

    dataset: str
    model: str
    allow_download: bool
    seed: int
    train_subset: int
    test_subset: int
    dirichlet_alpha: float
    tier_classes: str
    local_epochs: int
    local_steps: int
    lr: float
    batch_size: int
    rounds: int
    min_nodes: int
    results_path: str
    ledger_path: str
    verifiers: int
    remote_verifiers: int
    trusted_examples: int
    """Examples per verifier's trusted shard (0 without a committee)."""

    @property
    def shards(self) -> int:
        """The trusted shards taken from the test set: one per remote verifier
        if there are any, else one per in-process verifier."""
        return self.remote_verifiers or self.verifiers


def app_settings(cfg: Mapping[str, ConfigValue]) -> AppSettings:
    """The app's settings from ``cfg``; ValueError naming the first bad key."""
    cfg = {**OPTIONAL, **cfg}
    verifiers = integer_value(cfg, "pov-verifiers", minimum=0)
    remote = integer_value(cfg, "pov-remote-verifiers", minimum=0)
    committee = verifiers > 0 or remote > 0
    return AppSettings(
        dataset=text_value(cfg, "dataset"),
        model=text_value(cfg, "model"),
        allow_download=flag_value(cfg, "allow-download"),
        seed=integer_value(cfg, "seed", minimum=0, maximum=MAX_SEED),
        train_subset=integer_value(cfg, "train-subset", minimum=0),
        test_subset=integer_value(cfg, "test-subset", minimum=0),
        dirichlet_alpha=number_value(cfg, "dirichlet-alpha", low=0.0, low_open=True),
        tier_classes=text_value(cfg, "tier-classes"),
        local_epochs=integer_value(cfg, "local-epochs", minimum=0),
        local_steps=integer_value(cfg, "local-steps", minimum=0),
        lr=number_value(cfg, "lr", low=0.0, low_open=True),
        batch_size=integer_value(cfg, "batch-size", minimum=1),
        rounds=integer_value(cfg, "num-server-rounds", minimum=1),
        min_nodes=integer_value(cfg, "min-nodes", minimum=1),
        results_path=text_value(cfg, "results-path"),
        ledger_path=text_value(cfg, "ledger-path"),
        verifiers=verifiers,
        remote_verifiers=remote,
        trusted_examples=(
            integer_value(cfg, "pov-trusted-examples", minimum=1) if committee else 0
        ),
    )

"""The app's and the client mods' run-config keys go through the typed readers
(:mod:`flchain_flwr.configvalues`): a bad value is one error naming its key."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flchain_flwr.configvalues import ConfigValue

ROOT = Path(__file__).resolve().parent.parent


def _app_config(**overrides: ConfigValue) -> dict[str, ConfigValue]:
    """The app's run config (its pyproject's defaults) with ``overrides``."""
    from flchain_flwr.sim import app_run_config

    cfg = app_run_config(ROOT / "apps" / "flchain_cnn")
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # a string where a boolean belongs read as true: the filter was on
        ("pov-median-filter", "false"),
        ("pov-iqr", "false"),
        ("pov-median-direction", "false"),
        ("pov-trust-weighting", "false"),
        # not a number: int()/float() raised without naming the key
        ("pov-committee-size", "three"),
        ("pov-tolerance", "five percent"),
        # a fraction where a count belongs was silently truncated
        ("pov-committee-size", 2.5),
        # NaN passed the committee's own `consensus_delay < 0` check
        ("pov-consensus-delay", float("nan")),
    ],
)
def test_a_bad_pov_run_config_value_is_one_error_naming_its_key(
    key: str, value: ConfigValue
) -> None:
    pytest.importorskip("torch")
    from flchain_cnn.server_app import committee_rules

    from flchain_flwr.pov import Committee, Verifier

    from .test_pov import key as verifier_key
    from .test_pov import toward_target, toy_score

    cfg = _app_config(**{key: value})
    pool = [
        Verifier(toy_score, verifier_key(i), reference_fn=toward_target)
        for i in range(4)
    ]
    with pytest.raises(ValueError) as raised:
        Committee(pool, **committee_rules(cfg))  # type: ignore[arg-type]
    assert key in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pov-verifiers", 1.5),
        ("pov-remote-verifiers", "two"),
        ("pov-trusted-examples", 0),
        ("lr", float("inf")),
        ("batch-size", 0),
        ("seed", 1.5),
        ("allow-download", "false"),
        ("dataset", 3),
        ("model", True),
        ("train-subset", "all"),
        ("test-subset", -1),
        ("dirichlet-alpha", float("nan")),
        ("tier-classes", 0),
        ("local-epochs", 2.5),
        ("num-server-rounds", "20"),
        ("min-nodes", 0),
        ("results-path", False),
        ("ledger-path", 1),
    ],
)
def test_every_app_key_is_read_by_the_typed_readers(
    key: str, value: ConfigValue
) -> None:
    from flchain_cnn.settings import app_settings

    with pytest.raises(ValueError) as raised:
        app_settings(_app_config(**{"pov-verifiers": 2, key: value}))
    assert f"run config key {key!r}" in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pov-metric", "median"),
        ("pov-tolerance", float("nan")),
        ("pov-reference-epochs", -1),
        ("pov-min-cosine", float("nan")),
        ("pov-max-norm-ratio", "2"),
        ("pov-remote-timeout", float("nan")),  # refused before any wait
        ("pov-discovery-timeout", -1.0),
    ],
)
def test_the_committees_keys_are_read_by_the_typed_readers(
    key: str, value: ConfigValue
) -> None:
    pytest.importorskip("torch")
    from flchain_cnn.server_app import remote_committee

    cfg = _app_config(**{"pov-remote-verifiers": 2, key: value})
    with pytest.raises(ValueError) as raised:
        remote_committee(None, cfg)  # type: ignore[arg-type]  # no grid needed
    assert f"run config key {key!r}" in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize("seed", [-1, 2**63, float(2**64)])
def test_a_seed_out_of_the_rngs_range_is_refused_naming_its_key(seed: int) -> None:
    """NumPy's ``default_rng`` refuses a negative seed and a TOML integer is
    an int64: the app's ``seed`` is in [0, 2**63 - 1], checked when read."""
    from flchain_cnn.settings import app_settings

    with pytest.raises(
        ValueError, match="run config key 'seed': expected an integer in"
    ):
        app_settings(_app_config(seed=seed))


def test_the_seeds_bounds_seed_torch_and_numpy() -> None:
    torch = pytest.importorskip("torch")
    import numpy as np
    from flchain_cnn.settings import MAX_SEED, app_settings

    for seed in (0, MAX_SEED):
        read = app_settings(_app_config(seed=seed)).seed
        torch.manual_seed(read)
        np.random.default_rng(read)


def _start_snippet() -> str:
    """``START_SNIPPET`` of benchmarks/deployment.py, read without importing it."""
    source = (ROOT / "benchmarks" / "deployment.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "START_SNIPPET" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError("benchmarks/deployment.py has no START_SNIPPET")


def test_the_deployment_benchmarks_start_cost_snippet_still_loads_a_partition(
    tmp_path: Path,
) -> None:
    """``start_cost`` runs ``START_SNIPPET`` in a fresh process: its context
    must carry the app's whole run config, which ``app_settings`` reads (a
    hand-made subset stopped with ``KeyError: 'test-subset'``)."""
    pytest.importorskip("torch")
    done = subprocess.run(
        [sys.executable, "-c", _start_snippet(), str(ROOT / "apps" / "flchain_cnn")],
        env={**os.environ, "FLCHAIN_DATA_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-600:]
    assert all(float(s) >= 0 for s in done.stdout.split()[-2:])


def test_the_apps_own_defaults_read_cleanly() -> None:
    pytest.importorskip("torch")
    from flchain_cnn.server_app import committee_rules
    from flchain_cnn.settings import app_settings
    from flchain_cnn.verifiers import app_rule

    cfg = _app_config(**{"pov-verifiers": 3})
    settings = app_settings(cfg)
    assert settings.verifiers == 3 and settings.rounds == 20
    rules = committee_rules(cfg)
    assert rules["committee_size"] is None  # 0: all verifiers
    assert rules["consensus_delay"] == 0.0
    assert [type(f).__name__ for f in rules["prefilters"]] == ["MedianFilter"]  # type: ignore[attr-defined]
    assert app_rule(cfg).trust_weighting


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dgc-masking", "false"),  # a string read as true: masking on
        ("dgc-accumulate", "false"),
        ("dgc-warmup", "false"),
        ("dgc-momentum", "none"),  # float() error without the key's name
        ("dgc-clip-norm", float("nan")),  # NaN silently turned clipping off
        ("personal-alpha", "half"),
        ("personal-alpha", float("nan")),  # NaN silently turned the mod off
    ],
)
def test_a_bad_client_mod_run_config_value_is_one_error_naming_its_key(
    key: str, value: ConfigValue
) -> None:
    """The client mods read their run-config keys with bare ``float()`` and
    ``bool()`` (on every node, for every message)."""
    from flchain_flwr.mods import PersonalConfig
    from flchain_flwr.mods.dgcconfig import DGCConfig

    cfg = _app_config(**{"dgc-density": 0.01, key: value})
    with pytest.raises(ValueError) as raised:
        DGCConfig.from_run_config(cfg)
        PersonalConfig.from_run_config(cfg)
    assert key in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dgc-density", "0.01"),
        ("dgc-density", float("nan")),
        ("dgc-momentum", 1.0),
        ("dgc-unit-gain", 1),
        ("dgc-value-dtype", 16),
        ("dgc-clip-norm", -1.0),
        ("personal-alpha", 1.5),
    ],
)
def test_client_mod_keys_are_checked_against_their_range(
    key: str, value: ConfigValue
) -> None:
    from flchain_flwr.mods import PersonalConfig
    from flchain_flwr.mods.dgcconfig import DGCConfig

    cfg = _app_config(**{"dgc-density": 0.01, key: value})
    with pytest.raises(ValueError, match=f"run config key {key!r}"):
        DGCConfig.from_run_config(cfg)
        PersonalConfig.from_run_config(cfg)


def test_the_apps_mod_defaults_read_as_before() -> None:
    from flchain_flwr.mods import PersonalConfig
    from flchain_flwr.mods.dgcconfig import DGCConfig

    cfg = _app_config()
    assert DGCConfig.from_run_config(cfg) is None  # dgc-density = 1.0: off
    assert PersonalConfig.from_run_config(cfg) is None  # personal-alpha = 0.0
    assert DGCConfig.from_run_config(_app_config(**{"dgc-density": 0.01})) == (
        DGCConfig(density=0.01)
    )
    assert PersonalConfig.from_run_config({"personal-alpha": 1}) == PersonalConfig(1.0)
    assert DGCConfig.from_run_config({}) is None
    assert PersonalConfig.from_run_config({}) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("attack-scale", "10"),  # was silently the default scale
        ("attack-scale", float("nan")),
    ],
)
def test_an_attack_parameter_of_the_wrong_type_is_refused(
    key: str, value: ConfigValue
) -> None:
    from flwr.app import Context, RecordDict

    from flchain_flwr.sim.attacks import _param

    context = Context(
        run_id=1,
        node_id=1,
        node_config={"attack": "scaling", key: value},
        state=RecordDict(),
        run_config={},
    )
    with pytest.raises(ValueError, match=f"node config key {key!r}"):
        _param(context, key, 1.0)


def test_the_client_mods_read_their_keys_without_loading_the_strategies() -> None:
    code = (
        "import flchain_flwr.mods, sys\n"
        "loaded = [m for m in sys.modules if m.startswith("
        "('flchain_flwr.strategies', 'flchain_flwr.pov', 'torch'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""Review of the straggler policies (issue #14): confirmed defects, each a
strict xfail until fixed (the test states the expected behaviour)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flchain_flwr.configvalues import ConfigValue
from flchain_flwr.ledger import Ledger
from flchain_flwr.strategies import (
    FedBuff,
    FedSALearningRate,
    InverseParticipation,
    StalenessTarget,
    UpdateMemory,
)
from flchain_flwr.strategies.bafl import AdaptiveLocalWork
from flchain_flwr.strategies.config import fedbuff_from_run_config
from flchain_flwr.strategies.history import NodeHistory
from flchain_flwr.strategies.nova import WorkNormalisation
from flchain_flwr.strategies.tuning import BufferTuner

from .test_stragglers import run_toy

TOY: dict[str, ConfigValue] = {
    "lr": 0.1,
    "local-steps": 4,
    "buffer-size": 2,
    "fraction-evaluate": 0.0,
    "max-staleness": -1,
    "seed": 0,
}


def timed_history() -> NodeHistory:
    """Two nodes, each timed once (1 s and 2 s per unit of work)."""
    history = NodeHistory()
    for node, seconds in ((1, 1.0), (2, 2.0)):
        history.dispatched(node, 0.0, 1.0)
        history.updated(node, seconds)
    return history


# 1 ---------------------------------------------------------------- BAFL high
@pytest.mark.xfail(
    strict=True,
    raises=OverflowError,
    reason="bafl.local_work: floor(high * base) overflows for a finite high "
    "such as 1e308 that check_bounds accepts; the run crashes at dispatch",
)
def test_a_huge_finite_bafl_bound_does_not_crash_the_dispatch() -> None:
    policy = AdaptiveLocalWork(3, high=1e308)  # accepted: high < inf
    work = policy.adjust(1, timed_history(), {})["local-steps"]
    assert work >= 1


@pytest.mark.xfail(
    strict=True,
    raises=OverflowError,
    reason="'adaptive-work = bafl:0.25:1e308' is accepted by the run config, "
    "then the server dies with OverflowError in bafl.py once a node is timed",
)
def test_a_huge_bafl_bound_in_the_run_config_is_refused_or_runs() -> None:
    try:
        strategy = fedbuff_from_run_config(
            {**TOY, "adaptive-work": "bafl:0.25:1e308"}, min_available_nodes=6
        )
    except ValueError as exc:  # the fix may refuse it, naming the key
        assert "adaptive-work" in str(exc)
        return
    run_toy(strategy, versions=6)


# 2 --------------------------------------------------------- tuning target
@pytest.mark.xfail(
    strict=True,
    raises=OverflowError,
    reason="tuning.next_buffer_size: round(k * s / target) is round(inf) for "
    "a tiny target (1e-308) that StalenessTarget accepts",
)
def test_a_tiny_staleness_target_keeps_k_in_its_bounds() -> None:
    tuner = BufferTuner(StalenessTarget(1e-308, 1, 10), 5, None)
    k, _ = tuner.observe(1.0, [1, 2])
    assert 1 <= k <= 10


@pytest.mark.xfail(
    strict=True,
    raises=OverflowError,
    reason="'buffer-tuning = staleness:1e-308' is accepted by the run config, "
    "then the server dies with OverflowError in tuning.py after version 1",
)
def test_a_tiny_target_in_the_run_config_is_refused_or_runs() -> None:
    try:
        strategy = fedbuff_from_run_config(
            {**TOY, "buffer-tuning": "staleness:1e-308"}, min_available_nodes=6
        )
    except ValueError as exc:
        assert "buffer-tuning" in str(exc)
        return
    run_toy(strategy, versions=6)


# 3 ---------------------------------------------------------- tuning slack
@pytest.mark.xfail(
    strict=True,
    reason="tuning.BufferTuner.observe: slack * K overflows to tau = inf for a "
    "finite slack (1e308) that StalenessTarget accepts",
)
def test_a_huge_slack_gives_a_finite_tau() -> None:
    tuner = BufferTuner(StalenessTarget(4.0, 1, 10, slack=1e308), 5, None)
    _, tau = tuner.observe(1.0, [1, 1])
    assert tau is not None and math.isfinite(tau)


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="with a ledger, the tau = inf the tuner records in the next block's "
    "'buffer' field makes canonical JSON raise: the run dies mid-way",
)
def test_a_huge_slack_with_a_ledger_is_refused_or_runs(tmp_path: Path) -> None:
    cfg: dict[str, ConfigValue] = {
        **TOY,
        "buffer-tuning": "staleness:4:1:10:1e308",
        "ledger-path": str(tmp_path / "l.db"),
    }
    strategy = fedbuff_from_run_config(cfg, min_available_nodes=6)
    try:
        run_toy(strategy, versions=6)
    finally:
        assert isinstance(strategy.ledger, Ledger)
        strategy.ledger.close()


# 4 ------------------------------------------------- capped work factors
@pytest.mark.xfail(
    strict=True,
    reason="nova.capped_factors rescales as c * total / weighted: c * total "
    "overflows when the examples total near the float maximum, so a factor "
    "is inf, outside the documented [1/max**2, max**2] (the uncapped path "
    "guards this overflow, the capped one does not)",
)
def test_capped_work_factors_stay_within_max_squared() -> None:
    # a node claiming ~1.5e308 examples ('claimed' weighting), asked 12 steps,
    # beside an honest node asked 1 step: the honest update's factor clips to 2
    factors = WorkNormalisation(2.0).factors([12.0, 1.0], [1.5e308, 10.0])
    assert all(0.25 <= f <= 4.0 for f in factors), factors


# 5 ----------------------------------------------- fairness renormalisation
@pytest.mark.xfail(
    strict=True,
    reason="fairness.inverse_participation: sum(n * raw) overflows to inf for "
    "finite examples near the float maximum, scale becomes 0 and every factor "
    "is clipped to 1/max, the rare node included (no overflow guard, unlike "
    "nova.work_factors)",
)
def test_fairness_still_favours_the_rare_node_for_huge_example_counts() -> None:
    factors = InverseParticipation(4.0).factors([1, 2], [1e308, 7e307], {1: 0, 2: 100})
    assert factors[0] > factors[1], factors


# 6 ------------------------------------------------- Python API values
@pytest.mark.xfail(
    strict=True,
    reason="UpdateMemory accepts max_age=NaN (nan < 1 "
    "is False): the memory then never steps and never evicts",
)
def test_update_memory_refuses_nan() -> None:
    with pytest.raises(ValueError):
        UpdateMemory(float("nan"))  # type: ignore[arg-type]


@pytest.mark.xfail(
    strict=True,
    reason="UpdateMemory accepts a float max_age "
    "(2.5, inf) whose spec 'mifa:2.5' update_memory() cannot parse",
)
@pytest.mark.parametrize("age", [2.5, math.inf])
def test_update_memory_refuses_a_non_integer_age(age: float) -> None:
    with pytest.raises(ValueError):
        UpdateMemory(age)  # type: ignore[arg-type]


@pytest.mark.xfail(
    strict=True,
    reason="FedSALearningRate checks base_lr > 0 "
    "only: base_lr=inf is accepted and every node is sent lr=inf",
)
def test_fedsa_refuses_an_infinite_base_lr() -> None:
    with pytest.raises(ValueError):
        FedSALearningRate(math.inf)


@pytest.mark.xfail(
    strict=True,
    reason="StalenessTarget accepts a fractional or "
    "infinite K bound; its spec ('staleness:4:1.5:10') does not "
    "parse back",
)
@pytest.mark.parametrize(("min_k", "max_k"), [(1.5, 10), (1, math.inf)])
def test_staleness_target_refuses_non_integer_k_bounds(
    min_k: float, max_k: float
) -> None:
    with pytest.raises(ValueError):
        StalenessTarget(4.0, min_k, max_k)  # type: ignore[arg-type]


@pytest.mark.xfail(
    strict=True,
    reason="a bool bound is taken as 1 (AdaptiveLocalWork "
    "refuses a bool base, these do not)",
)
@pytest.mark.parametrize(
    "build",
    [
        lambda: InverseParticipation(True),
        lambda: WorkNormalisation(True),
        lambda: UpdateMemory(True),
        lambda: StalenessTarget(True),
    ],
)
def test_a_bool_policy_parameter_is_refused(build: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()  # type: ignore[operator]


# 7 --------------------------------------------- tuning's recorded settings
@pytest.mark.xfail(
    strict=True,
    reason="StalenessTarget.spec (tuning.py) leaves out smoothing and writes "
    "target and slack with :g, so config_digest does not tell the policies "
    "apart and a resume with changed tuning is not refused or recorded",
)
@pytest.mark.parametrize(
    "other",
    [
        StalenessTarget(4.0, 1, 10, slack=2.0, smoothing=0.9),
        StalenessTarget(4.0000001, 1, 10, slack=2.0),
        StalenessTarget(4.0, 1, 10, slack=2.0000001),
    ],
)
def test_the_config_digest_tells_tuning_policies_apart(other: StalenessTarget) -> None:
    base = FedBuff(buffer_tuning=StalenessTarget(4.0, 1, 10, slack=2.0))
    assert base.config_digest() != FedBuff(buffer_tuning=other).config_digest()

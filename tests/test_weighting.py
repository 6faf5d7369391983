import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from flchain_flwr.data.partition import dirichlet_partition
from flchain_flwr.strategies.claims import ClaimHistory, lower_median
from flchain_flwr.strategies.updates import weighted_delta
from flchain_flwr.strategies.weighting import (
    DEFAULT_WEIGHTING,
    Capped,
    Claimed,
    Equal,
    ExampleWeighting,
    MedianCapped,
    WeightingError,
    effective_examples,
    example_weighting,
)

HONEST = [120.0, 95.0, 180.0, 150.0, 60.0, 210.0, 130.0, 175.0, 88.0]


def history_of(claims: list[float]) -> ClaimHistory:
    history = ClaimHistory()
    for node_id, claim in enumerate(claims):
        history.observe(node_id, claim)
    return history


def test_an_inflated_claim_is_held_to_multiple_times_the_median() -> None:
    claims = [*HONEST, 1e12]
    history = history_of(claims)
    got = effective_examples(MedianCapped(multiple=4), claims, history)
    median = lower_median(claims)
    assert median == 130.0
    assert got[-1] == 4 * median
    assert got[:-1] == HONEST  # honest claims untouched
    # the inflator's share of the step: all of it before, under a third now
    assert 1e12 / sum(claims) > 0.999
    assert got[-1] / sum(got) < 1 / 3


def test_two_claims_of_1e308_make_a_finite_total() -> None:
    claims = [*HONEST, 1e308, 1e308]
    history = history_of(claims)
    got = effective_examples(DEFAULT_WEIGHTING, claims, history)
    assert math.isfinite(sum(got)) and sum(got) > 0
    with pytest.raises(WeightingError, match="total inf"):
        effective_examples(Claimed(), claims, history)


def test_claimed_is_the_old_behaviour_bit_for_bit() -> None:
    claims = [3.0, 1e12, 7.5, 0.1]
    got = effective_examples(Claimed(), claims, history_of(claims))
    assert got == claims
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.normal(size=5)} for _ in claims]
    stale = [1.0, 0.5, 0.25, 1.0]
    old = weighted_delta(deltas, claims, stale)
    new = weighted_delta(deltas, got, stale)
    assert old["w"].tobytes() == new["w"].tobytes()


def test_equal_and_capped() -> None:
    history = ClaimHistory()
    assert effective_examples(Equal(), [5.0, 1e12], history) == [1.0, 1.0]
    assert effective_examples(Capped(100), [5.0, 1e12], history) == [5.0, 100.0]


def test_a_node_counts_once_in_the_median_however_often_it_replies() -> None:
    history = history_of([100.0, 100.0, 100.0])
    for _ in range(50):  # a fast inflator replies far more often than the rest
        history.observe(99, 1e12)
    assert len(history) == 4
    assert MedianCapped(multiple=4).cap(history) == 400.0
    history.observe(0, 150.0)  # a node's latest claim replaces its previous one
    assert sorted(history.recent(10)) == [100.0, 100.0, 150.0, 1e12]


def test_the_window_takes_the_most_recently_heard_nodes() -> None:
    history = history_of([1.0, 1.0, 1.0, 50.0, 60.0, 70.0])
    assert MedianCapped(multiple=2, window=3).cap(history) == 120.0
    assert MedianCapped(multiple=2, window=6).cap(history) == 2.0
    small = ClaimHistory(max_nodes=2)
    for node_id, claim in enumerate([5.0, 6.0, 7.0]):
        small.observe(node_id, claim)
    assert small.recent(10) == [6.0, 7.0]


def test_without_history_a_claim_is_taken_as_it_is() -> None:
    assert MedianCapped().cap(ClaimHistory()) == math.inf
    assert MedianCapped().effective(42.0, ClaimHistory()) == 42.0


def test_the_default_caps_no_honest_node_of_the_projects_partitions() -> None:
    labels = load_digits().target
    for alpha in (0.3, 0.5):
        sizes = [float(len(p)) for p in dirichlet_partition(labels, 20, alpha, seed=42)]
        got = effective_examples(DEFAULT_WEIGHTING, sizes, history_of(sizes))
        assert got == sizes


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        ("claimed", Claimed()),
        ("equal", Equal()),
        ("capped:1000", Capped(1000.0)),
        ("median", MedianCapped()),
        ("median:4", MedianCapped(4.0)),
        (" median:2.5:50 ", MedianCapped(2.5, 50)),
    ],
)
def test_policies_are_built_from_run_config_strings(
    spec: str, policy: ExampleWeighting
) -> None:
    assert example_weighting(spec) == policy
    assert example_weighting(policy.spec) == policy
    assert isinstance(policy, ExampleWeighting)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "median:x",
        "capped",
        "capped:0",
        "capped:inf",
        "median:0.5",
        "median:4:0",
        "claimed:1",
        "fedavg",
        "median:4:10:1",
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="example weighting"):
        example_weighting(spec)


def test_a_non_finite_count_from_a_policy_is_an_error() -> None:
    class Broken:
        spec = "broken"

        def effective(self, claimed: float, history: ClaimHistory) -> float:
            return -claimed

    with pytest.raises(WeightingError, match="finite and >= 0"):
        effective_examples(Broken(), [1.0], ClaimHistory())
    with pytest.raises(ValueError, match="finite and > 0"):
        ClaimHistory().observe(1, float("nan"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(1.0, 1e6), min_size=1, max_size=30),
    st.lists(st.floats(1.0, 1e308), max_size=30),
    st.floats(1.0, 10.0),
    st.randoms(use_true_random=False),
)
def test_inflators_that_are_not_a_majority_stay_bounded(
    honest: list[float],
    inflators: list[float],
    multiple: float,
    rnd: object,
) -> None:
    inflators = inflators[: len(honest)]  # at most as many as the honest nodes
    claims = honest + inflators
    order = list(range(len(claims)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    history = ClaimHistory()
    for node_id in order:
        history.observe(node_id, claims[node_id])
    got = effective_examples(MedianCapped(multiple), claims, history)
    bound = multiple * max(honest)
    assert all(0 < g <= c for g, c in zip(got, claims, strict=True))
    assert all(g <= bound for g in got)
    assert math.isfinite(sum(got))

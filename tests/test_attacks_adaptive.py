"""The adaptive attacks' maths (no training): min-max and min-sum keep their
distance budgets at the gamma they pick and that gamma is the largest that does;
the cosine-edge update lands in its band above the threshold at the norm it
aims for; inflation claims exactly what it is told, through the real mod."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.sim.adaptive import (
    PERTURBATIONS,
    Perturbation,
    cosine_edge,
    cosine_edge_vector,
    largest_gamma,
    max_distance,
    min_max,
    min_max_bound,
    min_max_vector,
    min_sum,
    min_sum_bound,
    min_sum_vector,
    perturbation,
    sum_squared_distances,
)
from flchain_flwr.sim.attacks import attack_mod, attacker_node_configs
from flchain_flwr.strategies import Constant, FedBuff
from flchain_flwr.strategies.weighting import Claimed
from tests.toy import constant_work, examples_of, initial_arrays, toy_client_app


def benign_pool(seed: int, rows: int = 6, dim: int = 500) -> np.ndarray:
    """Correlated benign updates: a shared direction plus per-node noise."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    return common + rng.normal(scale=1.5, size=(rows, dim))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------- min-max/sum
def test_largest_gamma_finds_a_known_bound_and_needs_a_feasible_start() -> None:
    assert largest_gamma(lambda g: g <= 3.7) == pytest.approx(3.7, rel=1e-5)
    assert largest_gamma(lambda g: g <= 3.7) <= 3.7
    assert largest_gamma(lambda g: g * g <= 1e-30) == pytest.approx(0.0, abs=1e-12)
    assert largest_gamma(lambda g: True) == 0.0  # unbounded: no perturbation
    with pytest.raises(ValueError, match="gamma = 0"):
        largest_gamma(lambda g: g > 1.0)


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_stays_within_the_benign_spread_and_no_further(
    kind: Perturbation, seed: int
) -> None:
    benign = benign_pool(seed)
    update, gamma = min_max_vector(benign, kind)
    bound = min_max_bound(benign)
    assert gamma > 0
    assert max_distance(benign, update) <= bound
    p = perturbation(benign, kind)
    beyond = benign.mean(axis=0) + gamma * (1 + 1e-3) * p
    assert max_distance(benign, beyond) > bound  # gamma is (nearly) the largest


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_sum_stays_within_the_benign_sum_and_no_further(
    kind: Perturbation, seed: int
) -> None:
    benign = benign_pool(seed)
    update, gamma = min_sum_vector(benign, kind)
    bound = min_sum_bound(benign)
    assert gamma > 0
    assert sum_squared_distances(benign, update) <= bound
    p = perturbation(benign, kind)
    beyond = benign.mean(axis=0) + gamma * (1 + 1e-3) * p
    assert sum_squared_distances(benign, beyond) > bound


def test_min_sum_is_tighter_than_min_max() -> None:
    """A sum over all benign updates binds sooner than the single farthest one."""
    benign = benign_pool(4)
    assert min_sum_vector(benign, "std")[1] < min_max_vector(benign, "std")[1]


def test_perturbations_point_as_the_paper_says() -> None:
    benign = np.array([[1.0, -2.0, 0.0], [3.0, -4.0, 2.0]])
    assert np.allclose(
        perturbation(benign, "unit"), -np.array([2, -3, 1]) / math.sqrt(14)
    )
    assert np.allclose(perturbation(benign, "std"), [-1.0, -1.0, -1.0])
    assert np.allclose(perturbation(benign, "sign"), [-1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation(benign, "teleport")  # type: ignore[arg-type]


def test_dict_versions_match_the_flat_maths_and_keep_integer_arrays() -> None:
    benign = benign_pool(5, dim=12)
    pool = [
        {"w": row[:8].reshape(2, 4), "b": row[8:], "n": np.array([7])} for row in benign
    ]
    for attack, vector in ((min_max, min_max_vector), (min_sum, min_sum_vector)):
        out = attack(pool, "std")
        flat = np.concatenate([out["w"].ravel(), out["b"]])
        assert np.allclose(flat, vector(benign, "std")[0])
        assert out["w"].shape == (2, 4) and np.array_equal(out["n"], [7])


# ----------------------------------------------------------------- cosine-edge
@pytest.mark.parametrize("threshold", [0.0, 0.3, -0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_edge_lands_just_above_the_threshold_at_the_norm_it_aims_for(
    threshold: float, seed: int
) -> None:
    benign = benign_pool(seed)
    update = cosine_edge_vector(
        benign, min_cosine=threshold, margin=0.05, max_norm_ratio=4.0, norm_slack=0.9
    )
    c = cos(update, benign.mean(axis=0))
    assert threshold < c <= threshold + 0.05 + 1e-9
    assert c == pytest.approx(threshold + 0.05, abs=1e-9)
    median = float(np.median(np.linalg.norm(benign, axis=1)))
    assert float(np.linalg.norm(update)) == pytest.approx(0.9 * 4.0 * median)
    assert float(np.linalg.norm(update)) < 4.0 * median  # under the norm filter
    # the rest of the update points away from the mean's signs
    rest = update - (update @ benign.mean(axis=0)) / np.sum(
        benign.mean(axis=0) ** 2
    ) * benign.mean(axis=0)
    assert float(rest @ np.sign(benign.mean(axis=0))) < 0


def test_cosine_edge_rejects_a_band_outside_the_rule_and_handles_zero() -> None:
    benign = benign_pool(0)
    with pytest.raises(ValueError):
        cosine_edge_vector(
            benign, min_cosine=1.0, margin=0.1, max_norm_ratio=4, norm_slack=0.9
        )
    with pytest.raises(ValueError):
        cosine_edge_vector(
            benign, min_cosine=0.0, margin=0.1, max_norm_ratio=4, norm_slack=1.5
        )
    zero = np.zeros((3, 4))
    assert not cosine_edge_vector(
        zero, min_cosine=0.0, margin=0.1, max_norm_ratio=4, norm_slack=0.9
    ).any()
    pool = [{"w": row} for row in benign]
    out = cosine_edge(pool, min_cosine=0.0)  # defaults: margin 0.1
    assert cos(out["w"], benign.mean(axis=0)) == pytest.approx(0.1)


# ----------------------------------------------------------- through the mod
def seen_updates(
    attack: str, **params: object
) -> tuple[set[int], dict[int, tuple[float, float]]]:
    """Run one FedBuff version of four toy nodes, two of them colluding; return
    the attackers and, per node, (claimed examples, first delta value) as the
    strategy parsed them."""
    configs = attacker_node_configs(4, 0.5, attack, seed=1, **params)
    bad = {i for i, c in enumerate(configs) if "attack" in c}
    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(
        fraction_evaluate=0.0,
        buffer_size=4,
        staleness_fn=Constant(),
        example_weighting=Claimed(),
        seed=0,
    )
    seen: dict[int, tuple[float, float]] = {}
    original = strategy._parse

    def spy(content, reference, trained_on=None):  # type: ignore[no-untyped-def]
        update = original(content, reference, trained_on)
        seen[len(seen)] = (update.num_examples, float(update.delta["w"][0]))
        return update

    strategy._parse = spy  # type: ignore[method-assign]
    run = simulate(strategy, grid, initial_arrays(), num_rounds=1)
    assert run.result is not None
    return bad, seen


@pytest.mark.parametrize("claim", [1_000_000, 2.5e9])
def test_inflation_claims_what_it_says_and_honest_claims_stay(claim: float) -> None:
    bad, seen = seen_updates("inflation", claim=claim)
    claims = sorted(n for n, _ in seen.values())
    honest = sorted(examples_of(i) for i in range(4) if i not in bad)
    assert claims == pytest.approx(sorted([*honest, claim, claim]))


@pytest.mark.parametrize("attack", ["min-max", "min-sum", "cosine-edge"])
def test_adaptive_attacks_replace_the_colluders_updates(attack: str) -> None:
    bad, seen = seen_updates(attack)
    # toy node p moves every weight by 0.1 (p + 1): the honest shifts stay
    honest = sorted(0.1 * (i + 1) for i in range(4) if i not in bad)
    shifts = sorted(d for _, d in seen.values())
    assert all(any(abs(s - h) < 1e-6 for s in shifts) for h in honest)
    poisoned = [d for d in shifts if all(abs(d - h) > 1e-6 for h in honest)]
    assert poisoned, "no colluder's update was changed"

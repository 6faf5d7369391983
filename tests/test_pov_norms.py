"""The PoV rule's norm bound: its maths, its place in the rule digest, votes
judged by it, and a FedBuff run under it that still replays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.ledger.replay import replay
from flchain_flwr.pov import Candidate, RefusedRequest, Rule, Threshold, Verifier
from flchain_flwr.pov.norms import norm_ratios, update_norm, within_bound

from .test_pov import (
    GOOD,
    context,
    decide,
    delta,
    digest,
    directed,
    key,
    model,
    toward_target,
    toy_score,
    verifiers,
)
from .test_replay import fedbuff_ledger


def test_update_norm_is_the_l2_norm_over_float_arrays() -> None:
    update = {"w": np.array([3.0, 0.0]), "b": np.array([[4.0]]), "n": np.array([9])}
    assert update_norm(update) == pytest.approx(5.0)  # the integer array is left out
    assert math.isnan(update_norm({"w": np.array([np.inf])}))
    assert math.isnan(update_norm({"w": np.array([1e300, 1e300])}))  # overflows


def test_update_norm_is_one_documented_sum_for_every_machine() -> None:
    # the verifiers' norm bound and trust weighting's clips (which replay
    # recomputes) share this one function: pairwise float64 sums of squares,
    # array by array, never a BLAS dot whose order can change the last bits
    from flchain_flwr.pov import trust

    assert trust.update_norm is update_norm
    rng = np.random.default_rng(7)
    update = {
        "conv": rng.normal(size=(8, 3, 5, 5)).astype(np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(40, 30))),
        "half": rng.normal(size=100).astype(np.float16),
        "fc": rng.normal(size=100_003).astype(np.float32),
    }
    squares = [np.sum(np.square(a, dtype=np.float64)) for a in update.values()]
    assert update_norm(update) == math.sqrt(float(sum(float(x) for x in squares)))
    # pinned: a machine or NumPy that sums in another order fails here first
    assert update_norm(update).hex() == GOLDEN_NORM


GOLDEN_NORM = "0x1.3ea370705f3c2p+8"  # a BLAS dot gave ...3c9p+8 here


def test_norm_ratios_are_against_the_median_norm() -> None:
    updates = [{"w": np.array([v])} for v in (1.0, -2.0, 3.0, 8.0)]
    assert norm_ratios(updates) == pytest.approx([0.4, 0.8, 1.2, 3.2])  # median 2.5
    zero = {"w": np.zeros(2)}
    assert norm_ratios([zero, zero, {"w": np.ones(2)}]) == [0.0, 0.0, math.inf]
    # a non-finite update is never within a bound and cannot pull the median down
    poisoned = [
        {"w": np.array([1.0])},
        {"w": np.array([2.0])},
        {"w": np.array([np.nan])},
    ]
    ratios = norm_ratios(poisoned)
    assert ratios[:2] == pytest.approx([0.5, 1.0]) and math.isnan(ratios[2])
    assert all(math.isnan(r) for r in norm_ratios([{"w": np.array([np.inf])}]))


def test_within_bound() -> None:
    assert within_bound(1.5, 1.5) and not within_bound(1.5000001, 1.5)
    assert not within_bound(None, 2.0)
    assert not within_bound(math.nan, 2.0) and not within_bound(math.inf, 2.0)


def test_the_bound_is_validated_and_decides_with_the_other_tests() -> None:
    for bad in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_norm_ratio"):
            Threshold("none", min_cosine=0.0, max_norm_ratio=bad)
    bounded = Threshold("none", min_cosine=0.0, max_norm_ratio=2.0)
    assert bounded.approves(None, None, 0.5, 2.0)
    assert not bounded.approves(None, None, 0.5, 2.1)  # too long
    assert not bounded.approves(None, None, 0.5, None)  # never measured
    assert not bounded.approves(None, None, -0.5, 1.0)  # wrong way, short
    assert Threshold("none", min_cosine=0.0).approves(None, None, 0.5, 99.0)


def test_the_bound_is_part_of_the_rule_digest_only_when_set() -> None:
    plain = Rule(Threshold("none", min_cosine=0.0))
    assert "max_norm_ratio" not in plain.to_json()  # old chains keep their digest
    two = Rule(Threshold("none", min_cosine=0.0, max_norm_ratio=2.0))
    three = Rule(Threshold("none", min_cosine=0.0, max_norm_ratio=3.0))
    assert two.to_json()["max_norm_ratio"] == 2.0
    assert len({plain.digest, two.digest, three.digest}) == 3


def test_a_committee_with_the_bound_rejects_a_long_step_the_cosine_passes() -> None:
    """Five updates toward the target; one is 10x as long: its cosine is 1, its
    norm ratio 10 > 2, so every member votes against it and signs so."""
    long = Candidate(digest(40), 40, delta(5.0))
    cands = [*GOOD, Candidate(digest(41), 41, delta(0.4)), long]
    bounded = directed(4, Threshold("none", min_cosine=0.0, max_norm_ratio=2.0))
    decision = decide(bounded, cands)
    assert [o.accepted for o in decision.outcomes] == [True] * 4 + [False]
    assert all(not v["verdict"] for v in decision.votes_on(long.digest))
    assert all(v["score"] == 1.0 for v in decision.votes_on(long.digest))
    unbounded = directed(4, Threshold("none", min_cosine=0.0))
    assert all(o.accepted for o in decide(unbounded, cands).outcomes)


def test_a_verifier_holding_the_bound_refuses_a_request_without_it() -> None:
    """A server cannot talk a bounded verifier into judging by the unbounded
    rule: the request names the rule's digest, and the verifier judges by its own."""
    own = Rule(Threshold("none", min_cosine=0.0, max_norm_ratio=2.0))
    weaker = Rule(Threshold("none", min_cosine=0.0))
    verifier = Verifier(toy_score, key(0), reference_fn=toward_target, rule=own)
    long = delta(5.0)
    request = {
        "global_model": model(0.0),
        "candidates": [(digest(i), {}) for i in range(3)],
        "weights": [1 / 3] * 3,
        "deltas": [delta(0.5), delta(0.5), long],
    }
    with pytest.raises(RefusedRequest, match="judges by"):
        verifier.vote(context=context(5, rule=weaker.digest), **request)  # type: ignore[arg-type]
    votes = verifier.vote(context=context(5, rule=own.digest), **request)  # type: ignore[arg-type]
    assert [v["verdict"] for v in votes] == [True, True, False]


def test_a_fedbuff_run_under_the_bound_replays(tmp_path: Path) -> None:
    from flchain_flwr.pov import Committee

    pool = [
        Verifier(toy_score, v.key, reference_fn=toward_target) for v in verifiers(4)
    ]
    threshold = Threshold(value=0, min_cosine=-1.0, max_norm_ratio=1.5)
    committee = Committee(pool, threshold=threshold)
    with fedbuff_ledger(tmp_path / "l.db", 4, committee=committee) as ledger:
        genesis_rule = ledger.block(0).body["pov"]["votes"]["rule"]
        assert genesis_rule["max_norm_ratio"] == 1.5
        assert ledger.verify().pov
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 4, report


def test_the_app_key_sets_the_bound_and_zero_leaves_it_off() -> None:
    from flchain_cnn.verifiers import app_rule

    cfg = {"pov-metric": "none", "pov-tolerance": 0.05, "pov-reference-epochs": 10}
    assert app_rule(cfg).threshold.max_norm_ratio is None
    assert app_rule({**cfg, "pov-max-norm-ratio": 0.0}).threshold.max_norm_ratio is None
    bounded = app_rule({**cfg, "pov-max-norm-ratio": 2.0})
    assert bounded.threshold.max_norm_ratio == 2.0
    assert bounded.digest != app_rule(cfg).digest

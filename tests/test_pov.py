"""PoV: signed votes, quorum, rotation, deposits, Byzantine verifiers, filters,
and the committee inside FedBuff, around Flower's FedAvg and in the ledger."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg
from nacl.signing import SigningKey

from flchain_flwr.arrays import NDArrays
from flchain_flwr.ledger import (
    Ledger,
    PoVRules,
    PoVState,
    VoteContext,
    VoteRules,
    check_vote,
    judged_shares,
    model_hash,
    quorum,
    select_committee,
    sign_vote,
)
from flchain_flwr.pov import (
    Behaviour,
    Candidate,
    Committee,
    IQRFilter,
    MedianFilter,
    PoVStrategy,
    Score,
    Threshold,
    Verifier,
    collect_votes,
    cosine,
)
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.sim.attacks import attack_mod, attacker_node_configs
from flchain_flwr.strategies import Constant, FedBuff

from .ledger_helpers import KeyQuorum
from .toy import constant_work, initial_arrays, toy_client_app

CHAIN = "test-chain"
TARGET = 1.0  # the toy task: every weight should reach 1.0


def toy_score(model: NDArrays) -> Score:
    """Squared distance of the toy model to the all-ones target."""
    loss = float(np.mean([np.mean((v - TARGET) ** 2) for v in model.values()]))
    return Score(accuracy=1.0 / (1.0 + loss), loss=loss)


def key(i: int) -> SigningKey:
    return SigningKey(hashlib.sha256(f"verifier-{i}".encode()).digest())


def verifiers(n: int, byzantine: dict[int, Behaviour] | None = None) -> list[Verifier]:
    byz = byzantine or {}
    return [
        Verifier(toy_score, key(i), behaviour=byz.get(i, Behaviour.HONEST), seed=i)
        for i in range(n)
    ]


def model(value: float = 0.0) -> NDArrays:
    return {"w": np.full(3, value, np.float32), "b": np.full((2, 2), value, np.float32)}


def delta(value: float) -> NDArrays:
    return {"w": np.full(3, value), "b": np.full((2, 2), value)}


def digest(i: int) -> str:
    return hashlib.sha256(f"update-{i}".encode()).hexdigest()


def decide(committee: Committee, candidates: list[Candidate], height: int = 1):  # type: ignore[no-untyped-def]
    return committee.decide(
        context=context(height, rule=committee.rule.digest),
        global_model=model(0.0),
        candidates=candidates,
        round_=0,
    )


def context(height: int = 5, *, rule: str = "", view: int = 0) -> VoteContext:
    """A format-2 vote context after block ``"ab" * 32`` with parent ``model(0)``."""
    return VoteContext(CHAIN, height, "ab" * 32, model_hash(model(0.0)), rule, view)


GOOD = [Candidate(digest(i), i, delta(0.5)) for i in range(3)]
BAD = [Candidate(digest(10 + i), 10 + i, delta(-0.5)) for i in range(2)]


# ------------------------------------------------------------------- votes
def test_a_signed_vote_verifies_and_any_change_breaks_it() -> None:
    ctx = context(5, rule="cd" * 32)
    vote = sign_vote(key(0), ctx, digest(1), True, 0.9, 0.25)
    assert check_vote(ctx, vote) is None
    for field, value in [
        ("verdict", False),
        ("score", 0.1),
        ("weight", 0.5),
        ("candidate", digest(2)),
        ("verifier", sign_vote(key(1), ctx, digest(1), True, 0.9, 0.25)["verifier"]),
    ]:
        assert check_vote(ctx, {**vote, field: value}) == "signature is invalid"
    for moved in (  # another height, chain, parent, previous block, rule or view
        replace(ctx, height=6),
        replace(ctx, chain_id="other-chain"),
        replace(ctx, parent_model="ef" * 32),
        replace(ctx, prev_hash="ef" * 32),
        replace(ctx, rule="ef" * 32),
        replace(ctx, view=1),
    ):
        assert check_vote(moved, vote) == "signature is invalid"
    assert "malformed" in str(check_vote(ctx, {**vote, "verdict": "yes"}))
    assert "malformed" in str(check_vote(ctx, {**vote, "weight": "1"}))
    assert "malformed" in str(check_vote(ctx, {**vote, "extra": 1}))
    assert "malformed" in str(check_vote(ctx, {"verifier": "x"}))
    with pytest.raises(ValueError, match="finite weight"):
        sign_vote(key(0), ctx, digest(1), True, 0.9, float("nan"))


def test_format_1_votes_still_verify_but_only_where_format_1_is_expected() -> None:
    old = VoteContext(CHAIN, 5)  # what ledgers written before format 2 hold
    vote = sign_vote(key(0), old, digest(1), True, 0.9)
    assert "format" not in vote and check_vote(old, vote) is None
    assert check_vote(VoteContext(CHAIN, 6), vote) == "signature is invalid"
    assert "malformed" in str(check_vote(context(5), vote))  # no downgrade
    new = sign_vote(key(0), context(5), digest(1), True, 0.9, 1.0)
    assert "malformed" in str(check_vote(old, new))


def test_the_leader_drops_forged_replayed_foreign_and_duplicate_votes() -> None:
    ctx = context(1)
    members = [
        sign_vote(key(i), ctx, digest(0), True, 1.0, 1.0)["verifier"] for i in range(3)
    ]
    good = sign_vote(key(0), ctx, digest(0), True, 1.0, 1.0)
    forged = {**sign_vote(key(9), ctx, digest(0), True, 1.0, 1.0)}
    forged["verifier"] = members[1]  # key 9 signs in member 1's name
    replayed = sign_vote(key(2), context(0), digest(0), True, 1.0, 1.0)  # older
    outsider = sign_vote(key(7), ctx, digest(0), True, 1.0, 1.0)
    off_batch = sign_vote(key(2), ctx, digest(5), True, 1.0, 1.0)
    kept, dropped = collect_votes(
        [good, good, forged, replayed, outsider, off_batch, "junk"],
        ctx,
        members,
        {digest(0): 1.0},
    )
    assert kept == [good]
    reasons = " | ".join(dropped)
    for expected in (
        "second vote",
        "signature is invalid",
        "not from a committee member",
        "outside this batch",
        "malformed",
    ):
        assert expected in reasons
    assert len(dropped) == 6


# ------------------------------------------------------------ quorum, f < n/3
@pytest.mark.parametrize(("n", "needed"), [(1, 1), (3, 3), (4, 3), (6, 5), (7, 5)])
def test_quorum_is_more_than_two_thirds(n: int, needed: int) -> None:
    assert quorum(n) == needed
    assert needed > 2 * n / 3 >= needed - 1


def test_at_n_3f_plus_1_one_liar_can_neither_pass_poison_nor_block_good() -> None:
    for behaviour in (Behaviour.APPROVE_ALL, Behaviour.REJECT_ALL, Behaviour.INVERT):
        committee = Committee(
            verifiers(4, {3: behaviour}), threshold=Threshold(value=0)
        )
        decision = decide(committee, GOOD + BAD)
        assert [o.accepted for o in decision.outcomes] == [True] * 3 + [False] * 2


def test_two_liars_among_four_can_block_good_updates() -> None:
    """f = n/2 breaks the f < n/3 bound: the committee can no longer decide."""
    byz = {2: Behaviour.REJECT_ALL, 3: Behaviour.REJECT_ALL}
    committee = Committee(verifiers(4, byz), threshold=Threshold(value=0))
    decision = decide(committee, GOOD)
    assert not any(o.accepted for o in decision.outcomes)
    assert decision.outcomes[0].reason == "PoV: 2/4 approvals, quorum 3"


def test_two_byzantine_of_seven_of_every_kind_change_nothing() -> None:
    for behaviour in Behaviour:
        if behaviour is Behaviour.HONEST:
            continue
        committee = Committee(
            verifiers(7, {1: behaviour, 5: behaviour}), threshold=Threshold(value=0)
        )
        decision = decide(committee, GOOD + BAD)
        assert [o.accepted for o in decision.outcomes] == [True] * 3 + [False] * 2
        if behaviour is Behaviour.GARBAGE_SIGNATURE:
            # 2 liars x 5 candidates, then x 3 judged again at their final shares
            assert len(decision.dropped_votes) == 2 * (5 + 3)
            assert all("signature is invalid" in r for r in decision.dropped_votes)
        # every counted vote on an approved update signs the share it is applied at
        shares = judged_shares(1.0, [1.0] * 3, [1.0] * 3)
        for c, share in zip(GOOD, shares, strict=True):
            assert {v["weight"] for v in decision.votes_on(c.digest)} == {share}


def test_a_failing_verifier_just_has_no_votes() -> None:
    def broken(_: NDArrays) -> Score:
        raise RuntimeError("out of memory")

    pool = [*verifiers(3), Verifier(broken, key(3))]
    decision = decide(Committee(pool, threshold=Threshold(value=0)), GOOD)
    assert all(o.accepted for o in decision.outcomes)
    assert "failed" in decision.dropped_votes[0]


def test_a_replayed_copy_of_an_update_counts_once() -> None:
    copy = Candidate(GOOD[0].digest, 99, GOOD[0].delta)
    decision = decide(Committee(verifiers(4)), [GOOD[0], copy])
    assert [o.accepted for o in decision.outcomes] == [True, False]
    assert decision.outcomes[1].reason == "duplicate of another candidate"


def test_thresholds() -> None:
    ref = Score(accuracy=0.8, loss=1.0)
    assert Threshold("accuracy", "relative", 0.05).approves(Score(0.76, 9), ref)
    assert not Threshold("accuracy", "relative", 0.05).approves(Score(0.74, 0), ref)
    assert Threshold("accuracy", "absolute", 0.7).approves(Score(0.7, 9), ref)
    assert Threshold("loss", "relative", 0.1).approves(Score(0, 1.1), ref)
    assert not Threshold("loss", "relative", 0.1).approves(Score(0, 1.11), ref)
    assert not Threshold("loss", "absolute", 2.0).approves(Score(1, float("nan")), ref)
    with pytest.raises(ValueError):
        Threshold("recall", "relative", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Threshold(value=-1)


def toward_target(model: NDArrays) -> NDArrays:
    """The toy verifier's reference update: a step towards the all-ones target."""
    return {k: 0.1 * (TARGET - v.astype(np.float64)) for k, v in model.items()}


def directed(n: int, threshold: Threshold) -> Committee:
    pool = [Verifier(toy_score, key(i), reference_fn=toward_target) for i in range(n)]
    return Committee(pool, threshold=threshold)


def test_cosine_of_updates() -> None:
    assert cosine(delta(0.5), delta(2.0)) == pytest.approx(1.0)
    assert cosine(delta(0.5), delta(-1.0)) == pytest.approx(-1.0)
    assert cosine(delta(0.5), delta(0.0)) == 0.0
    assert np.isnan(cosine(delta(0.5), delta(np.inf)))
    ints = {"w": np.ones(3, np.int64)}
    assert cosine(ints, ints) == 0.0  # only float arrays count


def test_direction_test_rejects_updates_against_the_reference() -> None:
    """Against the verifiers' own reference (toward the target) a flipped update
    fails however small its step, and the signed score is the cosine."""
    tiny_bad = [Candidate(digest(20), 20, delta(-1e-6))]
    committee = directed(4, Threshold("none", min_cosine=0.0))
    decision = decide(committee, GOOD + BAD + tiny_bad)
    assert [o.accepted for o in decision.outcomes] == [True] * 3 + [False] * 3
    assert {v["score"] for v in decision.votes} == {1.0, -1.0}
    # combined with the loss test, both must pass
    combined = directed(4, Threshold("loss", "relative", 0.0, min_cosine=0.0))
    big_good = Candidate(digest(30), 30, delta(5.0))  # right way, overshoots
    decision = decide(combined, [GOOD[0], big_good])
    assert [o.accepted for o in decision.outcomes] == [True, False]


def test_direction_test_needs_a_reference_on_every_verifier() -> None:
    with pytest.raises(ValueError, match="reference_fn"):
        Committee(verifiers(4), threshold=Threshold(min_cosine=0.0))
    with pytest.raises(ValueError):
        Threshold("none")  # nothing would decide
    with pytest.raises(ValueError):
        Threshold(min_cosine=1.0)
    assert not Threshold("none", min_cosine=0.0).approves(None, None, float("nan"))
    assert not Threshold("none", min_cosine=0.0).approves(None, None, 0.0)
    assert Threshold("none", min_cosine=-0.1).approves(None, None, 0.0)


def test_metric_none_scores_no_model() -> None:
    calls = []

    def counting(model: NDArrays) -> Score:
        calls.append(1)
        return toy_score(model)

    trained: list[int] = []

    def reference(model: NDArrays) -> NDArrays:
        trained.append(1)
        return toward_target(model)

    pool = [Verifier(counting, key(i), reference_fn=reference) for i in range(4)]
    committee = Committee(pool, threshold=Threshold("none", min_cosine=0.0))
    decision = decide(committee, GOOD + BAD)
    assert calls == []
    # BAD rejected, GOOD judged again at its final share: same parent, so
    # each verifier trained its reference once
    assert len(decision.votes) == 4 * 5 and len(trained) == 4


# ------------------------------------------------------- rotation, deposits
def test_rotation_is_deterministic_from_the_previous_hash() -> None:
    pool = [v.public_key for v in verifiers(10)]
    a = select_committee(pool, "11" * 32, 4)
    assert a == select_committee(list(reversed(pool)), "11" * 32, 4)
    assert len(set(a)) == 4 and set(a) <= set(pool)
    committees = {tuple(select_committee(pool, f"{h:064x}", 4)) for h in range(50)}
    leaders = {c[0] for c in committees}
    assert len(committees) > 40 and len(leaders) == 10  # it really rotates


def test_verifiers_that_contradict_the_quorum_are_slashed_and_removed() -> None:
    pool = verifiers(4, {0: Behaviour.APPROVE_ALL})
    committee = Committee(pool, initial_stake=10, slash=2, floor=5)
    liar = pool[0].public_key
    decision = decide(committee, GOOD + BAD)  # liar contradicts on the 2 BAD
    extra, signer = committee.seal(decision.committee, decision.votes)
    assert signer.verify_key.encode().hex() == decision.committee[0]
    assert committee.state.stakes[liar] == 10.0  # until the block is signed
    assert signer.on_quorum is not None
    signer.on_quorum()  # the block has its header quorum
    assert extra["deposits"] == [
        {
            "verifier": liar,
            "contradictions": 2,
            "slashed": 4.0,
            "stake": 6.0,
            "removed": False,
        }
    ]
    decision = decide(committee, BAD, height=2)
    _, signer = committee.seal(decision.committee, decision.votes)
    assert signer.on_quorum is not None
    signer.on_quorum()
    assert committee.state.stakes[liar] == 2.0
    assert committee.removed == [liar]
    assert liar not in committee.state.committee("cd" * 32)


def test_a_vote_left_out_of_the_block_costs_its_member_nothing() -> None:
    pool = [v.public_key for v in verifiers(4)]
    state = PoVState(PoVRules(tuple(pool), 4))
    members = state.committee("ab" * 32)
    leader, d = members[0], digest(1)
    alone = [{"verifier": leader, "candidate": d, "verdict": False}]
    assert state.settlement(members, alone) == []  # others' votes left out
    dissent = [
        {"verifier": k, "candidate": d, "verdict": i < 3} for i, k in enumerate(members)
    ]
    assert [e["verifier"] for e in state.settlement(members, dissent)] == [
        members[3]
    ]  # a signed vote that contradicts the outcome still pays


def test_a_leader_cannot_empty_the_pool_by_leaving_votes_out() -> None:
    """The leader of every block (choosing its view) keeps only its own vote."""
    pool = [v.public_key for v in verifiers(4)]
    state = PoVState(PoVRules(tuple(pool), 4))
    attacker, prev = pool[0], "ab" * 32
    for _ in range(200):
        members = state.committee(prev, state.committee(prev).index(attacker))
        assert members[0] == attacker
        vote = {"verifier": attacker, "candidate": digest(1), "verdict": False}
        state.apply(state.settlement(members, [vote]))
        prev = hashlib.sha256(prev.encode()).hexdigest()
    assert state.pool == pool and set(state.stakes.values()) == {100.0}


def test_pov_rules_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        PoVRules(pool=(), committee_size=1)
    with pytest.raises(ValueError):
        PoVRules(pool=("a", "a"), committee_size=1)
    with pytest.raises(ValueError):
        PoVRules(pool=("a",), committee_size=1, initial_stake=1, floor=2)
    nan, inf = float("nan"), float("inf")
    for stakes in (
        {"slash": nan},
        {"floor": nan},
        {"initial_stake": nan},
        {"initial_stake": inf},
        {"slash": inf},
    ):
        with pytest.raises(ValueError, match="finite"):
            PoVRules(pool=("a",), committee_size=1, **stakes)


# -------------------------------------------------------------- prefilters
def test_iqr_whisker_moves_with_the_round() -> None:
    f = IQRFilter(k_start=3.0, k_end=1.5, schedule_rounds=50)
    assert [f.whisker(r) for r in (0, 25, 50, 500)] == [3.0, 2.25, 1.5, 1.5]
    rng = np.random.default_rng(0)
    deltas = [delta(0.1 + 0.01 * rng.standard_normal()) for _ in range(9)]
    deltas.append(delta(1.5))
    assert list(f.outliers(deltas, 0)) == [9]
    assert "IQR outlier" in f.outliers(deltas, 0)[9]
    assert f.outliers(deltas[:3], 0) == {}  # too few for quartiles


def test_median_filter_catches_boosted_and_flipped_updates() -> None:
    rng = np.random.default_rng(1)
    honest = [
        {"w": 0.1 + 0.03 * rng.standard_normal(3), "b": np.full((2, 2), 0.1)}
        for _ in range(7)
    ]
    boosted = {k: 10 * v for k, v in honest[0].items()}
    flipped = {k: -v for k, v in honest[1].items()}
    out = MedianFilter().outliers([*honest, boosted, flipped], 0)
    assert sorted(out) == [7, 8]
    assert "median norm" in out[7] and "cosine" in out[8]


# ------------------------------------------------------------------ attacks
def test_each_attack_changes_a_tiny_model_as_specified() -> None:
    from flchain_flwr.sim.poisoning import (
        alie,
        alie_z,
        flip_labels,
        gaussian_noise,
        ipm,
        scaled,
        sign_flip,
    )

    d = {"w": np.array([1.0, -2.0]), "n": np.array([3])}
    assert np.array_equal(sign_flip(d)["w"], [-1.0, 2.0])
    assert np.array_equal(sign_flip(d)["n"], [3])  # integer arrays untouched
    assert np.array_equal(scaled(d, 10)["w"], [10.0, -20.0])
    noisy = gaussian_noise(d, 0.5, np.random.default_rng(0))["w"]
    assert not np.array_equal(noisy, d["w"]) and np.abs(noisy - d["w"]).max() < 3
    pool = [{"w": np.array([1.0, 0.0])}, {"w": np.array([3.0, 2.0])}]
    assert np.allclose(alie(pool, 1.0)["w"], [2.0 - 1.0, 1.0 - 1.0])
    assert np.allclose(ipm(pool, 0.1)["w"], [-0.2, -0.1])
    assert alie_z(20, 6) == pytest.approx(0.6745, abs=1e-3)
    assert list(flip_labels(np.array([0, 3, 9]), 10)) == [9, 6, 0]


@pytest.mark.parametrize("attack", ["sign-flip", "scaling", "ipm", "alie"])
def test_attack_mod_poisons_only_the_attackers(attack: str) -> None:
    configs = attacker_node_configs(4, 0.25, attack, seed=3)
    bad = next(i for i, c in enumerate(configs) if "attack" in c)
    # toy node p moves every weight by 0.1 (p + 1)
    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(
        fraction_evaluate=0.0, buffer_size=4, staleness_fn=Constant(), seed=0
    )
    seen: dict[int, float] = {}
    original = strategy._parse

    def spy(content, reference, trained_on=None):  # type: ignore[no-untyped-def]
        update = original(content, reference, trained_on)
        seen[len(seen)] = float(update.delta["w"][0])
        return update

    strategy._parse = spy  # type: ignore[method-assign]
    run = simulate(strategy, grid, initial_arrays(), num_rounds=1)
    assert run.result is not None
    shifts = sorted(seen.values())
    honest = sorted(0.1 * (i + 1) for i in range(4) if i != bad)
    poisoned = {
        "sign-flip": -0.1 * (bad + 1),
        "scaling": 1.0 * (bad + 1),
        "ipm": -0.01 * (bad + 1),
        "alie": 0.1 * (bad + 1),  # a lone colluder has nothing to estimate from
    }[attack]
    assert shifts == pytest.approx(sorted([*honest, poisoned]), abs=1e-6)


def test_the_attack_mod_survives_pickling_into_ray_actors() -> None:
    import pickle

    from flchain_flwr.sim.attacks import Collusion

    pool = Collusion()
    pool.share(1, 7, delta(0.1))
    copy = pickle.loads(pickle.dumps(pool))
    assert len(copy.share(1, 8, delta(0.2))) == 1  # starts empty
    from ray import cloudpickle  # what Ray uses for ClientApps

    cloudpickle.dumps(toy_client_app({}, mods=[attack_mod()]))


def test_attacker_configs_pick_a_fixed_fraction() -> None:
    configs = attacker_node_configs(20, 0.3, "alie", seed=0, z=0.5)
    bad = [c for c in configs if "attack" in c]
    assert len(bad) == 6 and all(c["attack-z"] == 0.5 for c in bad)
    assert all(c["attack-colluders"] == 6 for c in bad)
    assert configs == attacker_node_configs(20, 0.3, "alie", seed=0, z=0.5)
    with pytest.raises(ValueError):
        attacker_node_configs(20, 0.3, "teleport")


# ------------------------------------------------ in strategies and ledgers
def federation(behaviours: dict[int, str] | None = None, n: int = 5):  # type: ignore[no-untyped-def]
    return VirtualGrid(
        toy_client_app(behaviours),
        [DeviceProfile() for _ in range(n)],
        work_fn=constant_work(1.0),
    )


def poisoning_configs(n: int, bad: set[int], attack: str) -> list[dict[str, object]]:
    return [
        {
            "partition-id": i,
            "num-partitions": n,
            **({"attack": attack} if i in bad else {}),
        }
        for i in range(n)
    ]


def test_fedbuff_with_pov_keeps_poison_out_and_records_votes(tmp_path: Path) -> None:
    n = 5
    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile() for _ in range(n)],
        node_configs=poisoning_configs(n, {4}, "sign-flip"),  # type: ignore[arg-type]
        work_fn=constant_work(1.0),
    )
    committee = Committee(
        verifiers(4), threshold=Threshold(value=0), consensus_delay=0.5
    )
    strategy = FedBuff(
        fraction_evaluate=0.0,
        buffer_size=n,
        staleness_fn=Constant(),
        committee=committee,
        ledger=tmp_path / "pov.db",
        seed=0,
    )
    run = simulate(strategy, grid, initial_arrays(), num_rounds=3)
    result = run.result
    bad_node = next(nid for nid, p in grid.partition_of.items() if p == 4)
    assert result.participation.get(bad_node, 0) == 0  # type: ignore[union-attr]
    rejected = result.rejected  # type: ignore[union-attr]
    assert {r.node_id for r in rejected} == {bad_node} and len(rejected) == 3
    assert all(len(r.votes) == 4 and r.reason.startswith("PoV") for r in rejected)
    assert run.simulated_seconds == pytest.approx(3 * 1.0 + 3 * 0.5)
    with Ledger(tmp_path / "pov.db", create=False) as ledger:
        report = ledger.verify()
        assert report.ok and report.pov, report
        leaders = {b.header["leader"] for b in ledger.blocks() if b.height}
        assert leaders <= {v.public_key for v in committee.verifiers.values()}
        assert all(len(b.body["votes"]) == 4 * n for b in ledger.blocks() if b.height)


def test_pov_wraps_flowers_fedavg(tmp_path: Path) -> None:
    n = 5
    configs = poisoning_configs(n, {0}, "scaling")
    configs[0]["attack-scale"] = 50.0
    configs[1]["attack"] = "sign-flip"
    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile() for _ in range(n)],
        node_configs=configs,  # type: ignore[arg-type]
        work_fn=constant_work(1.0),
    )
    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=n, min_train_nodes=n),
        Committee(
            verifiers(4),
            threshold=Threshold(value=0),
            prefilters=[MedianFilter(min_cosine=None)],
        ),
        ledger=tmp_path / "sync.db",
    )
    run = simulate(strategy, grid, initial_arrays(), num_rounds=2)
    assert run.result is not None
    node_of = {p: nid for nid, p in grid.partition_of.items()}
    boosted = [r for r in strategy.rejected if r.node_id == node_of[0]]
    flipped = [r for r in strategy.rejected if r.node_id == node_of[1]]
    assert len(strategy.rejected) == 4 and len(boosted) == len(flipped) == 2
    assert all("median norm" in r.reason and not r.votes for r in boosted)
    assert all(r.reason.startswith("PoV") and len(r.votes) == 4 for r in flipped)
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        assert ledger.verify().ok
        assert len(ledger) == 3
        blocks = [b for b in ledger.blocks() if b.height]
        assert all(len(b.body["included"]) == n - 2 for b in blocks)
        assert all(len(b.body["rejected"]) == 2 for b in blocks)


def pov_chain(tmp_path: Path) -> tuple[Ledger, Committee]:
    committee = Committee(verifiers(5), committee_size=4, threshold=Threshold(value=0))
    strategy = FedBuff(
        fraction_evaluate=0.0,
        buffer_size=3,
        staleness_fn=Constant(),
        committee=committee,
        ledger=tmp_path / "chain.db",
        seed=0,
    )
    simulate(strategy, federation(), initial_arrays(), num_rounds=3)
    return Ledger(tmp_path / "chain.db", create=False), committee


def chain_vote(
    ledger: Ledger,
    committee: Committee,
    member: str,
    candidate: str,
    verdict: bool = True,
    weight: float | None = None,
    view: int = 0,
) -> dict[str, object]:
    """``member``'s vote on ``candidate`` for the block after the head in
    ``view``, judged (by default) at the share a block including only it
    applies."""
    head = ledger.head()
    assert head is not None
    rules = VoteRules.from_genesis(ledger.block(0).body["pov"])
    assert rules is not None
    share = judged_shares(rules.server_lr, [1.0], [1.0])[0]
    ctx = VoteContext(
        ledger.chain_id,
        head.height + 1,
        head.hash,
        str(head.header["model_hash"]),
        rules.digest,
        view,
    )
    key_ = committee.verifiers[member].key
    return sign_vote(
        key_, ctx, candidate, verdict, 1.0, share if weight is None else weight
    )


def forge_next_block(ledger: Ledger, committee: Committee, /, **change: object) -> None:
    """Append a block that follows every rule except what ``change`` breaks,
    signed with whatever key ``change`` says (default: the right leader)."""
    head = ledger.head()
    assert head is not None
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    members = state.committee(head.hash)
    d = digest(77)
    votes = [chain_vote(ledger, committee, k, d) for k in members]
    votes = change.pop("votes", votes)  # type: ignore[assignment]
    signer = change.pop("signer", committee.verifiers[members[0]].key)
    if isinstance(signer, SigningKey):  # the committee signs the header too
        signer = KeyQuorum(signer, [committee.verifiers[k].key for k in members])
    extra = {"committee": members, "deposits": state.settlement(members, votes)}  # type: ignore[arg-type]
    extra.update(change)  # type: ignore[arg-type]
    ledger.append(
        model=model(0.5),
        model_version=head.height + 1,
        base_version=head.height,
        config_digest="",
        included=[{"digest": d, "node_id": 1, "weight": 1.0, "num_examples": 1}],
        votes=votes,  # type: ignore[arg-type]
        extra=extra,
        signer=signer,  # type: ignore[arg-type]
    )


def test_a_pov_chain_verifies_and_a_rule_abiding_block_extends_it(
    tmp_path: Path,
) -> None:
    ledger, committee = pov_chain(tmp_path)
    assert ledger.verify().ok
    forge_next_block(ledger, committee)
    assert ledger.verify().ok


def test_a_block_leaving_a_vote_out_slashes_nobody(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    members = state.committee(head.hash)
    votes = [chain_vote(ledger, committee, k, digest(77)) for k in members[:3]]
    forge_next_block(ledger, committee, votes=votes)
    assert ledger.verify().ok
    new = ledger.head()
    assert new is not None and new.body["deposits"] == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("no-quorum", "quorum is 3"),
        ("wrong-leader", "leader other than the committee's"),
        ("wrong-committee", "committee is not the one drawn"),
        ("outsider-vote", "outside the committee"),
        ("double-vote", "second vote"),
        ("hidden-slash", "deposit changes do not follow"),
        ("slash-left-out", "deposit changes do not follow"),
    ],
)
def test_a_block_breaking_a_pov_rule_fails_verification(
    tmp_path: Path, breakage: str, expected: str
) -> None:
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    members = state.committee(head.hash)
    outsider = next(k for k in committee.rules.pool if k not in members)
    h, d = head.height + 1, digest(77)

    def vote(k: str, verdict: bool = True) -> dict[str, object]:
        return chain_vote(ledger, committee, k, d, verdict)

    change: dict[str, object] = {
        "no-quorum": {"votes": [vote(k, i < 2) for i, k in enumerate(members)]},
        "wrong-leader": {"signer": committee.verifiers[members[1]].key},
        "wrong-committee": {"committee": [outsider, *members[1:]]},
        "outsider-vote": {"votes": [*(vote(k) for k in members), vote(outsider)]},
        "double-vote": {"votes": [*(vote(k) for k in members), vote(members[0])]},
        "hidden-slash": {"deposits": []},
        "slash-left-out": {
            "votes": [vote(k) for k in members[:3]],
            "deposits": [
                {
                    "verifier": members[3],
                    "contradictions": 1,
                    "slashed": committee.rules.slash,
                    "stake": state.stakes[members[3]] - committee.rules.slash,
                    "removed": False,
                }
            ],
        },
    }[breakage]  # type: ignore[assignment]
    if breakage == "hidden-slash":  # a dissenting member must be slashed
        change["votes"] = [vote(k, i < 3) for i, k in enumerate(members)]
    forge_next_block(ledger, committee, **change)
    report = ledger.verify()
    assert not report.ok and report.bad_height == h
    assert expected in report.reason, report.reason


def test_resume_takes_the_stakes_from_the_ledger(tmp_path: Path) -> None:
    pool = verifiers(4, {0: Behaviour.APPROVE_ALL})
    grid = VirtualGrid(
        toy_client_app({}, mods=[attack_mod()]),
        [DeviceProfile() for _ in range(4)],
        node_configs=poisoning_configs(4, {3}, "sign-flip"),  # type: ignore[arg-type]
        work_fn=constant_work(1.0),
    )
    path = tmp_path / "r.db"
    first = Committee(pool, threshold=Threshold(value=0))
    FedBuff(
        fraction_evaluate=0.0, buffer_size=4, committee=first, ledger=path, seed=0
    ).start(grid, initial_arrays(), num_rounds=2, timeout=60)
    assert first.state.stakes[pool[0].public_key] < 100
    again = Committee(pool, threshold=Threshold(value=0))
    with Ledger(path, create=False) as ledger:
        again.resume(ledger)
    assert again.state.stakes == first.state.stakes
    other = Committee(verifiers(3), threshold=Threshold(value=0))
    with Ledger(path, create=False) as ledger, pytest.raises(ValueError):
        other.resume(ledger)


def test_pov_hands_delta_replies_to_fedavg_as_full_weights() -> None:
    """Node 2 replies with a delta (as the DGC mod does): FedAvg must get weights."""
    n = 3
    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=n, min_train_nodes=n),
        Committee(verifiers(4), threshold=Threshold("loss", "absolute", 1e9)),
    )
    run = simulate(
        strategy, federation({2: "delta"}, n), initial_arrays(), num_rounds=2
    )
    assert run.result is not None and not strategy.rejected
    weights = [10 * (p + 1) for p in range(n)]
    per_round = sum(w * 0.1 * (p + 1) for p, w in enumerate(weights)) / sum(weights)
    expected = 2 * per_round  # round 2 starts from a non-zero model: delta != weights
    got = run.result.arrays["w"].numpy()
    assert np.allclose(got, expected, atol=1e-6)

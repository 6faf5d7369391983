"""Straggler policies: FedSA learning rates, BAFL local work, self-tuning K and
tau, fairness weighting; their run-config keys; short virtual-grid runs."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message

from flchain_flwr.configvalues import ConfigValue
from flchain_flwr.data import parse_tier_classes, tier_partition
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.replay import replay
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AdaptiveLocalWork,
    AdaptiveScheduling,
    FedBuff,
    FedSALearningRate,
    InverseParticipation,
    NodeHistory,
    RandomSample,
    ShuffleAll,
    StalenessTarget,
    closing_ledger,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.bafl import MAX_WORK, bafl_local_work, local_work
from flchain_flwr.strategies.fairness import fairness_weighting, inverse_participation
from flchain_flwr.strategies.fedsa import fedsa_learning_rate, participation_lr
from flchain_flwr.strategies.tuning import BufferTuner, buffer_tuning, next_buffer_size
from flchain_flwr.training import train

from .toy import constant_work, initial_arrays, toy_client_app

TOY_CONFIG: dict[str, ConfigValue] = {
    "lr": 0.1,
    "local-steps": 4,
    "buffer-size": 2,
    "fraction-evaluate": 0.0,
    "max-staleness": -1,
    "seed": 0,
}
"""Run-config keys of :func:`toy_fedbuff`'s strategy, for :func:`run_toy`."""


# ------------------------------------------------------------ node history
def scripted_history() -> NodeHistory:
    """Node 1 answers in 2 s per unit of work, node 2 in 8 s, node 3 never."""
    h = NodeHistory(smoothing=0.5)
    h.dispatched(1, 0.0, work=1.0)
    h.dispatched(2, 0.0, work=2.0)
    h.dispatched(3, 0.0)
    h.updated(1, 2.0)  # 2 s / 1
    h.dispatched(1, 2.0, work=1.0)
    h.updated(1, 6.0)  # 4 s / 1 -> EMA 3
    h.updated(2, 16.0)  # 16 s / 2 = 8
    h.failed(3)
    return h


def test_node_history_counts_and_times_round_trips() -> None:
    h = scripted_history()
    assert (h.updates(1), h.updates(2), h.updates(3), h.updates(99)) == (2, 1, 0, 0)
    assert h.mean_updates() == 1.0  # 3 updates over 3 nodes dispatched to
    assert h.seconds_per_work(1) == 3.0
    assert h.seconds_per_work(2) == 8.0
    assert h.seconds_per_work(3) is None
    assert h.typical_seconds_per_work() == pytest.approx(math.sqrt(24.0))
    h.updated(3, 50.0)  # its message failed: counted, not timed
    assert h.seconds_per_work(3) is None
    with pytest.raises(ValueError, match="smoothing"):
        NodeHistory(smoothing=0.0)


# -------------------------------------------------------------------- FedSA
def test_participation_lr_is_inverse_to_relative_participation() -> None:
    assert participation_lr(0.1, 1, 1.0, 0.5, 2.0) == pytest.approx(0.1)
    assert participation_lr(0.1, 0, 1.0, 0.5, 2.0) == pytest.approx(0.2)
    assert participation_lr(0.1, 3, 1.0, 0.5, 2.0) == pytest.approx(0.05)
    assert participation_lr(0.1, 0, 9.0, 0.5, 2.0) == pytest.approx(0.2)  # bounded
    assert participation_lr(0.1, 9, 1.0, 0.5, 2.0) == pytest.approx(0.05)
    assert participation_lr(0.1, 2, 2.0, 0.5, 2.0) == pytest.approx(0.1)


def test_fedsa_adjuster_for_a_scripted_history() -> None:
    h = scripted_history()  # updates 2, 1, 0; mean 1
    fedsa = FedSALearningRate(0.1)
    assert fedsa.adjust(1, h, {})["lr"] == pytest.approx(0.1 * 2 / 3)
    assert fedsa.adjust(2, h, {})["lr"] == pytest.approx(0.1)
    assert fedsa.adjust(3, h, {})["lr"] == pytest.approx(0.2)
    assert fedsa.adjust(3, h, {"lr": 0.5})["lr"] == pytest.approx(1.0)  # from config
    assert fedsa.spec == "fedsa:0.5:2"
    for bad in (
        dict(base_lr=0.0),
        dict(base_lr=0.1, low=1.5),
        dict(base_lr=0.1, high=0.5),
    ):
        with pytest.raises(ValueError):
            FedSALearningRate(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        (dict(base_lr=math.inf), "base_lr"),  # every node was sent lr = inf
        (dict(base_lr=math.nan), "base_lr"),
        (dict(base_lr=True), "base_lr"),  # taken as lr 1
        (dict(base_lr=1e308), r"base_lr \* high"),  # 2e308: lr = inf
        (dict(base_lr=0.1, low=True), "low"),
    ],
)
def test_fedsa_refuses_what_the_run_config_refuses(
    bad: dict[str, object], name: str
) -> None:
    """The run config's ``lr`` is a finite number > 0 (no bool); the Python
    API took inf and a bool, and a base whose bounded lr overflows."""
    with pytest.raises(ValueError, match=name):
        FedSALearningRate(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------- BAFL
def test_local_work_evens_out_round_trips_within_bounds() -> None:
    assert local_work(10, 1.0, 1.0, 0.25, 4.0) == 10
    assert local_work(10, 1.0, 2.0, 0.25, 4.0) == 20  # twice as fast: twice the work
    assert local_work(10, 4.0, 2.0, 0.25, 4.0) == 5
    assert local_work(10, 1.0, 100.0, 0.25, 4.0) == 40  # capped at 4x
    assert local_work(10, 100.0, 1.0, 0.25, 4.0) == 3  # ceil(0.25 * 10)
    assert local_work(1, 100.0, 1.0, 0.25, 4.0) == 1  # never 0


def test_bafl_adjuster_for_a_scripted_history() -> None:
    h = scripted_history()  # 3 s and 8 s per unit, typical sqrt(24)
    bafl = AdaptiveLocalWork(10, "local-steps")
    assert bafl.adjust(1, h, {}) == {"local-steps": round(10 * math.sqrt(24) / 3)}
    assert bafl.adjust(2, h, {}) == {"local-steps": round(10 * math.sqrt(24) / 8)}
    assert bafl.adjust(3, h, {}) == {"local-steps": 10}  # not timed yet: the base
    assert bafl.spec == "bafl:0.25:4"
    for bad in (dict(base=0), dict(base=True), dict(base=10, low=0.0)):
        with pytest.raises(ValueError):
            AdaptiveLocalWork(**bad)  # type: ignore[arg-type]


def test_a_bafl_bound_past_the_largest_work_is_refused() -> None:
    """``floor(high * base)`` overflowed at dispatch for a finite ``high`` such
    as 1e308, once a node was timed: the run died with an OverflowError. The
    work is a train config's integer, so ``high * base`` is now held to
    2**63 - 1, in Python and in the run config."""
    with pytest.raises(ValueError, match=r"high \* base must be at most 2\*\*63 - 1"):
        AdaptiveLocalWork(3, high=1e308)
    with pytest.raises(ValueError, match="run config key 'adaptive-work'"):
        fedbuff_from_run_config(
            {**TOY_CONFIG, "adaptive-work": "bafl:0.25:1e308"}, min_available_nodes=6
        )
    # a bound at the limit is taken (2**62 with a base of 4; 2**63 is not),
    # and a node timed as all but instant is asked exactly that much work
    with pytest.raises(ValueError, match="high"):
        AdaptiveLocalWork(4, high=2.0**61)
    bafl = AdaptiveLocalWork(4, high=2.0**60)
    history = NodeHistory()
    for node, seconds in ((1, 1e-300), (2, 1e300)):
        history.dispatched(node, 0.0, 1.0)
        history.updated(node, seconds)
    assert bafl.adjust(1, history, {}) == {"local-steps": 2**62}
    assert MAX_WORK == 2**63 - 1


def test_a_node_timed_as_almost_instant_gets_the_upper_bound() -> None:
    """``round(base * typical / seconds)`` was round(inf), an OverflowError,
    for a node whose time per unit of work is subnormal: the clip now comes
    before the rounding."""
    assert local_work(4, 5e-324, 1.0, 0.25, 4.0) == 16
    assert local_work(4, 1.0, 1e308, 0.25, 4.0) == 16


def test_adaptive_scheduling_learns_from_the_loops_hooks() -> None:
    policy = AdaptiveScheduling(
        [FedSALearningRate(0.1), AdaptiveLocalWork(4)], work_key="local-steps"
    )
    base = ConfigRecord({"lr": 0.1, "batch-size": 8})
    first = policy.train_config(7, 0, base)
    assert first is not None and first["local-steps"] == 4
    assert first["batch-size"] == 8 and first["lr"] == pytest.approx(0.1)
    policy.on_dispatch(7, 0, 0.0, 4.0)
    policy.train_config(8, 0, base)
    policy.on_dispatch(8, 0, 0.0, 4.0)
    policy.on_update(7, 0, 4.0)  # 1 s per step
    policy.on_update(8, 0, 16.0)  # 4 s per step
    fast, slow = policy.train_config(7, 1, base), policy.train_config(8, 1, base)
    assert fast is not None and slow is not None
    assert (fast["local-steps"], slow["local-steps"]) == (8, 2)  # typical: 2 s
    assert fast["lr"] == pytest.approx(0.1) == slow["lr"]  # equal participation
    assert AdaptiveScheduling([]).train_config(1, 0, base) is None
    assert "fedsa:0.5:2" in repr(policy)


# ----------------------------------------------------------------- fairness
def test_inverse_participation_for_scripted_counts() -> None:
    participation = {1: 9, 2: 9, 3: 0}  # mean 6
    f = inverse_participation([1, 3], [10.0, 10.0], participation, 4.0)
    raw = [7 / 10, 7 / 1]
    scale = 20 / (10 * raw[0] + 10 * raw[1])
    assert raw[0] * scale < 0.25
    assert f[0] == 0.25  # clipped at 1 / max_factor
    assert f[1] == pytest.approx(raw[1] * scale)
    assert f[1] > 1 > f[0]
    # unclipped, the buffer's total weight is unchanged
    g = inverse_participation([1, 2, 3], [5.0, 5.0, 10.0], {1: 1, 2: 1, 3: 2}, 4.0)
    assert sum(n * x for n, x in zip([5.0, 5.0, 10.0], g, strict=True)) == (
        pytest.approx(20.0)
    )
    # a node not seen before counts 0; equal counts: all 1
    assert inverse_participation([1, 2], [1.0, 1.0], {}, 4.0) == [1.0, 1.0]
    bounded = inverse_participation([1, 2], [1.0, 1.0], {1: 1000}, 2.0)
    assert bounded[0] == 0.5  # mean 500: raw 501 / 1001 and 501, scaled, clipped
    assert bounded[1] == pytest.approx(501 * 2 / (501 / 1001 + 501))
    with pytest.raises(ValueError, match="max_factor"):
        InverseParticipation(0.5)
    with pytest.raises(ValueError, match="max_factor"):
        InverseParticipation(True)  # was taken as a bound of 1: every factor 1


def test_fairness_still_favours_the_rare_node_for_huge_example_counts() -> None:
    """``sum(n * raw)`` overflowed for finite effective counts near the float
    maximum (a ``claimed`` weighting takes a node's word): the scale became 0
    and every factor 1/max, the rare node's too. The factors do not depend on
    the examples' scale, so they are those of the same counts scaled down."""
    fair = InverseParticipation(4.0)
    participation = {1: 0, 2: 100}
    huge = fair.factors([1, 2], [1e308, 7e307], participation)
    assert huge[0] > huge[1]
    assert huge == pytest.approx(fair.factors([1, 2], [1e8, 7e7], participation))


# ------------------------------------------------------------------- tuning
def test_next_buffer_size_moves_towards_the_target_at_most_2x() -> None:
    assert next_buffer_size(10, 4.0, 4.0, 1, 100) == 10
    assert next_buffer_size(10, 6.0, 4.0, 1, 100) == 15
    assert next_buffer_size(10, 40.0, 4.0, 1, 100) == 20  # at most doubled
    assert next_buffer_size(10, 0.0, 4.0, 1, 100) == 5  # at most halved
    assert next_buffer_size(10, 40.0, 4.0, 1, 12) == 12  # max_k
    assert next_buffer_size(10, 0.0, 4.0, 8, 100) == 8  # min_k


def test_buffer_tuner_for_a_scripted_sequence_of_versions() -> None:
    tuner = BufferTuner(StalenessTarget(2.0, 2, 40, slack=2.0), 4, None)
    # 4 updates in 2 s with staleness 4: K 4 -> 8, rate 2/s, tau = 2 * 8 / 2
    assert tuner.observe(2.0, [4, 4, 4, 4]) == (8, 8.0)
    # 8 updates in 2 s, staleness 2: EMA 3 -> K = 12; rate EMA 3/s, tau 8
    assert tuner.observe(4.0, [2] * 8) == (12, 8.0)
    # nothing aggregated: K follows the smoothed staleness, rate unchanged
    k, tau = tuner.observe(5.0, [])
    assert (k, tau) == (18, 12.0)
    no_tau = BufferTuner(StalenessTarget(2.0), 4, 30.0)
    assert no_tau.observe(1.0, [2, 2, 2, 2]) == (4, 30.0)
    for bad in (
        dict(target=0.0),
        dict(target=2.0, min_k=0),
        dict(target=2.0, min_k=5, max_k=4),
        dict(target=2.0, slack=-1.0),
        dict(target=math.nan),
    ):
        with pytest.raises(ValueError):
            StalenessTarget(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        (dict(target=4.0, min_k=1.5, max_k=10), "min_k"),  # spec did not parse back
        (dict(target=4.0, min_k=1, max_k=math.inf), "max_k"),
        (dict(target=4.0, min_k=1, max_k=2**63), "max_k"),  # past a run config's int
        (dict(target=True), "target"),  # taken as a target of 1
        (dict(target=4.0, min_k=True), "min_k"),
        (dict(target=4.0, slack=True), "slack"),
        (dict(target=4.0, smoothing=math.nan), "smoothing"),
        (dict(target=4.0, smoothing=True), "smoothing"),
    ],
)
def test_staleness_target_refuses_what_its_parser_refuses(
    bad: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        StalenessTarget(**bad)  # type: ignore[arg-type]


def test_a_tiny_staleness_target_gives_the_upper_bound() -> None:
    """``round(k * s / target)`` was round(inf), an OverflowError after the
    first version, for a tiny target (1e-308) that the run config takes:
    the clip now comes before the rounding."""
    tuner = BufferTuner(StalenessTarget(1e-308, 1, 10), 5, None)
    assert tuner.observe(1.0, [1, 2]) == (10, None)  # doubled, at most max_k
    assert next_buffer_size(5, 1.5, 5e-324, 1, 100) == 10
    strategy = fedbuff_from_run_config(
        {**TOY_CONFIG, "buffer-tuning": "staleness:1e-308:1:6"}, min_available_nodes=6
    )
    result, _ = run_toy(strategy, versions=6)
    sizes = [v.buffer_size for v in result.versions]
    assert sizes[-1] == 6 and all(s is not None and 1 <= s <= 6 for s in sizes)


def test_a_tau_past_the_float_range_is_no_limit(tmp_path: Path) -> None:
    """``slack * K / rate`` overflowed to tau = inf for a finite slack (1e308);
    with a ledger, the block recording it failed ("canonical JSON cannot
    hold NaN or Inf") and the run died. A tau past any clock is no limit, as
    the run config reads ``max-wait = inf``."""
    tuner = BufferTuner(StalenessTarget(4.0, 1, 10, slack=1e308), 5, None)
    assert tuner.observe(1.0, [1, 1]) == (3, None)  # 1e308 * 3 / (2 per s)
    assert BufferTuner.resume(tuner.policy, tuner.record(), 2.0, [1]).max_wait is None
    cfg: dict[str, ConfigValue] = {
        **TOY_CONFIG,
        "buffer-tuning": "staleness:4:1:10:1e308",
        "ledger-path": str(tmp_path / "l.db"),
    }
    with closing_ledger(fedbuff_from_run_config(cfg, min_available_nodes=6)) as run:
        result, _ = run_toy(run, versions=6)
        assert isinstance(run.ledger, Ledger)
        report = replay(run.ledger)
    assert len(result.versions) == 6
    assert all(v.max_wait is None or math.isfinite(v.max_wait) for v in result.versions)
    assert report.complete and len(report.replayed) == 6, report


@pytest.mark.parametrize(
    "other",
    [
        StalenessTarget(4.0, 1, 10, slack=2.0, smoothing=0.9),
        StalenessTarget(4.0000001, 1, 10, slack=2.0),
        StalenessTarget(4.0, 1, 10, slack=2.0000001),
    ],
)
def test_the_config_digest_tells_tuning_policies_apart(other: StalenessTarget) -> None:
    """The spec left the smoothing out and wrote target and slack with ``%g``:
    the config digest did not tell these apart, so a resume with changed
    tuning was neither refused nor recorded. Each spec parses back exactly."""
    base = FedBuff(buffer_tuning=StalenessTarget(4.0, 1, 10, slack=2.0))
    assert base.config_digest() != FedBuff(buffer_tuning=other).config_digest()
    assert buffer_tuning(other.spec) == other


def test_tuning_specs_without_the_new_fields_are_as_before() -> None:
    """The specs, so the config digests, of the default smoothing and of short
    numbers (the benchmark's, the docs') are unchanged."""
    assert StalenessTarget(1.5).spec == "staleness:1.5:1:1000"
    assert StalenessTarget(1.5, 5, 50, 2.0).spec == "staleness:1.5:5:50:2"
    assert StalenessTarget(2.7, 1, 6, slack=1.5).spec == "staleness:2.7:1:6:1.5"
    smooth = StalenessTarget(4.0, 1, 10, smoothing=0.25)
    assert smooth.spec == "staleness:4:1:10:none:0.25"
    assert buffer_tuning(smooth.spec) == smooth
    assert buffer_tuning("staleness:4:1:10:none") == StalenessTarget(4.0, 1, 10)


# ------------------------------------------------------------ config keys
def test_run_config_keys_build_the_policies() -> None:
    cfg = {
        "lr": 0.05,
        "local-steps": 6,
        "scheduling": "shuffle",
        "adaptive-lr": "fedsa:0.25:3",
        "adaptive-work": "bafl",
        "fairness": "inverse:3",
        "buffer-tuning": "staleness:4:2:50:1.5",
    }
    strategy = fedbuff_from_run_config(cfg)
    policy = strategy.scheduling
    assert isinstance(policy, AdaptiveScheduling)
    assert isinstance(policy.base, ShuffleAll) and policy.work_key == "local-steps"
    assert policy.adjusters == [
        FedSALearningRate(0.05, 0.25, 3.0),
        AdaptiveLocalWork(6, "local-steps"),
    ]
    assert strategy.fairness == InverseParticipation(3.0)
    assert strategy.buffer_tuning == StalenessTarget(4.0, 2, 50, 1.5)
    config = strategy.config_dict()
    assert config["fairness"] == "inverse:3"
    assert config["buffer_tuning"] == "staleness:4:2:50:1.5"
    epochs = fedbuff_from_run_config({"local-epochs": 2, "adaptive-work": "bafl"})
    assert isinstance(epochs.scheduling, AdaptiveScheduling)
    assert epochs.scheduling.adjusters == [AdaptiveLocalWork(2, "local-epochs")]
    assert isinstance(epochs.scheduling.base, RandomSample)
    off = fedbuff_from_run_config(
        {"adaptive-lr": "", "adaptive-work": "", "fairness": "", "buffer-tuning": ""}
    )
    assert isinstance(off.scheduling, RandomSample)
    assert off.fairness is None and off.buffer_tuning is None
    assert "fairness" not in off.config_dict()  # default digests unchanged


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"adaptive-lr": "fedsa"}, "needs the key 'lr'"),
        ({"adaptive-lr": "fedsa:2:3", "lr": 0.1}, "adaptive-lr"),
        ({"adaptive-lr": "sgd", "lr": 0.1}, "unknown adaptive lr"),
        ({"adaptive-lr": "fedsa", "lr": -1.0}, "'lr'"),
        ({"adaptive-work": "bafl"}, "needs the key 'local-epochs'"),
        ({"adaptive-work": "bafl:0:2", "local-epochs": 1}, "adaptive-work"),
        ({"adaptive-work": "bafl", "local-steps": 2.5}, "local-steps"),
        ({"fairness": "inverse:0.5"}, "max_factor"),
        ({"fairness": "inverse:x"}, "fairness"),
        ({"fairness": 3}, "a string"),
        ({"buffer-tuning": "staleness"}, "unknown buffer tuning"),
        ({"buffer-tuning": "staleness:-1"}, "target"),
        ({"buffer-tuning": "staleness:4:9:3"}, "min_k"),
    ],
)
def test_bad_run_config_values_are_rejected_clearly(
    cfg: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fedbuff_from_run_config(cfg)  # type: ignore[arg-type]


def test_spec_parsers_round_trip() -> None:
    assert fedsa_learning_rate("fedsa:0.5:2", 0.1) == FedSALearningRate(0.1)
    assert bafl_local_work("bafl:0.25:4", 3, "k") == AdaptiveLocalWork(3, "k")
    assert fairness_weighting("inverse:4") == InverseParticipation(4.0)
    target = StalenessTarget(3.0, 1, 9, 2.0)
    assert buffer_tuning(target.spec) == target
    assert buffer_tuning("none") is None and fairness_weighting("none") is None


def test_bafl_and_fedsa_bounds_read_back_exactly_from_their_specs() -> None:
    """``%g`` wrote 0.123456789 as 0.123457: the spec did not parse back."""
    bafl = AdaptiveLocalWork(3, "k", 0.123456789, 4.000001)
    assert bafl_local_work(bafl.spec, 3, "k") == bafl
    fedsa = FedSALearningRate(0.1, 0.123456789, 2.000001)
    assert fedsa_learning_rate(fedsa.spec, 0.1) == fedsa
    assert AdaptiveLocalWork(3).spec == "bafl:0.25:4"  # short where exact


def test_a_fairness_bound_reads_back_exactly_from_its_spec() -> None:
    """The spec is what a ledger records and replay parses: a bound with
    more digits than ``%g`` writes must come back as the same float."""
    assert InverseParticipation(4.0).spec == "inverse:4"  # short where exact
    for bound in (2.123456789, 1 + 2**-40):
        fair = InverseParticipation(bound)
        assert fairness_weighting(fair.spec) == fair


# ------------------------------------------------------ data and the client
def test_tier_partition_gives_each_tier_its_own_classes() -> None:
    labels = np.repeat(np.arange(10), 60)
    tiers = parse_tier_classes("0,1,2,3;4,5,6;7,8,9")
    parts = tier_partition(labels, 9, tiers, 0.5, seed=1, min_partition_size=1)
    for i, part in enumerate(parts):
        assert set(labels[part]) <= set(tiers[i % 3])
    everything = np.sort(np.concatenate(parts))
    assert np.array_equal(everything, np.arange(600))  # disjoint, all kept
    with pytest.raises(ValueError, match="disjoint"):
        tier_partition(labels, 9, [[0, 1], [1, 2]], 0.5)
    with pytest.raises(ValueError, match="tiers"):
        tier_partition(labels, 2, tiers, 0.5)
    with pytest.raises(ValueError, match="look like"):
        parse_tier_classes("0,1;a")


def test_train_runs_exactly_the_steps_asked_for() -> None:
    import torch

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.arange(10) % 2
    calls = []
    net = torch.nn.Linear(4, 2)
    net.register_forward_hook(lambda *_: calls.append(1))
    train(net, x, y, epochs=1, lr=0.1, batch_size=4, seed=0, steps=7)
    assert len(calls) == 7  # two passes of 3 batches, and one more
    calls.clear()
    train(net, x, y, epochs=2, lr=0.1, batch_size=4, seed=0)
    assert len(calls) == 6
    with pytest.raises(ValueError, match="steps"):
        train(net, x, y, epochs=1, lr=0.1, batch_size=4, seed=0, steps=-1)


# ------------------------------------------------------- virtual-grid runs
SPEEDS = [1.0, 1.0, 1.0, 0.25, 0.25, 0.05]


def steps_work(msg: Message, _reply: Message) -> float:
    """A message costs its ``local-steps`` (1 when not set) seconds at speed 1."""
    config = msg.content.config_records.get("config")
    steps = config.get("local-steps", 1) if config is not None else 1
    return float(steps)  # type: ignore[arg-type]


def run_toy(strategy: FedBuff, versions: int = 40, **grid: object):  # type: ignore[no-untyped-def]
    seen: dict[int, list[ConfigRecord]] = defaultdict(list)

    def record(msg: Message, context: Context) -> None:
        pid = int(context.node_config["partition-id"])
        seen[pid].append(msg.content.config_records["config"])

    g = VirtualGrid(
        toy_client_app(on_train=record),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=steps_work,
        seed=0,
        **grid,  # type: ignore[arg-type]
    )
    result = strategy.start(
        g,
        initial_arrays(),
        num_rounds=versions,
        timeout=1e4,
        train_config=ConfigRecord({"lr": 0.1, "local-steps": 4}),
    )
    assert result.stop_reason == "completed"
    return result, seen


def toy_fedbuff(**kwargs: object) -> FedBuff:
    return FedBuff(
        buffer_size=2,
        fraction_evaluate=0.0,
        max_staleness=None,
        min_available_nodes=len(SPEEDS),
        seed=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_fedsa_run_gives_the_slow_node_a_larger_lr() -> None:
    policy = AdaptiveScheduling([FedSALearningRate(0.1)])
    _, seen = run_toy(toy_fedbuff(scheduling=policy))
    last_lr = {pid: float(configs[-1]["lr"]) for pid, configs in seen.items()}
    assert last_lr[5] == pytest.approx(0.2)  # rarest: the upper bound
    assert last_lr[0] < 0.1  # frequent: below the base
    assert all(0.05 <= lr <= 0.2 for lr in last_lr.values())


def test_bafl_run_evens_out_round_trips() -> None:
    policy = AdaptiveScheduling([AdaptiveLocalWork(4)], work_key="local-steps")
    _, seen = run_toy(toy_fedbuff(scheduling=policy))
    last = {pid: int(configs[-1]["local-steps"]) for pid, configs in seen.items()}
    assert last[0] > 4 > last[3] >= last[5] >= 1  # fast: more work; slow: less
    assert all(1 <= s <= 16 for s in last.values())


def test_fairness_run_moves_weight_to_the_rare_node() -> None:
    plain, _ = run_toy(toy_fedbuff())
    fair, _ = run_toy(toy_fedbuff(fairness=InverseParticipation(4.0)))
    assert plain.participation == fair.participation  # same schedule
    rare = min(plain.participation, key=plain.participation.__getitem__)
    often = max(plain.participation, key=plain.participation.__getitem__)
    assert fair.weight_share[rare] > 1.25 * plain.weight_share[rare]
    assert fair.weight_share[often] < plain.weight_share[often]


def test_tuning_run_records_each_choice_in_versions_and_ledger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tuning = StalenessTarget(0.5, 1, 6, slack=2.0)
    strategy = toy_fedbuff(buffer_tuning=tuning, ledger=tmp_path / "l.db")
    result, _ = run_toy(strategy, versions=20)
    sizes = [v.buffer_size for v in result.versions]
    assert all(s is not None and 1 <= s <= 6 for s in sizes)
    assert len(set(sizes)) > 1  # it did tune
    assert all(v.num_updates <= (v.buffer_size or 0) for v in result.versions)
    assert all(v.max_wait is None or v.max_wait > 0 for v in result.versions)
    ledger = Ledger(tmp_path / "l.db")
    try:
        bodies = [b.body for b in ledger.blocks()][1:]
        report = replay(ledger)  # K and tau change no weight: it replays
        assert report.complete and len(report.replayed) == 20, report
    finally:
        ledger.close()
    assert [b["buffer"]["buffer_size"] for b in bodies] == sizes
    assert [b["buffer"]["max_wait"] for b in bodies] == [
        v.max_wait for v in result.versions
    ]
    plain, _ = run_toy(toy_fedbuff(), versions=20)
    assert all(v.buffer_size is None for v in plain.versions)


def test_all_policies_together_run_and_stay_in_bounds() -> None:
    policy = AdaptiveScheduling(
        [FedSALearningRate(0.1), AdaptiveLocalWork(4)], work_key="local-steps"
    )
    result, seen = run_toy(
        toy_fedbuff(
            scheduling=policy,
            fairness=InverseParticipation(4.0),
            buffer_tuning=StalenessTarget(1.0, 1, 6),
        )
    )
    assert len(result.versions) == 40 and not result.rejected
    assert len(result.participation) == len(SPEEDS)
    for configs in seen.values():
        assert all(0.05 <= float(c["lr"]) <= 0.2 for c in configs)
        assert all(1 <= int(c["local-steps"]) <= 16 for c in configs)
    total = sum(result.weight_share.values())
    assert math.isfinite(total) and total > 0


def test_the_app_trains_the_lr_and_steps_its_train_config_asks_for() -> None:
    pytest.importorskip("torch")
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.task import load_partition, new_model
    from flwr.app import ArrayRecord, MessageType, RecordDict

    from flchain_flwr.sim import app_run_config, uniform

    tiers = "0,1,2,3;4,5,6;7,8,9"
    cfg = app_run_config("apps/flchain_cnn", {"tier-classes": tiers, "seed": 3})
    grid = VirtualGrid(client_app, uniform(6), run_config=cfg, seed=0)
    arrays = ArrayRecord(new_model("digits", 0).state_dict())

    def reply_of(node: int, config: dict[str, int | float]) -> dict[str, float]:
        content = RecordDict(
            {"arrays": arrays, "config": ConfigRecord({"server-round": 1, **config})}
        )
        message = Message(content, grid.node_ids[node], MessageType.TRAIN)
        (reply,) = grid.send_and_receive([message])
        assert not reply.has_error(), reply.error
        return dict(reply.content.metric_records["metrics"])  # type: ignore[arg-type]

    _, y = load_partition(
        "digits", 4, 6, float(cfg["dirichlet-alpha"]), 3, False, 0, tiers
    )
    assert set(y) <= {4, 5, 6}  # node 4 is in tier 1
    steps = reply_of(4, {"local-steps": 3, "lr": 0.01})
    assert steps["examples-trained"] == 3 * int(cfg["batch-size"])
    assert steps["num-examples"] == len(y)
    epochs = reply_of(4, {})  # the run config's 5 epochs
    assert epochs["examples-trained"] == int(cfg["local-epochs"]) * len(y)
    moved = reply_of(4, {"local-steps": 3, "lr": 0.5})["train-loss"]
    assert moved != steps["train-loss"]  # the lr was used


# ------------------------------------------------ the work a policy is told
def _bafl_fingerprint(queued: bool) -> tuple[dict[int, list[int]], str]:
    """Each node's asked ``local-steps`` in order, and the final model's hash,
    of a scripted BAFL run (with queued dispatch: its queued starts too)."""
    policy = AdaptiveScheduling([AdaptiveLocalWork(4)], work_key="local-steps")
    result, seen = run_toy(
        toy_fedbuff(scheduling=policy, queued_dispatch=queued), versions=30
    )
    asked = {pid: [int(c["local-steps"]) for c in cs] for pid, cs in seen.items()}
    assert result.arrays is not None
    digest = hashlib.sha256()
    for name, array in result.arrays.items():
        digest.update(name.encode() + array.numpy().tobytes())
    return dict(sorted(asked.items())), digest.hexdigest()


FAST, MID, QMID = [4] * 4 + [7] * 10, [4] + [2] * 8 + [3], [4] + [2] * 9 + [3]


@pytest.mark.parametrize(
    ("queued", "asked", "model"),
    [
        (
            False,
            {0: FAST, 1: FAST, 2: FAST, 3: MID, 4: MID, 5: [4, 1]},
            "6109ae08f2aff233404afdb2a2cfb58a0c115f0e0b11d1b00e4e1e2f98996f74",
        ),
        (
            True,  # queued starts: timed from when they start, with their work
            {0: [*FAST, 7], 1: [*FAST, 7], 2: [*FAST, 7], 3: QMID, 4: QMID, 5: [4, 1]},
            "7fc94d6ca38c9d015761ea84f55d84731af4e599b2ced127bee023a484802761",
        ),
    ],
)
def test_bafl_times_each_node_by_the_work_dispatch_recorded(
    queued: bool, asked: dict[int, list[int]], model: str
) -> None:
    """The policy is told the work each dispatch recorded (``Flight.work``),
    not a copy of its own: for ordinary work values the asked work and the
    model are as they were before (pinned from the run before the change)."""
    assert _bafl_fingerprint(queued) == (asked, model)


class _SetsWork:
    """An adjuster asking every node for ``value`` under ``local-steps``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def adjust(
        self, node_id: int, history: NodeHistory, config: dict[str, object]
    ) -> dict[str, int | float]:
        return {"local-steps": self.value}

    @property
    def spec(self) -> str:
        return f"sets:{self.value}"


@pytest.mark.parametrize("value", [0, 0.0, -3, math.inf])
def test_work_that_is_not_a_finite_positive_number_times_as_one_unit(
    value: float,
) -> None:
    """The policy times a round trip by the work dispatch recorded, which is
    1 for a work key that is not a finite number > 0 (as FedNova weighs it):
    such a node is timed per message, not left untimed."""
    policy = AdaptiveScheduling([_SetsWork(value)], work_key="local-steps")
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=1.0), DeviceProfile(speed=0.5)],
        work_fn=constant_work(2.0),
        seed=0,
    )
    FedBuff(
        buffer_size=1,
        fraction_evaluate=0.0,
        max_staleness=None,
        seed=0,
        scheduling=policy,
    ).start(grid, initial_arrays(), num_rounds=4, timeout=100.0)
    fast, slow = grid.node_ids
    assert policy.history.seconds_per_work(fast) == 2.0
    assert policy.history.seconds_per_work(slow) == 4.0

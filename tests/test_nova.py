"""Work normalisation (FedNova): its factors, the asked work from dispatch to
block, its run-config key, and `flchain ledger verify --replay` over it."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flchain_flwr.configvalues import ConfigValue
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.replay import replay
from flchain_flwr.ledger.replaysettings import Settings
from flchain_flwr.ledger.replaytypes import Failed
from flchain_flwr.ledger.replayweights import check_weights
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AdaptiveLocalWork,
    AdaptiveScheduling,
    AsyncResult,
    FedBuff,
    InverseParticipation,
    UpdateMemory,
    WorkNormalisation,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.block import BufferedUpdate
from flchain_flwr.strategies.nova import (
    asked_work,
    capped_factors,
    work_factors,
    work_normalisation,
)
from flchain_flwr.strategies.staleness import staleness_from_repr
from flchain_flwr.strategies.updates import ParsedUpdate

from .test_replay import flchain, rewrite
from .test_stragglers import SPEEDS, steps_work
from .toy import FlowerLogLines, initial_arrays, toy_client_app

NOVA = WorkNormalisation()
BASE_STEPS = 4


# ------------------------------------------------------------------ factors
def test_equal_work_gives_factors_of_exactly_one() -> None:
    assert work_factors([1.0, 1.0, 1.0], [10.0, 30.0, 7.0]) == [1.0, 1.0, 1.0]
    assert work_factors([2.0, 2.0], [10.0, 30.0]) == [1.0, 1.0]
    assert work_factors([1.0], [0.0]) == [1.0]  # no examples: factor 1


def test_four_times_the_work_gets_a_quarter_of_the_weight() -> None:
    assert work_factors([1.0, 4.0], [10.0, 10.0]) == [1.6, 0.4]
    assert NOVA.factors([1, 4], [10.0, 10.0]) == [1.6, 0.4]


def test_the_buffers_weighted_total_is_kept() -> None:
    work, examples = [1.0, 4.0, 2.0, 16.0, 3.0], [12.0, 50.0, 7.0, 31.0, 90.0]
    factors = work_factors(work, examples)
    weighted = sum(n * f for n, f in zip(examples, factors, strict=True))
    assert weighted == pytest.approx(sum(examples), rel=1e-12)
    # FedNova: each delta divided by its work, scaled by the harmonic mean
    tau_eff = sum(examples) / sum(n / w for n, w in zip(examples, work, strict=True))
    for f, w in zip(factors, work, strict=True):
        assert f == pytest.approx(tau_eff / w, rel=1e-12)


def test_asked_work_is_a_finite_positive_number_or_one() -> None:
    assert asked_work({"local-steps": 8}, "local-steps") == 8.0
    assert asked_work({"local-epochs": 0.5}, "local-epochs") == 0.5
    assert asked_work({"local-steps": 8}, None) == 1.0
    assert asked_work(None, "local-steps") == 1.0
    for bad in (0, -2, math.nan, math.inf, True, "8", None):
        assert asked_work({"local-steps": bad}, "local-steps") == 1.0


# --------------------------------------------------------------- run config
def test_the_run_config_key_builds_the_policy_and_records_it() -> None:
    keys: dict[str, ConfigValue] = {"adaptive-work": "bafl", "local-steps": 4}
    strategy = fedbuff_from_run_config({**keys, "work-normalisation": "fednova"})
    assert strategy.work_normalisation == NOVA
    assert strategy.scheduling.work_key == "local-steps"
    assert strategy.config_dict()["work_normalisation"] == "fednova"
    for off in ("", "none", " none "):
        plain = fedbuff_from_run_config({**keys, "work-normalisation": off})
        assert plain.work_normalisation is None
        assert "work_normalisation" not in plain.config_dict()  # digest unchanged
    assert work_normalisation(" fednova ") == NOVA and NOVA.spec == "fednova"


@pytest.mark.parametrize(
    "spec", ["fednova:2:3", "nova", "FedNova", "inverse", "none:2", "inverse:2"]
)
def test_an_unknown_spec_names_the_accepted_forms(spec: str) -> None:
    with pytest.raises(
        ValueError, match="expected '', 'none', 'fednova' or 'fednova:<max>'"
    ):
        work_normalisation(spec)
    with pytest.raises(ValueError, match="work-normalisation"):
        fedbuff_from_run_config({"work-normalisation": spec})


def test_a_capped_spec_builds_the_cap_and_records_it() -> None:
    keys: dict[str, ConfigValue] = {"adaptive-work": "bafl", "local-steps": 4}
    strategy = fedbuff_from_run_config({**keys, "work-normalisation": "fednova:2"})
    assert strategy.work_normalisation == WorkNormalisation(2.0)
    assert strategy.config_dict()["work_normalisation"] == "fednova:2"
    assert work_normalisation(" fednova:2.5 ") == WorkNormalisation(2.5)
    assert WorkNormalisation(1).spec == "fednova:1"
    # the spec gives back the cap exactly, whatever its digits (replay reads it)
    for cap in (2.123456789, 1 + 2**-40, 1e300):
        assert work_normalisation(WorkNormalisation(cap).spec) == WorkNormalisation(cap)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("fednova:0.5", "a finite number >= 1, got 0.5"),
        ("fednova:0", "a finite number >= 1, got 0.0"),
        ("fednova:-2", "a finite number >= 1, got -2.0"),
        ("fednova:inf", "a finite number >= 1, got inf"),
        ("fednova:nan", "a finite number >= 1, got nan"),
        ("fednova:two", "is not a number"),
        ("fednova:", "is not a number"),
    ],
)
def test_a_cap_that_is_not_a_finite_number_of_at_least_one_is_refused(
    spec: str, why: str
) -> None:
    with pytest.raises(ValueError, match=f"bad work normalisation '{spec}': .*{why}"):
        work_normalisation(spec)
    with pytest.raises(ValueError, match="work-normalisation"):
        fedbuff_from_run_config({"work-normalisation": spec})
    with pytest.raises(ValueError, match="a finite number >= 1"):
        WorkNormalisation(math.inf)
    with pytest.raises(ValueError, match="max_factor"):
        WorkNormalisation(True)  # was taken as a cap of 1: every factor 1


# ------------------------------------------------------------------- a cap
def test_a_cap_clips_each_factor_then_renormalises() -> None:
    """One update asked 1 step among four asked 12, equal examples: uncapped
    3.75 and 0.3125; capped at 2 they clip to 2 and 0.5, then scale by
    5 / 4 so the buffer's total is kept: 2.5 (past the cap) and 0.625."""
    work, examples = [1.0, 12.0, 12.0, 12.0, 12.0], [10.0] * 5
    assert work_factors(work, examples) == pytest.approx([3.75] + [0.3125] * 4)
    assert WorkNormalisation(2).factors(work, examples) == [2.5] + [0.625] * 4
    assert capped_factors([3.75] + [0.3125] * 4, examples, 2) == [2.5] + [0.625] * 4
    # 3.75 and 0.3125 lie within [1/4, 4]: a cap of 4 leaves them as they are
    assert WorkNormalisation(4).factors(work, examples) == work_factors(work, examples)
    assert WorkNormalisation(1).factors(work, examples) == [1.0] * 5  # no effect
    assert capped_factors([1.0, 1.0], [0.0, 0.0], 2) == [1.0, 1.0]  # no examples
    # the docstring's other rows: K = 5 at a cap of 3; K = 20 uncapped and at 2, 3, 4
    assert WorkNormalisation(3).factors(work, examples)[0] == pytest.approx(
        3.4615, abs=1e-4
    )
    work, examples = [1.0] + [12.0] * 19, [10.0] * 20
    firsts = [
        nova.factors(work, examples)[0]
        for nova in (NOVA, *map(WorkNormalisation, (2, 3, 4)))
    ]
    assert firsts == pytest.approx([7.7419, 2.8054, 3.9323, 4.9206], abs=1e-4)


def test_capped_factors_stay_within_max_squared_for_huge_example_counts() -> None:
    """The capped path rescaled as ``c * total / weighted``, which overflowed
    for effective examples near the float maximum (a node claiming ~1.5e308
    with ``claimed`` weighting): a factor came out infinite. It now shares
    the uncapped path's guard (:func:`~.renormalise.overflow_free`): the
    same factors, computed relative to the largest."""
    capped = WorkNormalisation(2.0)
    # asked 12 steps beside an honest node asked 1: clipped to 1 and 2
    factors = capped.factors([12.0, 1.0], [1.5e308, 10.0])
    assert factors == pytest.approx([1.0, 2.0])
    assert capped_factors([1.0, 4.0], [1.5e308, 10.0], 2.0) == pytest.approx(
        capped_factors([1.0, 4.0], [1.5e8, 1e-299], 2.0)
    )
    # the uncapped factors, already guarded, are unchanged
    assert work_factors([12.0, 1.0], [1.5e308, 10.0]) == pytest.approx([1.0, 12.0])


def _share_bound(q: float, p: float) -> float:
    """The most factor an update of example share ``p`` gets when no two
    factors in its buffer differ by more than ``q`` times (total kept)."""
    return q / (1 + (q - 1) * p)


@pytest.mark.parametrize("cap", [1.0, 1.5, 2.0, 3.0, 4.0, 10.0])
def test_the_capped_factors_keep_the_bound_the_docs_state(cap: float) -> None:
    """With ``Q = min(max tau / min tau, cap**2)`` and ``p_i`` update ``i``'s
    share of the buffer's examples: the total is kept, two factors differ by
    at most ``min(tau_j / tau_i, cap**2)`` times (the less work, the larger),
    and ``1 / (p_i + (1 - p_i) Q) <= f_i <= Q / (1 + (Q - 1) p_i)``, so no
    factor leaves ``[1 / cap**2, cap**2]``; and the bound is reached."""
    import random

    rng = random.Random(int(cap * 10))
    nova = WorkNormalisation(cap)
    for _ in range(400):
        size = rng.randint(1, 8)
        work = [float(rng.choice((1, 2, 3, 5, 8, 12, 16))) for _ in range(size)]
        examples = [float(rng.choice((1, 10, 50, 600))) for _ in range(size)]
        factors = nova.factors(work, examples)
        total = sum(examples)
        kept = sum(n * f for n, f in zip(examples, factors, strict=True))
        assert kept == pytest.approx(total, rel=1e-12)
        q = min(max(work) / min(work), cap**2)
        for f, w, n in zip(factors, work, examples, strict=True):
            p = n / total
            assert f <= _share_bound(q, p) * (1 + 1e-12)
            assert f >= 1 / (p + (1 - p) * q) * (1 - 1e-12)
            assert 1 / cap**2 * (1 - 1e-12) <= f <= cap**2 * (1 + 1e-12)
            for g, v in zip(factors, work, strict=True):
                if w <= v:
                    assert g <= f * (1 + 1e-12)
                    assert f <= g * min(v / w, cap**2) * (1 + 1e-12)
    # reached: one update asked the least among updates asked the most
    tight = nova.factors([1.0] + [1e6] * 19, [10.0] * 20)
    assert tight[0] == pytest.approx(_share_bound(cap**2, 0.05), rel=1e-12)


def test_a_value_that_is_not_text_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"work-normalisation.*a string"):
        fedbuff_from_run_config({"work-normalisation": 3})


def test_the_app_exposes_the_key_off_and_only_for_fedbuff() -> None:
    pytest.importorskip("torch")
    from flchain_cnn.server_app import FEDBUFF_ONLY, strategy_name

    from flchain_flwr.sim import app_run_config

    config = app_run_config("apps/flchain_cnn")
    assert config["work-normalisation"] == ""
    assert "work-normalisation" in FEDBUFF_ONLY
    nova = {**config, "work-normalisation": "fednova"}
    assert strategy_name(nova) == "fedbuff"
    capped = {**config, "work-normalisation": "fednova:2"}
    assert strategy_name(capped) == "fedbuff"
    built = fedbuff_from_run_config(capped)
    assert built.work_normalisation == WorkNormalisation(2.0)
    with pytest.raises(ValueError, match="does not read work-normalisation"):
        strategy_name({**nova, "strategy": "fedavg"})


# ------------------------------------------------------ virtual-grid runs
def bafl() -> AdaptiveScheduling:
    return AdaptiveScheduling([AdaptiveLocalWork(BASE_STEPS)], work_key="local-steps")


def run(
    versions: int,
    *,
    on_train: Callable[[Message, Context], None] | None = None,
    **settings: Any,
) -> AsyncResult:
    """A FedBuff run on the virtual grid, a message costing its local steps."""
    grid = VirtualGrid(
        toy_client_app(on_train=on_train),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=steps_work,
        seed=0,
    )
    strategy = FedBuff(
        buffer_size=2,
        fraction_evaluate=0.0,
        max_staleness=None,
        min_available_nodes=len(SPEEDS),
        seed=0,
        **settings,
    )
    result = strategy.start(
        grid,
        initial_arrays(),
        num_rounds=versions,
        timeout=1e4,
        train_config=ConfigRecord({"lr": 0.1, "local-steps": BASE_STEPS}),
    )
    assert result.stop_reason == "completed"
    return result


def nova_ledger(path: Path, versions: int, **settings: Any) -> Ledger:
    """A ledger of a BAFL run with work normalisation (and ``settings``)."""
    run(
        versions,
        scheduling=bafl(),
        ledger=path,
        **{"work_normalisation": NOVA, **settings},
    )
    return Ledger(path, create=False)


def staleness_weight(ledger: Ledger, entry: dict[str, Any]) -> float:
    fn = staleness_from_repr(str(ledger.block(0).body["config"]["staleness_fn"]))
    return float(fn(int(entry["staleness"])))


def test_each_update_carries_the_work_its_message_asked_for(tmp_path: Path) -> None:
    """What each block records as a candidate's work is, node by node and in
    order, the ``local-steps`` its train messages carried."""
    sent: dict[str, list[float]] = defaultdict(list)

    def record(msg: Message, context: Context) -> None:
        steps = msg.content.config_records["config"]["local-steps"]
        sent[str(context.node_id)].append(float(steps))  # type: ignore[arg-type]

    path = tmp_path / "l.db"
    run(
        30,
        on_train=record,
        scheduling=bafl(),
        work_normalisation=NOVA,
        ledger=path,
    )
    recorded: dict[str, list[float]] = defaultdict(list)
    with Ledger(path, create=False) as ledger:
        blocks = list(ledger.blocks())[1:]
        assert len(blocks) == 30
        for block in blocks:
            candidates = block.body["work"]["candidates"]
            assert [c["node_id"] for c in candidates] == [
                u["node_id"] for u in block.body["included"]
            ]
            for c in candidates:
                recorded[c["node_id"]].append(float(c["work"]))
        entries = [u for b in blocks for u in b.body["included"]]
        # the factors moved the weights off the staleness weights
        assert any(u["weight"] != staleness_weight(ledger, u) for u in entries)
    assert set(recorded) == set(sent)
    for node, works in recorded.items():
        assert works == sent[node][: len(works)], node
    everything = {w for works in recorded.values() for w in works}
    assert len(everything) > 2 and BASE_STEPS in everything  # BAFL varied them


def test_without_adaptive_work_it_warns_and_changes_nothing() -> None:
    plain = run(12)
    with FlowerLogLines(logging.WARNING) as logs:
        nova = run(12, work_normalisation=NOVA)
    assert any("work normalisation is on" in line for line in logs.lines), logs.lines
    assert plain.arrays is not None and nova.arrays is not None
    for name, array in plain.arrays.items():
        assert nova.arrays[name].numpy().tobytes() == array.numpy().tobytes()
    assert nova.weight_share == plain.weight_share
    with FlowerLogLines(logging.WARNING) as logs:
        run(2, scheduling=bafl(), work_normalisation=NOVA)
    assert not any("work normalisation" in line for line in logs.lines)


def test_it_moves_weight_from_the_fast_nodes_to_the_slow_ones() -> None:
    plain = run(40, scheduling=bafl())
    nova = run(40, scheduling=bafl(), work_normalisation=NOVA)
    assert plain.participation == nova.participation  # the same schedule
    fast = max(plain.participation, key=plain.participation.__getitem__)
    slow = min(plain.participation, key=plain.participation.__getitem__)
    assert nova.weight_share[fast] < plain.weight_share[fast]
    assert nova.weight_share[slow] > plain.weight_share[slow]


def test_beside_the_update_memory_it_runs() -> None:
    """Remembered updates keep the weight they got in their own buffer."""
    result = run(
        30, scheduling=bafl(), work_normalisation=NOVA, update_memory=UpdateMemory()
    )
    assert len(result.versions) == 30 and not result.rejected
    assert all(math.isfinite(s) and s > 0 for s in result.weight_share.values())


# ------------------------------------------------------------------- replay
def test_a_bafl_run_with_work_normalisation_replays(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with nova_ledger(path, 8) as ledger:
        assert ledger.block(0).body["config"]["work_normalisation"] == "fednova"
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    assert "replay: 8 of 8 blocks after genesis" in text, text


def test_it_replays_beside_fairness(tmp_path: Path) -> None:
    fair = InverseParticipation(4.0)
    with nova_ledger(tmp_path / "l.db", 8, fairness=fair) as ledger:
        body = ledger.block(3).body
        assert body["fairness"]["candidates"] == [
            {k: v for k, v in c.items() if k not in ("work", "digest")}
            for c in body["work"]["candidates"]
        ]
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 8, report


def test_a_resumed_run_with_it_replays(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    nova_ledger(path, 3).close()
    with nova_ledger(path, 8) as ledger:
        assert len(ledger) == 9
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 8, report


def test_a_pov_committee_replays_it_before_signing(tmp_path: Path) -> None:
    from flchain_flwr.pov import Committee, Threshold

    from .test_pov import verifiers

    committee = Committee(verifiers(4), threshold=Threshold(value=0))
    with nova_ledger(tmp_path / "l.db", 4, committee=committee) as ledger:
        verified = ledger.verify()
        assert verified.pov
        assert "in 4 of them a quorum of signers recomputed the model" in str(
            verified
        ), verified
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 4, report


def test_forged_work_fails_naming_the_block_and_update(tmp_path: Path) -> None:
    with nova_ledger(tmp_path / "l.db", 6) as ledger:
        height, index = 3, 0
        assert len(ledger.block(height).body["work"]["candidates"]) > 1

        def forge(body: dict[str, Any]) -> None:  # twice the work it was asked
            first, *rest = body["work"]["candidates"]
            forged = dict(first, work=2 * first["work"])
            body["work"] = {"candidates": [forged, *rest]}

        rewrite(ledger, height, body=forge)
        assert ledger.verify().ok  # re-signed: only replay can tell
        report = replay(ledger)
        assert report.bad_height == height, report
        assert report.reason.startswith(f"included update {index}: records weight")
        assert "fednova work factor" in report.reason, report


@pytest.mark.parametrize("altered", ["fednova:1.5", "fednova"])
def test_a_capped_chain_replays_and_fails_with_its_cap_altered(
    tmp_path: Path, altered: str
) -> None:
    """An honest chain capped at 2 passes ``--replay``; the same chain whose
    block states another cap (its settings re-recorded, re-signed) fails,
    naming the block."""
    path = tmp_path / "l.db"
    nova_ledger(path, 10, work_normalisation=WorkNormalisation(2.0)).close()
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    assert "replay: 10 of 10 blocks after genesis" in text, text
    with Ledger(path, create=False) as ledger:
        assert ledger.block(0).body["config"]["work_normalisation"] == "fednova:2"
        other = work_normalisation(altered)
        assert other is not None
        height = next(  # the first block whose factors the alteration changes
            h
            for h in range(1, len(ledger))
            if WorkNormalisation(2.0).factors(*_work_and_examples(ledger, h))
            != other.factors(*_work_and_examples(ledger, h))
        )
        config = dict(ledger.block(0).body["config"], work_normalisation=altered)
        digest = ledger.config_digest(config)
        rewrite(
            ledger,
            height,
            body=lambda body: body.update(config=config),
            header=lambda header: header.update(config_digest=digest),
        )
        assert ledger.verify().ok  # re-signed: only replay can tell
        report = replay(ledger)
        assert report.bad_height == height, report
        assert f"{altered} work factor" in report.reason, report
    code, text = flchain("verify", str(path), "--replay")
    assert code != 0 and f"block {height}" in text, text


def _work_and_examples(ledger: Ledger, height: int) -> tuple[list[float], list[float]]:
    candidates = ledger.block(height).body["work"]["candidates"]
    return [c["work"] for c in candidates], [c["num_examples"] for c in candidates]


def _without_work(body: dict[str, Any]) -> None:
    del body["work"]


def _work(value: object) -> Callable[[dict[str, Any]], None]:
    def forge(body: dict[str, Any]) -> None:
        first, *rest = body["work"]["candidates"]
        body["work"] = {"candidates": [dict(first, work=value), *rest]}

    return forge


def _no_work_key(body: dict[str, Any]) -> None:
    first, *rest = body["work"]["candidates"]
    body["work"] = {"candidates": [{k: first[k] for k in first if k != "work"}, *rest]}


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_work(0), "its work candidates are malformed"),
        (_work(-4), "its work candidates are malformed"),
        (_work(True), "its work candidates are malformed"),
        (_work("4"), "its work candidates are malformed"),
        (_work(None), "its work candidates are malformed"),
        (_no_work_key, "its work candidates are malformed"),
        (_without_work, "records no work candidates"),
    ],
)
def test_malformed_recorded_work_fails(
    tmp_path: Path, forge: Callable[[dict[str, Any]], None], reason: str
) -> None:
    with nova_ledger(tmp_path / "l.db", 4) as ledger:
        rewrite(ledger, 3, body=forge)
        assert ledger.verify().ok
        report = replay(ledger)
        assert report.bad_height == 3 and reason in report.reason, report


# ---------------------------------------------------------------- influence
def test_the_factors_of_two_updates_differ_at_most_by_their_work_ratio() -> None:
    """The bound the docs state: f_i / f_j = tau_j / tau_i, and every factor
    is at most max(tau) / min(tau), whatever the examples."""
    work, examples = [1.0, 12.0, 12.0, 3.0], [1.0, 500.0, 90.0, 7.0]
    factors = work_factors(work, examples)
    assert max(factors) <= max(work) / min(work)
    assert factors[0] / factors[1] == pytest.approx(12.0, rel=1e-12)
    # one update asked 1 step among K - 1 asked 12, equal examples: 1/(1 + (K-1)/12)
    k = 5
    alone = work_factors([1.0] + [12.0] * (k - 1), [10.0] * k)
    assert alone[0] / k == pytest.approx(1 / (1 + (k - 1) / 12), rel=1e-12)


def test_a_node_that_delays_its_replies_is_asked_the_least_work() -> None:
    """Who can do what: a node that answers slowly is asked BAFL's least work
    (1 step of base 3) and so gets the largest factor. Quantified here (what
    docs/stragglers.md cites): three tiers of three honest nodes (speeds 1,
    0.25, 0.05) and a tenth node of speed 1 that delays each reply by 5 s,
    every node claiming 10 examples, K = 5, 200 versions; uncapped, and with
    ``fednova:<max>`` at 2, 3 and 4."""
    asked: dict[int, list[int]] = defaultdict(list)
    ids: dict[int, int] = {}

    def equal_examples(msg: Message, context: Context, call_next: Any) -> Message:
        reply: Message = call_next(msg, context)
        if reply.has_content() and "metrics" in reply.content:
            pid = int(context.node_config["partition-id"])
            ids[pid] = context.node_id
            config = msg.content.config_records["config"]
            asked[pid].append(int(config["local-steps"]))  # type: ignore[arg-type]
            reply.content["metrics"] = MetricRecord({"num-examples": 10})
        return reply

    def share(latency: float, nova: WorkNormalisation | None) -> float:
        asked.clear()
        profiles = [DeviceProfile(speed=s) for s in (1.0, 0.25, 0.05) for _ in "abc"]
        profiles.append(DeviceProfile(speed=1.0, latency_s=latency))
        grid = VirtualGrid(
            toy_client_app(mods=[equal_examples]),
            profiles,
            work_fn=steps_work,
            seed=0,
        )
        strategy = FedBuff(
            buffer_size=5,
            fraction_evaluate=0.0,
            max_staleness=None,
            min_available_nodes=len(profiles),
            seed=0,
            scheduling=AdaptiveScheduling(
                [AdaptiveLocalWork(3)], work_key="local-steps"
            ),
            work_normalisation=nova,
        )
        result = strategy.start(
            grid,
            initial_arrays(),
            num_rounds=200,
            timeout=1e6,
            train_config=ConfigRecord({"lr": 0.1, "local-steps": 3}),
        )
        total = sum(result.weight_share.values())
        return result.weight_share[ids[9]] / total

    honest = share(0.0, NOVA)
    assert min(asked[9]) > 1  # answering at once: asked more than the least
    delaying = share(5.0, NOVA)
    assert set(asked[9][5:]) == {1}  # once timed: the least work, 1 step
    assert max(w for works in asked.values() for w in works) == 12  # BAFL's most
    without = share(5.0, None)
    capped = {cap: share(5.0, WorkNormalisation(cap)) for cap in (2.0, 3.0, 4.0)}
    assert round(100 * honest, 1) == 5.4
    assert round(100 * delaying, 1) == 32.9  # against 10 % of the examples
    assert round(100 * without, 1) == 14.0
    # fednova:<max> bounds what the delay buys (the default, uncapped, not)
    assert {c: round(100 * s, 1) for c, s in capped.items()} == {
        2.0: 26.0,
        3.0: 31.2,
        4.0: 32.6,
    }


# ----------------------------------------------------- replay, one node twice
def _settings() -> Settings:
    return Settings.of(
        {
            "server_lr": 1.0,
            "server_momentum": 0.0,
            "staleness_fn": "Constant()",
            "example_weighting": "claimed",
            "state_rule": "average",
            "state_patterns": [],
            "arrayrecord_key": "arrays",
            "weighted_by_key": "num-examples",
            "work_normalisation": "fednova",
        }
    )


def _update(node_id: int, digest: str) -> BufferedUpdate:
    parsed = ParsedUpdate({}, 10.0, MetricRecord(), "delta")
    return BufferedUpdate(node_id, 0, 0, 1.0, parsed, 10.0, RecordDict(), digest)


def test_replay_weighs_a_node_twice_in_a_buffer_by_its_included_replys_work() -> None:
    """Node 7 sent two replies into one buffer, asked 12 and then 1 step; the
    committee rejected the first. Replay must weigh the second by its own work,
    not by the first candidate of the node with the same examples."""
    candidates = [
        {"node_id": "7", "num_examples": 10.0, "work": 12.0, "digest": "d-first"},
        {"node_id": "7", "num_examples": 10.0, "work": 1.0, "digest": "d-second"},
        {"node_id": "8", "num_examples": 10.0, "work": 12.0, "digest": "d-other"},
    ]
    body = {
        "work": {"candidates": candidates},
        "rejected": [{"node_id": "7", "digest": "d-first"}],
    }
    honest = work_factors([12.0, 1.0, 12.0], [10.0, 10.0, 10.0])
    updates = [_update(7, "d-second"), _update(8, "d-other")]
    included = [{"weight": honest[1]}, {"weight": honest[2]}]
    check_weights(updates, included, body, _settings(), {})  # the server's weights
    assert [u.weight for u in updates] == [honest[1], honest[2]]


def test_replay_refuses_work_candidates_without_digests() -> None:
    candidate = {"node_id": "7", "num_examples": 10.0, "work": 1.0}
    body = {"work": {"candidates": [candidate]}}
    with pytest.raises(Failed, match="its work candidates are malformed"):
        check_weights([_update(7, "d")], [{"weight": 1.0}], body, _settings(), {})


def test_tiny_or_huge_work_still_gives_finite_factors() -> None:
    assert work_factors([5e-324, 5e-324], [10.0, 10.0]) == [1.0, 1.0]
    for work, examples in (([1e-306, 1.0], [1e4, 1.0]), ([1e300, 1e-300], [1.0, 1.0])):
        factors = work_factors(work, examples)
        assert all(math.isfinite(f) and f >= 0 for f in factors), factors
        assert sum(n * f for n, f in zip(examples, factors, strict=True)) == (
            pytest.approx(sum(examples), rel=1e-9)
        )


@pytest.mark.parametrize("field", ["num_examples", "work"])
def test_replay_refuses_an_integer_past_the_float_range(field: str) -> None:
    candidate: dict[str, object] = {
        "node_id": "7",
        "num_examples": 10.0,
        "work": 1.0,
        "digest": "d",
    }
    candidate[field] = 10**400  # json.loads reads it (a version-1 block, say)
    body = {"work": {"candidates": [candidate]}}
    with pytest.raises(Failed, match="its work candidates are malformed"):
        check_weights([_update(7, "d")], [{"weight": 1.0}], body, _settings(), {})

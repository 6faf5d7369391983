"""A resumed run continues the straggler policies' state from its ledger: the
buffer tuner's K, tau and moving averages, FedSA's participation counts, and
the result's participation and weight shares over the whole chain."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.replayweights import ledger_participation
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AdaptiveScheduling,
    AsyncResult,
    FedBuff,
    FedSALearningRate,
    StalenessTarget,
)
from flchain_flwr.strategies.carryover import ledger_weight_share, resumed_tuner
from flchain_flwr.strategies.tuning import BufferTuner

from .toy import constant_work, initial_arrays, toy_client_app

POLICY = StalenessTarget(2.0, 2, 40, slack=2.0)
# (time, staleness of the version's updates); times are exact in binary, so
# that shifting them to a resumed run's clock loses no bit
VERSIONS = [
    (2.0, [4, 4, 4, 4]),
    (4.0, [2] * 8),
    (5.0, []),
    (9.0, [1, 3, 5]),
    (10.5, [0, 0, 6, 6, 2]),
    (14.0, [3] * 7),
]


# --------------------------------------------------------------- the tuner
def test_a_resumed_tuner_makes_the_uninterrupted_tuners_choices() -> None:
    for split in range(len(VERSIONS)):
        whole = BufferTuner(POLICY, 4, None)
        choices = []
        record: dict[str, Any] = {}
        for i, (time, staleness) in enumerate(VERSIONS):
            if i == split:
                record = whole.record()  # what block ``split + 1`` records
            choices.append(whole.observe(time, staleness))
        # a run that stopped after that block, resumed: the new clock starts at 0
        time, staleness = VERSIONS[split]
        resumed = BufferTuner.resume(POLICY, record, time, staleness)
        assert (resumed.buffer_size, resumed.max_wait) == choices[split]
        for i, (t, s) in enumerate(VERSIONS[split + 1 :], start=split + 1):
            assert resumed.observe(t - time, s) == choices[i]  # bit for bit
        assert resumed.record() == {**whole.record(), "last_time": 14.0 - time}


def test_resume_reads_old_records_and_refuses_what_is_not_one() -> None:
    # a block written before the averages were recorded: K and tau, then afresh
    old = BufferTuner.resume(POLICY, {"buffer_size": 10, "max_wait": 3.0}, 2.0, [2])
    assert old.record()["mean_staleness"] == 2.0  # its own version, observed
    assert old.buffer_size == 10  # 10 * 2 / 2
    assert BufferTuner.resume(POLICY, {"buffer_size": 99}, 1.0, []).buffer_size == 40
    for bad in ({}, {"buffer_size": "x"}, {"buffer_size": 4, "arrival_rate": []}):
        with pytest.raises(ValueError, match="not a buffer tuner's record"):
            BufferTuner.resume(POLICY, bad, 1.0, [])
    assert resumed_tuner(None, None, 4, None) is None
    fresh = resumed_tuner(POLICY, None, 4, 30.0)
    assert fresh is not None and (fresh.buffer_size, fresh.max_wait) == (4, 30.0)


# ------------------------------------------------------- virtual-grid runs
SPEEDS = (1.0, 0.6, 0.3)


def strategy(path: Path, tuning: StalenessTarget, fedsa: bool = False) -> FedBuff:
    return FedBuff(
        buffer_size=3,
        fraction_evaluate=0.0,
        max_staleness=None,
        seed=0,
        ledger=path,
        buffer_tuning=tuning,
        scheduling=AdaptiveScheduling([FedSALearningRate(0.1)]) if fedsa else None,
    )


def run(
    path: Path, tuning: StalenessTarget, versions: int, fedsa: bool = False
) -> tuple[AsyncResult, dict[int, list[float]]]:
    lrs: dict[int, list[float]] = defaultdict(list)

    def record(msg: Message, context: Context) -> None:
        config = msg.content.config_records["config"]
        lrs[int(context.node_config["partition-id"])].append(float(config["lr"]))  # type: ignore[arg-type]

    grid = VirtualGrid(
        toy_client_app(on_train=record),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=constant_work(1.0),
    )
    result = strategy(path, tuning, fedsa).start(
        grid,
        initial_arrays(),
        num_rounds=versions,
        timeout=60.0,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    assert result.stop_reason == "completed"
    return result, lrs


def buffer_records(path: Path) -> list[dict[str, Any]]:
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        return [dict(b.body["buffer"]) for b in list(ledger.blocks())[1:]]


def without_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "last_time"} for r in records]


def test_a_split_run_is_the_uninterrupted_run_when_nothing_is_in_flight(
    tmp_path: Path,
) -> None:
    # K = the three nodes (min_k = max_k) and a tau longer than a round trip:
    # each version takes one fresh update from every node, so a restart loses
    # no scheduling state; the tuner still chooses tau from the arrival rate
    # and FedSA still sets lrs from participation: both must carry over.
    tuning = StalenessTarget(1.0, 3, 3, slack=4.0)
    whole, whole_lrs = run(tmp_path / "whole.db", tuning, 8, fedsa=True)
    first, _ = run(tmp_path / "split.db", tuning, 4, fedsa=True)
    rest, rest_lrs = run(tmp_path / "split.db", tuning, 8, fedsa=True)
    assert [v.version for v in rest.versions] == [5, 6, 7, 8]
    assert [v.node_ids for v in first.versions + rest.versions] == [
        v.node_ids for v in whole.versions
    ]
    # The whole run's participation and weight shares, not the second half's.
    assert rest.participation == whole.participation
    assert rest.weight_share == pytest.approx(whole.weight_share, rel=1e-12)
    # FedSA: the resumed run's lrs are the ones the whole run sent then.
    assert {p: lrs[-4:] for p, lrs in whole_lrs.items()} == rest_lrs
    # The tuner: the same K; later tau and rate equal but for the last bits of
    # the version times' differences, which the resumed run's clock counts
    # from 0 (t - 0 against (t4 + t) - t4).
    split, uninterrupted = (
        buffer_records(tmp_path / "split.db"),
        buffer_records(tmp_path / "whole.db"),
    )
    assert [r["buffer_size"] for r in split] == [3] * 8
    # restored bit for bit: block 5 (the first after the resume) records the
    # state block 4 left
    assert without_time(split[:5]) == without_time(uninterrupted[:5])
    for a, b in zip(without_time(split), without_time(uninterrupted), strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():  # None until a version has been seen
            assert value == (b[key] if b[key] is None else pytest.approx(b[key]))
    assert split[4]["last_time"] == 0.0 < uninterrupted[4]["last_time"]


def test_a_resumed_tuner_starts_from_the_choice_the_run_would_have_made(
    tmp_path: Path,
) -> None:
    # K tuned between 1 and 3: replies are in flight at every boundary, so after
    # the restart the two runs see different arrivals; what is restored (the
    # state after the last block) must still be exactly the uninterrupted one.
    tuning = StalenessTarget(0.5, 1, 3, slack=2.0)
    run(tmp_path / "whole.db", tuning, 12)
    first, _ = run(tmp_path / "split.db", tuning, 6)
    rest, _ = run(tmp_path / "split.db", tuning, 12)
    whole_records = without_time(buffer_records(tmp_path / "whole.db"))
    split_records = without_time(buffer_records(tmp_path / "split.db"))
    assert split_records[:7] == whole_records[:7]  # bit for bit, block 7 included
    assert len({r["buffer_size"] for r in whole_records}) > 1  # it did tune
    assert rest.versions[0].buffer_size == whole_records[6]["buffer_size"]
    assert rest.versions[0].max_wait == whole_records[6]["max_wait"]
    # The result counts the whole chain, as the ledger does.
    with Ledger(tmp_path / "split.db", create=False) as ledger:
        assert rest.participation == ledger_participation(ledger.blocks())
        shares = ledger_weight_share(ledger.blocks())
    new = defaultdict(int)
    for version in rest.versions:
        for node in version.node_ids:
            new[node] += 1
    assert rest.participation == {
        n: first.participation.get(n, 0) + new[n] for n in rest.participation
    }
    assert sum(rest.participation.values()) > sum(new.values())
    assert rest.weight_share == pytest.approx(shares, rel=1e-12)
    assert first.weight_share == pytest.approx(
        {n: s for n, s in ledger_weight_share_upto(tmp_path, 6).items()}, rel=1e-12
    )


def ledger_weight_share_upto(tmp_path: Path, height: int) -> dict[int, float]:
    with Ledger(tmp_path / "split.db", create=False) as ledger:
        return ledger_weight_share(list(ledger.blocks())[: height + 1])


def test_a_resume_with_changed_tuning_is_refused(tmp_path: Path) -> None:
    """The tuning's spec left the smoothing out and wrote target and slack
    with ``%g``: a resume whose tuning differed only there had the ledger's
    config digest, so it was neither refused nor recorded."""
    tuning = StalenessTarget(1.0, 3, 3, slack=4.0)
    run(tmp_path / "l.db", tuning, 2)
    for changed in (
        StalenessTarget(1.0, 3, 3, slack=4.0, smoothing=0.9),
        StalenessTarget(1.0, 3, 3, slack=4.0000001),
    ):
        with pytest.raises(ValueError, match="resume_with_changed_config"):
            run(tmp_path / "l.db", changed, 4)
    rest, _ = run(tmp_path / "l.db", tuning, 4)  # the same tuning resumes
    assert [v.version for v in rest.versions] == [3, 4]

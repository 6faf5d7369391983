"""Update memory (MIFA, issue 14): the scripted arrivals' memory, the step over
it, and a run where a slow node's update keeps steering the model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AdaptiveLocalWork,
    AdaptiveScheduling,
    Constant,
    FedBuff,
    FedSALearningRate,
    InverseParticipation,
    UpdateMemory,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.block import BufferedUpdate, Rejection
from flchain_flwr.strategies.memory import memory_caution, update_memory
from flchain_flwr.strategies.pipeline import Pipeline
from flchain_flwr.strategies.serverstep import ServerStep, server_step
from flchain_flwr.strategies.updates import ParsedUpdate

from .test_stragglers import SPEEDS, run_toy, steps_work, toy_fedbuff
from .toy import FlowerLogLines, initial_arrays, toy_client_app


def update(node: int, delta: float, examples: float = 10.0) -> BufferedUpdate:
    parsed = ParsedUpdate({"w": np.array([delta])}, examples, MetricRecord(), "delta")
    return BufferedUpdate(node, 0, 0, 1.0, parsed, examples, RecordDict())


def test_scripted_arrivals_step_on_each_nodes_latest_update() -> None:
    memory = UpdateMemory(max_age=3).start()
    a1, b1, c2, a3, c4 = (
        update(1, 1.0),
        update(2, 2.0),
        update(3, 4.0),
        update(1, 8.0),
        update(3, 16.0),
    )
    script = [  # (version, fresh, the remembered updates that step beside them)
        (1, [a1, b1], []),
        (2, [c2], [a1, b1]),
        (3, [a3], [b1, c2]),  # A's newer update replaced its first
        (4, [c4], [a3, b1]),  # B's, from version 1, is 3 versions old: kept
        (5, [a3], [c4]),  # B's is 4 old: dropped
    ]
    for version, fresh, expected in script:
        assert memory.others(fresh, version) == expected, version
        memory.remember(fresh, version)
    assert sorted(memory.latest) == [1, 3]  # B's entry is gone, not just skipped


def test_the_step_is_fedbuffs_formula_over_buffer_and_memory() -> None:
    parent = {"w": np.array([0.0])}
    fresh = [update(1, 1.0, 10.0)]
    fresh[0].weight = 0.5  # a stale update keeps its staleness weight
    remembered = [update(2, 4.0, 30.0)]
    result = server_step(
        parent, fresh, lr=1.0, momentum=0.0, velocity=None, remembered=remembered
    )
    assert result is not None
    assert result.model["w"][0] == pytest.approx((0.5 * 10 * 1.0 + 30 * 4.0) / 40)
    alone = server_step(parent, fresh, lr=1.0, momentum=0.0, velocity=None)
    empty = server_step(
        parent, fresh, lr=1.0, momentum=0.0, velocity=None, remembered=()
    )
    assert alone is not None and empty is not None
    assert alone.model["w"].tobytes() == empty.model["w"].tobytes()


def test_a_slow_nodes_update_keeps_steering_the_model() -> None:
    # toy nodes at speeds 1, 1, 1, 0.25, 0.25, 0.05 (test_stragglers.SPEEDS);
    # the same schedule with and without memory, so the same participation
    plain, _ = run_toy(toy_fedbuff(staleness_fn=Constant()))
    kept, _ = run_toy(
        toy_fedbuff(staleness_fn=Constant(), update_memory=UpdateMemory(100))
    )
    assert plain.participation == kept.participation
    rare = min(plain.participation, key=plain.participation.__getitem__)
    often = max(plain.participation, key=plain.participation.__getitem__)
    # the rare node's share of the steps grows to about its share of the nodes
    assert kept.weight_share[rare] > 3 * plain.weight_share[rare]
    assert kept.weight_share[often] < plain.weight_share[often]
    versions = len(plain.versions)
    for result in (plain, kept):  # each version's shares sum to one step
        assert sum(result.weight_share.values()) == pytest.approx(versions)


def test_update_memory_is_refused_with_a_ledger_or_with_fairness(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="update_memory cannot be replayed"):
        FedBuff(update_memory=UpdateMemory(), ledger=tmp_path / "l.db")
    with pytest.raises(ValueError, match="compensate them twice"):
        FedBuff(update_memory=UpdateMemory(), fairness=InverseParticipation())


def test_fedsa_beside_the_memory_is_warned_of_once_at_start() -> None:
    fedsa = AdaptiveScheduling([FedSALearningRate(0.1)])
    bafl = AdaptiveScheduling([AdaptiveLocalWork(3)])
    assert memory_caution(UpdateMemory(), fedsa) is not None
    both = AdaptiveScheduling([FedSALearningRate(0.1), AdaptiveLocalWork(3)])
    for memory, scheduling in ((None, fedsa), (UpdateMemory(), bafl)):
        assert memory_caution(memory, scheduling) is None
    assert memory_caution(UpdateMemory(), both) is None  # BAFL steadied the pair
    assert memory_caution(UpdateMemory(), toy_fedbuff().scheduling) is None
    keys = {"adaptive-lr": "fedsa", "lr": 0.1, "update-memory": "mifa"}
    toy = toy_fedbuff()
    settings = {
        "buffer_size": toy.buffer_size,
        "fraction_evaluate": 0.0,
        "max_staleness": None,
        "min_available_nodes": toy.min_available_nodes,
        "seed": 0,
    }
    for strategy in (
        toy_fedbuff(scheduling=fedsa, update_memory=UpdateMemory()),
        fedbuff_from_run_config(keys, **settings),
    ):
        # Flower's logger at whatever level earlier test files left it (caplog
        # sees nothing after one set it to ERROR)
        with FlowerLogLines(logging.WARNING) as logs:
            run_toy(strategy, 4)
        assert sum("collapsed the model" in line for line in logs.lines) == 1


def test_the_run_config_key_and_its_errors() -> None:
    strategy = fedbuff_from_run_config({"update-memory": "mifa:7"})
    assert strategy.update_memory == UpdateMemory(7)
    assert strategy.config_dict()["update_memory"] == "mifa:7"
    assert fedbuff_from_run_config({"update-memory": "mifa"}).update_memory == (
        UpdateMemory(100)
    )
    assert fedbuff_from_run_config({"update-memory": ""}).update_memory is None
    assert "update_memory" not in fedbuff_from_run_config({}).config_dict()
    assert update_memory(UpdateMemory(3).spec) == UpdateMemory(3)
    for bad, message in (
        ("mifa:0", "max_age"),
        ("mifa:x", "update memory"),
        ("sag", "unknown"),
    ):
        with pytest.raises(ValueError, match=message):
            fedbuff_from_run_config({"update-memory": bad})


@pytest.mark.parametrize("age", [float("nan"), 2.5, float("inf"), 3.0, True, 0])
def test_the_python_api_refuses_what_the_spec_cannot_hold(age: object) -> None:
    """``mifa:<max_age>`` reads an int >= 1; the constructor took NaN (which
    never evicts: ``nan < 1`` is False), floats whose spec does not parse
    back (``mifa:2.5``), and a bool (a max age of 1)."""
    with pytest.raises(ValueError, match="max_age"):
        UpdateMemory(age)  # type: ignore[arg-type]


def test_a_runaway_remembered_update_cannot_stop_the_run() -> None:
    # node 0's first reply is finite but huge, then the node is gone: the
    # remembered update would overflow every later step with the fresh ones;
    # the step clears the memory and goes on (it used to stop at version 8)
    def huge_once(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        first = int(context.node_config["partition-id"]) == 0
        if first and "sent" in context.state:
            raise RuntimeError("node 0 is gone")
        reply = call_next(msg, context)
        if first:
            context.state["sent"] = ConfigRecord({"once": True})
            reply.content["arrays"] = ArrayRecord(
                {
                    k: Array(np.full_like(v.numpy(), 3.3e38))
                    for k, v in reply.content["arrays"].items()
                }
            )
        return reply

    grid = VirtualGrid(
        toy_client_app(mods=[huge_once]),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=steps_work,
        seed=0,
    )
    strategy = toy_fedbuff(
        staleness_fn=Constant(), update_memory=UpdateMemory(100), time_budget=2000.0
    )
    result = strategy.start(
        grid,
        initial_arrays(),
        num_rounds=40,
        timeout=1e4,
        train_config=ConfigRecord({"lr": 0.1, "local-steps": 4}),
    )
    assert result.stop_reason == "completed" and len(result.versions) == 40


def test_a_node_whose_reply_is_rejected_steers_no_more() -> None:
    memory = UpdateMemory(10).start()
    pipeline = Pipeline([], ServerStep(1.0, 0.0, memory=memory))
    memory.remember([update(1, 1.0), update(2, 2.0)], 1)
    pipeline.reject(Rejection(1, 1, "update holds a non-finite value", ""))
    assert sorted(memory.latest) == [2]
    # a node that only failed (unavailable) keeps its update: that is MIFA's point


def test_the_refusals_hold_at_start_and_before_a_ledger_file_is_made(
    tmp_path: Path,
) -> None:
    strategy = toy_fedbuff(update_memory=UpdateMemory())
    strategy.ledger = tmp_path / "late.db"  # set after construction
    with pytest.raises(ValueError, match="cannot be replayed"):
        run_toy(strategy, versions=2)
    path = tmp_path / "cfg.db"
    with pytest.raises(ValueError, match="cannot be replayed"):
        fedbuff_from_run_config({"update-memory": "mifa", "ledger-path": str(path)})
    assert not (tmp_path / "late.db").exists() and not path.exists()

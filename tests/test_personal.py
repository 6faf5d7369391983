"""The personalisation mod: the mix, its state across messages, the per-node
report, and real runs where the mix serves label-skewed nodes better."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from flchain_flwr.mods import PersonalConfig, PersonalState, personal_mod
from flchain_flwr.mods.personal import STATE_LOCAL, mix, personal_metrics
from flchain_flwr.sim import DeviceProfile, VirtualGrid, uniform
from flchain_flwr.strategies import AsyncResult, FedBuff
from flchain_flwr.strategies.evaluation import FederatedEvaluation
from flchain_flwr.strategies.personalised import compare_per_node, latest_per_node
from flchain_flwr.strategies.result import NodeEvaluation

from .toy import FlowerLogLines, constant_work, initial_arrays, toy_client_app


# ------------------------------------------------------------------ the mix
def test_mix_is_alpha_local_plus_one_minus_alpha_global() -> None:
    g = {
        "w": np.array([0.0, 1.0, 2.0], dtype=np.float32),
        "n": np.array(7, dtype=np.int64),
        "h": np.array([1.0, 1.0], dtype=np.float16),
        "new": np.ones(2, dtype=np.float32),
    }
    local = {
        "w": np.array([4.0, 5.0, 6.0], dtype=np.float32),
        "n": np.array(99, dtype=np.int64),
        "h": np.array([3.0, 5.0], dtype=np.float16),
        "new": np.ones(3, dtype=np.float32),  # another shape: the global's
    }
    out = mix(g, local, 0.25)
    np.testing.assert_array_equal(out["w"], np.array([1.0, 2.0, 3.0], np.float32))
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["h"], np.array([1.5, 2.0], np.float16))
    assert out["h"].dtype == np.float16
    assert out["n"] == 7 and out["n"].dtype == np.int64  # counters: the global's
    np.testing.assert_array_equal(out["new"], g["new"])
    np.testing.assert_array_equal(mix(g, local, 0.0)["w"], g["w"])
    np.testing.assert_array_equal(mix(g, local, 1.0)["w"], local["w"])
    np.testing.assert_array_equal(mix(g, {}, 0.5)["w"], g["w"])  # nothing local
    out["w"][0] = 42.0
    assert g["w"][0] == 0.0 and local["w"][0] == 4.0  # copies, inputs untouched


def test_the_mix_of_a_0d_parameter_stays_a_0d_array() -> None:
    # NumPy arithmetic on 0-d arrays gives scalars (CLIP's logit_scale)
    out = mix({"s": np.array(1.0, np.float32)}, {"s": np.array(3.0, np.float32)}, 0.5)
    assert isinstance(out["s"], np.ndarray) and out["s"].shape == ()
    assert out["s"] == 2.0 and out["s"].dtype == np.float32


def test_personal_metrics_and_config() -> None:
    plain = {"eval-acc": 0.5, "eval-loss": 2.0, "num-examples": 30}
    merged = personal_metrics(
        plain, {"eval-acc": 0.8, "num-examples": 31}, ("num-examples",)
    )
    assert merged == {
        **plain,
        "personal-eval-acc": 0.8,
        "personal-eval-loss": 2.0,  # the mix did not report it: the global's
    }  # no twin of the example count
    assert personal_metrics(plain, None, ())["personal-eval-acc"] == 0.5
    assert PersonalConfig.from_run_config({}) is None
    assert PersonalConfig.from_run_config({"personal-alpha": 0.0}) is None
    assert PersonalConfig.from_run_config({"personal-alpha": 0.3}) == PersonalConfig(
        0.3
    )
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            PersonalConfig(bad)


# -------------------------------------------------- state across messages
def grid_with(
    behaviours: dict[int, str] | None = None, alpha: float = 0.25
) -> VirtualGrid:
    app = toy_client_app(behaviours, mods=[personal_mod(PersonalConfig(alpha))])
    return VirtualGrid(app, uniform(2), work_fn=constant_work(1.0))


def send(grid: VirtualGrid, kind: str, w: float) -> Message:
    arrays = ArrayRecord(
        {
            "w": Array(np.full(3, w, dtype=np.float32)),
            "b": Array(np.zeros((2, 2), dtype=np.float32)),
        }
    )
    config = ConfigRecord({"server-round": 1})
    message = Message(
        RecordDict({"arrays": arrays, "config": config}), grid.node_ids[0], kind
    )
    (reply,) = grid.send_and_receive([message])
    assert not reply.has_error(), reply.error
    return reply


def metrics_of(reply: Message) -> dict[str, float]:
    return dict(reply.content.metric_records["metrics"])  # type: ignore[arg-type]


def test_the_local_model_is_kept_in_context_state_across_messages() -> None:
    grid = grid_with()
    node = grid.node_ids[0]  # partition 0: training adds 0.1
    before = metrics_of(send(grid, MessageType.EVALUATE, 2.0))
    assert before["personal-mean-w"] == before["mean-w"] == 2.0  # nothing local yet
    assert STATE_LOCAL not in grid.contexts[node].state
    send(grid, MessageType.TRAIN, 1.0)  # local w: 1.1
    state = PersonalState.load(grid.contexts[node].state)
    assert state.trainings == 1 and state.local is not None
    np.testing.assert_allclose(state.local["w"], 1.1)
    after = metrics_of(send(grid, MessageType.EVALUATE, 2.0))
    assert after["mean-w"] == 2.0  # the reply still reports the global model
    assert after["personal-mean-w"] == pytest.approx(0.25 * 1.1 + 0.75 * 2.0)
    assert after["num-examples"] == 10 and "personal-num-examples" not in after
    send(grid, MessageType.TRAIN, 3.0)  # a newer local model replaces it: 3.1
    again = metrics_of(send(grid, MessageType.EVALUATE, 0.0))
    assert again["personal-mean-w"] == pytest.approx(0.25 * 3.1)
    assert PersonalState.load(grid.contexts[node].state).trainings == 2


def test_replies_without_full_weights_keep_no_local_model() -> None:
    grid = grid_with({0: "delta"})  # partition 0 replies with a delta
    send(grid, MessageType.TRAIN, 1.0)
    assert STATE_LOCAL not in grid.contexts[grid.node_ids[0]].state
    reply = metrics_of(send(grid, MessageType.EVALUATE, 2.0))
    assert reply["personal-mean-w"] == reply["mean-w"]
    off = VirtualGrid(  # no personal-alpha in the run config: untouched
        toy_client_app(mods=[personal_mod()]), uniform(2), work_fn=constant_work(1.0)
    )
    send(off, MessageType.TRAIN, 1.0)
    assert set(metrics_of(send(off, MessageType.EVALUATE, 2.0))) == {
        "mean-w",
        "num-examples",
    }


def test_a_run_reports_personal_metrics_per_node() -> None:
    grid = VirtualGrid(
        toy_client_app(mods=[personal_mod(PersonalConfig(0.5))]),
        [DeviceProfile(speed=s) for s in (1.0, 0.5, 0.25)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(buffer_size=2, evaluate_every=2, seed=0)
    with FlowerLogLines() as logs:
        result = strategy.start(grid, initial_arrays(), num_rounds=6, timeout=60.0)
    assert isinstance(result, AsyncResult)
    kept = result.node_evaluations
    assert set(kept) == set(grid.node_ids)
    for evaluation in kept.values():
        assert evaluation.version in (2, 4, 6)
        assert {"mean-w", "personal-mean-w"} <= set(evaluation.metrics)
    for version in (2, 4, 6):
        assert "personal-mean-w" in result.evaluate_metrics_clientapp[version]
    latest = latest_per_node(result, "personal-mean-w")
    assert set(latest) == set(grid.node_ids)
    rows = compare_per_node(result, "mean-w")
    assert [r.node_id for r in rows] == sorted(grid.node_ids)
    assert any(r.personal_value != r.global_value for r in rows)
    history = result.history_dict()["node_evaluations"]
    assert history[str(rows[0].node_id)]["metrics"]["personal-mean-w"] == (
        rows[0].personal_value
    )
    assert not any("Personalised" in line for line in logs.lines)  # not accuracy


def test_each_node_keeps_its_evaluation_of_the_newest_version() -> None:
    kept: dict[int, NodeEvaluation] = {}
    evaluation = FederatedEvaluation(
        fraction=1.0,
        min_nodes=1,
        aggregate=lambda _: None,
        validate=lambda content: content,
        rng=random.Random(0),
        per_node=kept,
    )

    def reply(value: float) -> RecordDict:
        return RecordDict({"metrics": MetricRecord({"acc": value})})

    evaluation.schedule(1, initial_arrays(), {7, 8})
    assert evaluation.ready(lambda _: True) == [(7, 1), (8, 1)]
    evaluation.schedule(2, initial_arrays(), {7})
    evaluation.done(7, 2, reply(0.2))
    evaluation.done(7, 1, reply(0.1))  # arrives late: version 2 stays
    evaluation.done(8, 1, reply(0.3))
    assert kept == {
        7: NodeEvaluation(2, {"acc": 0.2}),
        8: NodeEvaluation(1, {"acc": 0.3}),
    }


# ------------------------------------------------------------- real runs
TIERS = "0,1,2,3;4,5,6;7,8,9"


def personalised_run(seed: int) -> tuple[AsyncResult, dict[int, int]]:
    """The app's CNN on digits, 6 nodes in three device tiers (1x, 5x, 20x)
    that each hold their own classes; every node evaluates with alpha = 0.5."""
    pytest.importorskip("torch")
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.task import new_model

    from flchain_flwr.sim import app_run_config, tiered

    cfg = app_run_config(
        "apps/flchain_cnn",
        {"tier-classes": TIERS, "seed": seed, "personal-alpha": 0.5},
    )
    grid = VirtualGrid(
        client_app, tiered(6, (1.0, 5.0, 20.0)), run_config=cfg, seed=seed
    )
    strategy = FedBuff(
        buffer_size=2, max_staleness=None, min_available_nodes=6, seed=seed
    )
    result = strategy.start(
        grid,
        ArrayRecord(new_model("digits", seed).state_dict()),
        num_rounds=15,
        timeout=1e6,
    )
    assert isinstance(result, AsyncResult) and result.stop_reason == "completed"
    return result, {n: grid.partition_of[n] % 3 for n in grid.node_ids}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_mix_serves_label_skewed_nodes_better_than_the_global_model(
    seed: int,
) -> None:
    result, tier_of = personalised_run(seed)
    rows = compare_per_node(result, "eval-acc")
    assert {r.node_id for r in rows} == set(tier_of)  # every node evaluated
    gains = [r.personal_value - r.global_value for r in rows]
    # Margin fixed before the runs: 10 points on average over the nodes, and on
    # the slowest tier's nodes (the ones the global model underfits).
    assert sum(gains) / len(gains) > 0.10, rows
    slow = [r.personal_value - r.global_value for r in rows if tier_of[r.node_id] == 2]
    assert slow and sum(slow) / len(slow) > 0.10, rows


def test_local_test_draws_held_out_examples_in_the_nodes_label_mix() -> None:
    from flchain_cnn.local_eval import local_test_indices

    y_test = np.repeat(np.arange(10), 50)  # 50 of each class
    y_local = np.array([1] * 30 + [2] * 10)  # 3:1
    idx = local_test_indices(y_test, y_local, 40, seed=0)
    labels, counts = np.unique(y_test[idx], return_counts=True)
    assert labels.tolist() == [1, 2] and counts.tolist() == [30, 10]
    assert len(set(idx.tolist())) == 40  # without replacement: enough of each
    assert np.array_equal(idx, local_test_indices(y_test, y_local, 40, seed=0))
    assert not np.array_equal(idx, local_test_indices(y_test, y_local, 40, seed=1))
    many = local_test_indices(y_test, np.array([3]), 80, seed=0)
    assert len(many) == 80 and set(y_test[many]) == {3}  # 50 there: with replacement
    assert local_test_indices(y_test, np.array([11]), 5, seed=0).size == 0
    with pytest.raises(ValueError, match="size"):
        local_test_indices(y_test, y_local, 0, seed=0)

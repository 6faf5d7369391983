"""An inflated ``num-examples`` under :class:`PoVStrategy`, the synchronous
wrapper: bounded by the example-weighting policy before the committee votes,
as FedBuff bounds it, so one node's claim never buys it the wrapped FedAvg's
whole step.

The toy nodes move every array by 0.1, 0.2, 0.3 and 0.4 and claim 10, 20, 30
and 40 examples: honest, FedAvg moves the model by 30 / 100 = 0.3. Node 3
claims 1e12 instead: taken as claimed it moves the model by its own 0.4 (the
whole step); under the default ``MedianCapped(4)`` its claim counts 4 lower
medians of the round's claims (4 x 20 = 80), 80 / 140 of the step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.serverapp.strategy import FedAvg

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.replay import replay
from flchain_flwr.pov import Committee, PoVStrategy, Threshold
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.sim.attacks import inflate_claims
from flchain_flwr.strategies.weighting import Claimed, MedianCapped

from .test_header_retry import LEADER_HEIGHT, _Faults, _NoHeaderCommittee
from .test_pov import verifiers
from .test_replay import rewrite
from .toy import constant_work, initial_arrays, toy_client_app

N = 4
LIAR = 3
CLAIM = 1e12
HONEST = (10.0, 20.0, 30.0)
"""The other nodes' claims."""
BOUND = 4 * 20.0
"""``MedianCapped(4)``: 4 x the lower median of the round's claims."""
BOUNDED_STEP = (1 + 4 + 9 + BOUND * 0.4) / (sum(HONEST) + BOUND)


def _lies(kind: str, msg: Message, context: Context, reply: Message) -> bool:
    """Whether ``reply`` is node ``LIAR``'s answer to a ``kind`` message."""
    return (
        msg.metadata.message_type == kind
        and int(context.node_config["partition-id"]) == LIAR
        and not reply.has_error()
    )


def _grid(mods: list[Any]) -> VirtualGrid:
    """The four toy nodes with ``mods``."""
    return VirtualGrid(
        toy_client_app(mods=mods),
        [DeviceProfile() for _ in range(N)],
        node_configs=[{"partition-id": i, "num-partitions": N} for i in range(N)],
        work_fn=constant_work(1.0),
    )


def _liar(msg: Message, context: Context, call_next: Any) -> Message:
    """Node ``LIAR`` claims ``CLAIM`` examples for an honest update."""
    reply: Message = call_next(msg, context)
    if _lies(MessageType.TRAIN, msg, context, reply):
        inflate_claims(reply, CLAIM)
    return reply


def _run(
    path: Path | None,
    *,
    inflate: bool = True,
    rounds: int = 1,
    committee: Committee | None = None,
    **settings: Any,
) -> tuple[PoVStrategy, ArrayRecord]:
    """PoVStrategy(FedAvg) over the four toy nodes; the strategy and the
    final model."""
    grid = _grid([_liar] if inflate else [])
    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N),
        committee or Committee(verifiers(4), threshold=Threshold(value=0)),
        ledger=path,
        **settings,
    )
    run = simulate(strategy, grid, initial_arrays(), num_rounds=rounds)
    assert run.result is not None
    return strategy, run.result.arrays


def _moved(model: ArrayRecord) -> float:
    """How far the model moved from zero (every element moves alike)."""
    values = np.concatenate([a.numpy().ravel() for a in model.values()])
    np.testing.assert_allclose(values, values[0], rtol=1e-6)
    return float(values[0])


def test_an_inflated_claim_gets_at_most_the_policys_bound_of_the_fedavg_step() -> None:
    """Before, the claim went to FedAvg as sent: the model moved by 0.4,
    node 3's own update (its share 1e12 / (1e12 + 60)). Now it moves by
    46 / 140 = 0.329 against 0.3 with an honest claim; ``Claimed`` keeps
    the old behaviour for whoever asks for it."""
    _, honest = _run(None, inflate=False)
    _, bounded = _run(None)
    _, claimed = _run(None, example_weighting=Claimed())
    assert _moved(honest) == pytest.approx(0.3, rel=1e-6)
    assert _moved(bounded) == pytest.approx(BOUNDED_STEP, rel=1e-6)
    assert _moved(claimed) == pytest.approx(0.4, rel=1e-6)


def test_the_committee_judges_an_inflated_claim_at_its_bounded_share() -> None:
    """The votes sign each candidate's share of the step as bounded, which
    is the share FedAvg then applies."""
    strategy, _ = _run(None)
    (decision,) = strategy.decisions
    assert all(o.accepted for o in decision.outcomes)
    shares = sorted({float(v["weight"]) for v in decision.votes})
    total = sum(HONEST) + BOUND
    assert shares == pytest.approx([n / total for n in (*HONEST, BOUND)], rel=1e-12)


def test_an_inflated_claim_is_logged_and_the_ledger_records_its_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The block's entry holds the count the step used (``num_examples``, as
    FedBuff's), its claim history the claim itself (``server_state``, as
    FedBuff's), its contributions the bounded shares; verify accepts it
    (the votes' shares match the entries')."""
    path = tmp_path / "sync.db"
    with caplog.at_level(logging.WARNING):
        strategy, _ = _run(path, rounds=2)
    logged = [r.getMessage() for r in caplog.records if "1e+12" in r.getMessage()]
    assert len(logged) == 2 and all("counted as 80" in m for m in logged), logged
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        for block in list(ledger.blocks())[1:]:
            entries = block.body["included"]
            assert sorted(float(u["num_examples"]) for u in entries) == [
                *HONEST,
                BOUND,
            ]
            state = ledger.server_state(block)
            assert state is not None and state.claims is not None
            assert sorted(c for _, c in state.claims) == [*HONEST, CLAIM]
            shares = [c["data_share"] for c in block.body["contributions"]]
            assert max(shares) == round(BOUND / (sum(HONEST) + BOUND), 12)
    assert [c for _, c in strategy.claims.entries()].count(CLAIM) == 1
    with Ledger(path, create=False) as ledger:
        report = replay(ledger)
        assert report.ok and [h for h, _ in report.payloads_only] == [1, 2], report
        assert report.checked == 2 * N

        def inflated_entry(body: dict[str, Any]) -> None:
            entry = next(u for u in body["included"] if u["num_examples"] == BOUND)
            entry["num_examples"] = CLAIM  # the claim, not the count the step used

        rewrite(ledger, 2, body=inflated_entry)
        report = replay(ledger)
    assert not report.ok and report.bad_height == 2, str(report)
    assert (
        "median:4:1000 weighting of its claim 1000000000000.0 gives 80.0"
        in report.reason
    )


def test_the_policy_is_in_the_recorded_settings_unless_claims_are_taken_as_sent(
    tmp_path: Path,
) -> None:
    """A policy other than ``Claimed`` is part of the recorded settings (the
    default included, as its weights differ from the old ones), so the config
    digest names it; ``Claimed``, the old behaviour, is recorded as before:
    not at all."""

    def recorded(name: str, **settings: Any) -> tuple[str, object]:
        _run(tmp_path / f"{name}.db", inflate=False, **settings)
        with Ledger(tmp_path / f"{name}.db", create=False) as ledger:
            genesis = ledger.block(0)
            config = genesis.body["config"]
            return str(genesis.header["config_digest"]), config.get("example_weighting")

    default = recorded("default")
    assert default[1] == MedianCapped().spec
    assert recorded("median", example_weighting=MedianCapped()) == default
    median8 = recorded("median8", example_weighting=MedianCapped(8.0))
    assert median8[0] != default[0] and median8[1] == MedianCapped(8.0).spec
    claimed = recorded("claimed", example_weighting=Claimed())
    assert claimed[0] != default[0] and claimed[1] is None


def test_a_given_up_view_leaves_no_trace_in_the_claims(tmp_path: Path) -> None:
    """The round whose first leader signs no header is decided again at
    view 1 with the same bounded counts: the claim history, the blocks'
    entries and the model equal those of a run whose leader signed."""
    rounds = LEADER_HEIGHT + 1
    failed, model = _run(
        tmp_path / "a.db",
        rounds=rounds,
        committee=_NoHeaderCommittee(verifiers(4), _Faults()),
    )
    signed, expected = _run(tmp_path / "b.db", rounds=rounds)
    assert [d.view for d in failed.decisions] == [0, 0, 1, 0]
    # each grid draws its own node ids (and so its reply order): as sets
    assert sorted(c for _, c in failed.claims.entries()) == [*HONEST, CLAIM]
    assert len(signed.claims) == N

    def counts(path: Path) -> list[tuple[list[float], list[float]]]:
        """Each block's entries' counts and its recorded claims."""
        with Ledger(path, create=False) as ledger:
            assert ledger.verify().ok
            out = []
            for block in list(ledger.blocks())[1:]:
                state = ledger.server_state(block)
                assert state is not None and state.claims is not None
                entries = block.body["included"]
                out.append(
                    (
                        sorted(float(u["num_examples"]) for u in entries),
                        sorted(c for _, c in state.claims),
                    )
                )
            return out

    assert counts(tmp_path / "a.db") == counts(tmp_path / "b.db")
    for name, array in expected.items():
        np.testing.assert_allclose(model[name].numpy(), array.numpy(), rtol=1e-6)


def _evaluation_liar(msg: Message, context: Context, call_next: Any) -> Message:
    """Node ``LIAR`` reports a ``mean-w`` of 100 and claims ``CLAIM`` examples."""
    reply: Message = call_next(msg, context)
    if _lies(MessageType.EVALUATE, msg, context, reply):
        inflate_claims(reply, CLAIM)
        reply.content["metrics"]["mean-w"] = 100.0
    return reply


def _evaluated(**settings: Any) -> float:
    """The federated ``mean-w`` of round 1 (every node evaluates the same
    model, 0.3 from zero; the liar reports 100)."""
    grid = _grid([_evaluation_liar])
    strategy = PoVStrategy(
        FedAvg(min_available_nodes=N, min_train_nodes=N, min_evaluate_nodes=N),
        Committee(verifiers(4), threshold=Threshold(value=0)),
        **settings,
    )
    run = simulate(strategy, grid, initial_arrays(), num_rounds=1)
    assert run.result is not None
    return float(run.result.evaluate_metrics_clientapp[1]["mean-w"])  # type: ignore[arg-type]


def test_an_inflated_evaluation_claim_is_bounded_as_a_training_one() -> None:
    """Federated evaluation weighs each reply by its claim too: taken as
    claimed, one node claiming 1e12 examples sets the reported metric
    alone; bounded by the same policy, it gets 80 of 140."""
    honest = 0.3  # every node evaluates the same model
    bounded = (sum(HONEST) * honest + BOUND * 100.0) / (sum(HONEST) + BOUND)
    assert _evaluated() == pytest.approx(bounded, rel=1e-6)
    assert _evaluated(example_weighting=Claimed()) == pytest.approx(100.0, rel=1e-6)

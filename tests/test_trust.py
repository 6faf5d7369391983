"""Trust weighting (pov/trust.py): its maths, its settings, and a FedBuff run
under it whose every block replays, while a server that skips it does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.blocks import CONFIG_FIELD
from flchain_flwr.ledger.replay import replay
from flchain_flwr.pov import Committee, PoVStrategy, Rule, Threshold, Verifier
from flchain_flwr.pov.trust import TrustError, norm_clips, trust_scores
from flchain_flwr.strategies import committeestage
from flchain_flwr.strategies.block import BufferedUpdate
from flchain_flwr.strategies.serverstep import server_step
from flchain_flwr.strategies.updates import ParsedUpdate

from .test_pov import key, toward_target, toy_score
from .test_replay import fedbuff_ledger

DIRECTION = Threshold("none", min_cosine=0.0)


def vote(candidate: str, score: float, verdict: bool = True) -> dict[str, Any]:
    return {"candidate": candidate, "score": score, "verdict": verdict}


def test_trust_is_the_quorum_th_highest_approving_score_clipped() -> None:
    """Committee of 4, quorum 3: the 3rd highest approval."""
    votes = [
        *(vote("a", s) for s in (0.5, 0.1, 0.3, 0.9)),  # 0.9 0.5 0.3 -> 0.3
        *(vote("b", s) for s in (0.05, 0.4, 0.2)),
        vote("b", 0.95, verdict=False),  # a rejection (the norm bound) counts nothing
        *(vote("c", s) for s in (-0.2, -0.1, -0.3)),  # approve-all liars: clipped
        vote("other", 0.99),  # a vote on another candidate counts for nothing
    ]
    assert trust_scores(votes, ["a", "b"], 4) == [0.3, 0.05]
    assert trust_scores(votes, ["a", "c"], 4) == [0.3, 0.0]
    with pytest.raises(TrustError, match="1 approvals, quorum 3"):
        trust_scores(votes, ["a", "other"], 4)
    with pytest.raises(TrustError, match="numeric"):
        trust_scores([{"candidate": "a", "score": "0.5", "verdict": True}], ["a"], 1)
    for bad in (float("nan"), 10**400, 1.5):
        with pytest.raises(TrustError, match="outside"):
            trust_scores([vote("a", bad)], ["a"], 1)  # type: ignore[arg-type]
    with pytest.raises(TrustError, match="not an object"):
        trust_scores(["x"], ["a"], 1)  # type: ignore[list-item]
    with pytest.raises(TrustError, match="every included update has trust 0"):
        trust_scores([vote("a", -0.1), vote("b", 0.0)], ["a", "b"], 1)


def test_leaving_approvals_out_can_only_lower_a_trust() -> None:
    """What a leader choosing the block's votes can do: keep any quorum of the
    approvals. Every choice gives at most the full set's trust."""
    from itertools import combinations

    scores = (0.9, 0.5, 0.3, 0.1)
    full = trust_scores([vote("a", s) for s in scores], ["a"], 4)[0]
    kept = [
        trust_scores([vote("a", s) for s in subset], ["a"], 4)[0]
        for subset in combinations(scores, 3)
    ]
    assert max(kept) == full == 0.3 and min(kept) == 0.1


def test_clips_bring_long_updates_to_the_median_norm() -> None:
    updates = [{"w": np.array([v, 0.0])} for v in (1.0, -2.0, 8.0)]
    assert norm_clips(updates) == [1.0, 1.0, 0.25]  # lower median norm 2
    assert norm_clips([{"w": np.array([3.0])}]) == [1.0]
    clips = norm_clips([{"w": np.array([1.0])}, {"w": np.array([3.0])}])
    assert clips == [1.0, float(f"{1 / 3:.9g}")]  # rounded: the same on any BLAS
    with pytest.raises(TrustError, match="not finite"):
        norm_clips([{"w": np.array([np.inf])}])


def buffered(delta: float, examples: float, trust: float, clip: float) -> Any:
    parsed = ParsedUpdate({"w": np.array([delta])}, examples, MetricRecord(), "delta")
    return BufferedUpdate(
        node_id=1,
        trained_on=0,
        staleness=0,
        weight=1.0,
        update=parsed,
        examples=examples,
        metrics=RecordDict(),
        trust=trust,
        clip=clip,
    )


def test_the_step_weighs_examples_by_trust_and_deltas_by_clip() -> None:
    parent = {"w": np.array([0.0])}
    updates = [buffered(1.0, 10, 0.5, 1.0), buffered(4.0, 30, 0.1, 0.25)]
    result = server_step(parent, updates, lr=1.0, momentum=0.0, velocity=None)
    assert result is not None
    # (10 * 0.5 * 1 * 1.0 + 30 * 0.1 * 0.25 * 4.0) / (10 * 0.5 + 30 * 0.1)
    assert result.model["w"][0] == pytest.approx((5.0 + 3.0) / 8.0)
    plain = [buffered(1.0, 10, 1.0, 1.0), buffered(4.0, 30, 1.0, 1.0)]
    result = server_step(parent, plain, lr=1.0, momentum=0.0, velocity=None)
    assert result is not None and result.model["w"][0] == pytest.approx(13 / 4)


def pool(n: int = 4) -> list[Verifier]:
    return [Verifier(toy_score, key(i), reference_fn=toward_target) for i in range(n)]


@pytest.mark.parametrize(
    "threshold",
    [
        Threshold("loss", min_cosine=0.0),  # a verdict that rests on the share
        Threshold("none", min_cosine=-0.5),  # trust could be 0 for an approval
        None,  # the default: loss, no direction test
    ],
)
def test_trust_weighting_needs_the_direction_test_alone(
    threshold: Threshold | None,
) -> None:
    with pytest.raises(ValueError, match="direction test deciding alone"):
        Committee(pool(), threshold=threshold, trust_weighting=True)


def test_povstrategy_refuses_trust_weighting() -> None:
    committee = Committee(pool(), threshold=DIRECTION, trust_weighting=True)
    with pytest.raises(ValueError, match="use FedBuff"):
        PoVStrategy(FedAvg(), committee)


def skewed_app() -> ClientApp:
    """Even partitions step along the verifiers' reference (cosine 1); odd ones
    step back on ``b`` (cosine about 0.47): two trusts per block."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        step = np.float32(0.05 * (pid + 1))
        old = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        new = {
            "w": old["w"] + step,
            "b": old["b"] + (step if pid % 2 == 0 else -step / 5),
        }
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                "metrics": MetricRecord({"num-examples": 10 * (pid + 1)}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def trust_ledger(path: Path) -> Ledger:
    committee = Committee(pool(), threshold=DIRECTION, trust_weighting=True)
    return fedbuff_ledger(
        path, 3, app=skewed_app(), committee=committee, fraction_evaluate=0.0
    )


def test_a_trust_weighted_run_applies_the_signed_trusts_and_replays(
    tmp_path: Path,
) -> None:
    with trust_ledger(tmp_path / "l.db") as ledger:
        configs = [
            b.body[CONFIG_FIELD] for b in ledger.blocks() if CONFIG_FIELD in b.body
        ]
        assert configs and configs[0]["trust_weighting"] == "fltrust"
        assert ledger.verify().pov
        report = replay(ledger)
        assert report.complete and len(report.replayed) == 3, report
        # block 1 recomputed here by hand from its votes and stored payloads
        block = ledger.block(1)
        parent = ledger.blobs.load_model(ledger.block(0).header["model_hash"])
        deltas, weights = [], []
        for entry in block.body["included"]:
            _, content = ledger.blobs.load_update(entry["payload"])
            trained = {k: v.numpy() for k, v in content["arrays"].items()}
            deltas.append(
                {k: trained[k].astype(np.float64) - parent[k] for k in parent}
            )
            scores = sorted(
                v["score"]
                for v in block.body["votes"]
                if v["candidate"] == entry["digest"]
            )
            weights.append((entry["num_examples"], scores[(len(scores) - 1) // 2]))
        assert len({t for _, t in weights}) == 2  # both kinds of update included
        norms = [np.sqrt(sum((d[k] ** 2).sum() for k in d)) for d in deltas]
        median = sorted(norms)[(len(norms) - 1) // 2]
        total = sum(n * t for n, t in weights)
        expected = {
            k: parent[k]
            + sum(
                n * t * min(1.0, median / norm) * d[k]
                for (n, t), norm, d in zip(weights, norms, deltas, strict=True)
            )
            / total
            for k in parent
        }
        recorded = ledger.blobs.load_model(block.header["model_hash"])
        for k in parent:
            np.testing.assert_allclose(recorded[k], expected[k], rtol=1e-6)


def test_a_server_that_skips_the_trust_weights_gets_no_block_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that records trust weighting but aggregates without it: each
    committee member replays the pending block before it signs, gets another
    model, and refuses, so no such block is ever written."""
    monkeypatch.setattr(
        committeestage, "weigh_by_trust", lambda updates, votes, size: None
    )
    with pytest.raises(RuntimeError, match="0 of 4 committee members signed") as err:
        trust_ledger(tmp_path / "l.db")
    assert "replay refuses the block: " in str(err.value)
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert len(ledger) == 1  # the genesis block alone


def test_the_rule_digest_binds_trust_weighting_only_when_on() -> None:
    plain = Rule(DIRECTION)
    trusted = Rule(DIRECTION, trust_weighting=True)
    assert "aggregation" not in plain.to_json()  # old chains keep their digest
    assert trusted.to_json()["aggregation"] == "fltrust"
    assert plain.digest != trusted.digest


def test_a_trust_chain_cannot_be_resumed_without_it(tmp_path: Path) -> None:
    """The server alone cannot switch trust weighting off: the genesis block
    names the rule with it, and a committee without it is refused."""
    trust_ledger(tmp_path / "l.db").close()
    plain = Committee(pool(), threshold=DIRECTION)
    with pytest.raises(ValueError, match="judging rule"):
        fedbuff_ledger(
            tmp_path / "l.db",
            4,
            committee=plain,
            fraction_evaluate=0.0,
            resume_with_changed_config=True,  # past the config check
        )


def test_replay_refuses_settings_that_contradict_the_rule(tmp_path: Path) -> None:
    """A block whose recorded settings drop trust weighting on a chain whose
    genesis rule has it fails replay, naming the block."""
    from flchain_flwr.ledger.replayer import Replayer
    from flchain_flwr.ledger.replaysettings import Settings

    with trust_ledger(tmp_path / "l.db") as ledger:
        replayer = Replayer(ledger, server_step)
        replayer.record(ledger.block(0))
        assert replayer.rule_trust is True
        replayer.record(ledger.block(1))
        configs = list(replayer.configs.values())
        assert Settings.of(configs[0]).trust
        for digest in replayer.configs:
            del replayer.configs[digest]["trust_weighting"]
        with pytest.raises(Exception, match="without trust, the chain's judging rule"):
            replayer.block(ledger.block(0), ledger.block(1))


def test_the_app_keys_set_trust_weighting_and_refuse_it_with_the_loss_rule() -> None:
    from flchain_cnn.verifiers import app_rule

    cfg = {"pov-metric": "none", "pov-tolerance": 0.05, "pov-reference-epochs": 10}
    assert not app_rule(cfg).trust_weighting
    assert app_rule({**cfg, "pov-trust-weighting": True}).trust_weighting
    loss = {**cfg, "pov-metric": "loss", "pov-trust-weighting": True}
    with pytest.raises(ValueError, match="pov-trust-weighting = false"):
        app_rule(loss)
    assert not app_rule({**loss, "pov-trust-weighting": False}).trust_weighting

"""A committee that stays unreachable stops the run (pov.outage)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, MessageType

from flchain_flwr import cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.pov import Committee, CommitteeDecision, discovery, queries, remote
from flchain_flwr.pov.decision import Cast
from flchain_flwr.pov.outage import (
    OUTAGE_LIMIT,
    CommitteeStalledError,
    CommitteeUnreachableError,
    OutageWatch,
)
from flchain_flwr.pov.silence import CommitteeSilentError
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import AsyncResult

from .test_pov import BAD, GOOD, decide, verifiers
from .test_pov_chain import _node_app, _remote_fedbuff, _verifier_grid
from .toy import constant_work, initial_arrays

MEMBERS = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
NODES = {key: 100 + i for i, key in enumerate(MEMBERS)}


def decision(unreachable: int, *, asked: bool = True) -> CommitteeDecision:
    """A vote request to four members (quorum 3) that the first
    ``unreachable`` of them did not answer (``asked``: it was sent at all)."""
    gone = MEMBERS[:unreachable] if asked else []
    return CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=3,
        votes=[{"verifier": k, "verdict": True} for k in MEMBERS[unreachable:]]
        if asked
        else [],
        outcomes=[],
        dropped_votes=[f"verifier {k[:12]}…: node is not connected" for k in gone],
        unreachable=gone,
    )


# ------------------------------------------------------------------ the watch
def test_the_watch_raises_past_the_limit_on_the_clock_it_is_given() -> None:
    watch = OutageWatch(limit=100.0, nodes=NODES)
    watch.observe(decision(2), sent=10.0, now=15.0)  # 2 of 4 answered < 3
    watch.observe(decision(4), sent=50.0, now=110.0)  # exactly 100 s: not past
    with pytest.raises(CommitteeUnreachableError) as raised:
        watch.observe(decision(4), sent=111.0, now=110.5)
    message = str(raised.value)
    for key, node in NODES.items():  # all four unreachable in the last request
        assert f"{key[:12]}… (node {node})" in message
    assert "since grid time 10.0 s" in message
    assert "0 of 4 members answered, quorum 3" in message
    assert "valid up to its last block" in message and "resumes" in message


def test_a_request_a_quorum_answered_resets_and_unasked_ones_leave_it() -> None:
    watch = OutageWatch(limit=100.0)
    watch.observe(decision(4), sent=0.0, now=1.0)
    watch.observe(decision(1), sent=90.0, now=91.0)  # 3 of 4 answered: a quorum
    assert watch.since is None
    watch.observe(decision(2), sent=95.0, now=96.0)
    watch.observe(decision(0, asked=False), sent=150.0, now=150.0)  # no request
    assert watch.since == 95.0
    watch.observe(decision(3), sent=190.0, now=195.0)
    with pytest.raises(CommitteeUnreachableError):
        watch.observe(decision(3), sent=196.0, now=196.0)


def test_an_empty_pool_counts_and_no_limit_waits_for_ever() -> None:
    empty = CommitteeDecision(height=1, committee=[], needed=1, votes=[], outcomes=[])
    with pytest.raises(CommitteeUnreachableError, match="no verifier is left"):
        OutageWatch(limit=5.0).observe(empty, sent=10.0, now=20.0)
    forever = OutageWatch(limit=None)
    for t in range(0, 10**6, 10**4):
        forever.observe(decision(4), sent=float(t), now=float(t))
    assert forever.since == 0.0


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_a_committee_refuses_a_bad_limit(bad: float) -> None:
    with pytest.raises(ValueError, match="outage_limit"):
        Committee(verifiers(4), outage_limit=bad)
    assert Committee(verifiers(4), outage_limit=0).outage_limit is None
    assert Committee(verifiers(4), outage_limit=math.inf).outage_limit is None
    assert Committee(verifiers(4)).outage_limit == OUTAGE_LIMIT


# ----------------------------------------------------------- on the grid
def test_every_verifier_gone_for_good_stops_the_run_with_a_valid_ledger(
    tmp_path: Path,
) -> None:
    """Every verifier node leaves at t=35 s for good; training takes 10 s a
    round, so the run keeps asking. Before the bound this run sent 362 vote
    requests and ended quietly on FedBuff's 3600 s idle timeout with 2 of 8
    versions, as if it had merely finished early; with the default limit it
    stops with the error once 1800 s of grid time pass without a quorum."""
    grid = _verifier_grid(
        tmp_path, [0, 1, 2, 3], down=(35.0, math.inf), work_fn=_slow_training
    )
    path = tmp_path / "gone.db"
    strategy = _remote_fedbuff(grid, path, None)
    nodes = strategy.committee.nodes  # type: ignore[union-attr]
    with pytest.raises(CommitteeUnreachableError) as raised:
        simulate(strategy, grid, initial_arrays(), num_rounds=8)
    message = str(raised.value)
    for key, node in nodes.items():
        assert f"{key[:12]}… (node {node})" in message
    assert "node is not connected" in message
    since = float(message.split("since grid time ")[1].split(" s")[0])
    assert 35.0 <= since <= 50.0  # the first request after they left
    assert OUTAGE_LIMIT < grid.clock.now() - since <= OUTAGE_LIMIT + 20.0
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 3 and ledger.verify().ok  # the blocks before t=35
    out = io.StringIO()
    assert cli.main(["ledger", "verify", str(path)], out) == 0, out.getvalue()


@pytest.mark.parametrize(("limit", "finishes"), [(30.0, True), (10.0, False)])
def test_an_outage_shorter_than_the_limit_lets_the_run_finish(
    tmp_path: Path, limit: float, finishes: bool
) -> None:
    """Every verifier node offline for 15.5 s of grid time: a 30 s limit lets
    the run finish all 8 versions, a 10 s one stops it (the same run)."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3], down=(19.5, 35.0))
    path = tmp_path / "short.db"
    strategy = _remote_fedbuff(grid, path, None, outage_limit=limit)
    if not finishes:
        with pytest.raises(CommitteeUnreachableError, match="past the outage limit"):
            simulate(strategy, grid, initial_arrays(), num_rounds=8)
        return
    result = simulate(strategy, grid, initial_arrays(), num_rounds=8).result
    assert isinstance(result, AsyncResult) and len(result.versions) == 8
    assert any(d["accepted"] == 0 for d in result.committee_decisions)  # the outage
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok


def _slow_training(msg: Message, reply: Message) -> float:
    """10 s of grid time per training round, 1 s per PoV message."""
    del reply
    return 10.0 if msg.metadata.message_type == MessageType.TRAIN else 1.0


def _refuse_votes(msg: Message, context_: Context, call_next: object) -> Message:
    """Every verifier node answers a vote request with a refusal."""
    if msg.metadata.message_type == queries.VOTE:
        raise ValueError("judges by another rule")
    reply: Message = call_next(msg, context_)  # type: ignore[operator]
    return reply


def test_members_that_answer_but_refuse_are_silent_not_unreachable(
    tmp_path: Path,
) -> None:
    """Remote members that all refuse every vote: with a 1 s outage limit
    (far less than the 5 requests take) the silence rule still stops the run,
    since a refusal is an answer."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3], mods=[_refuse_votes])
    strategy = _remote_fedbuff(grid, tmp_path / "silent.db", None, outage_limit=1.0)
    with pytest.raises(CommitteeSilentError, match="judges by another rule"):
        simulate(strategy, grid, initial_arrays(), num_rounds=4)


# ------------------------------------------------------------- the app's key
@pytest.mark.parametrize(
    ("value", "expected"), [(1800.0, 1800.0), (60, 60.0), (0, None), (math.inf, None)]
)
def test_the_apps_key_sets_the_limit(
    value: float, expected: float | None, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from flchain_cnn.server_app import committee_rules

    from flchain_flwr.sim import app_run_config

    cfg = app_run_config("apps/flchain_cnn", {"pov-outage-limit": value})
    rules = committee_rules(cfg)
    assert rules["outage_limit"] == expected
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    committee = remote.RemoteCommittee(grid, nodes, **rules)  # type: ignore[arg-type]
    assert committee.outage_limit == expected
    assert app_run_config("apps/flchain_cnn")["pov-outage-limit"] == OUTAGE_LIMIT


@pytest.mark.parametrize("bad", [-1.0, "30 min", True, math.nan])
def test_a_bad_outage_limit_stops_the_app_before_it_waits_for_verifiers(
    bad: float | str | bool, tmp_path: Path
) -> None:
    """Refused with the key's name before discovery waits (up to
    ``pov-discovery-timeout``) for verifier nodes, here for ones that never
    come: the grid's clock never moves."""
    pytest.importorskip("torch")
    from flchain_cnn.server_app import remote_committee

    from flchain_flwr.sim import app_run_config

    cfg = app_run_config(
        "apps/flchain_cnn", {"pov-remote-verifiers": 4, "pov-outage-limit": bad}
    )
    grid = _verifier_grid(tmp_path, [])  # trainers only
    with pytest.raises(ValueError, match="run config key 'pov-outage-limit'") as raised:
        remote_committee(grid, cfg)
    assert repr(bad) in str(raised.value) and ">= 0" in str(raised.value)
    assert grid.clock.now() == 0.0


class _OneMemberLostPerRequest(Committee):
    """Each vote request loses a different member's answer (a flaky link):
    every request is still answered by 3 of 4, a quorum."""

    requests = 0

    def cast_votes(self, members: Sequence[str], **ask: Any) -> Cast:
        cast = super().cast_votes(members, **ask)
        gone = members[self.requests % len(members)]
        self.requests += 1
        return Cast(
            [v for v in cast.votes if v["verifier"] != gone],
            [f"verifier {gone[:12]}…: no reply in time"],
            frozenset({gone}),
        )


def test_requests_each_answered_by_a_quorum_are_no_outage() -> None:
    """A decision that judges its approved candidates again (BAD rejected,
    GOOD asked again at its final share) sends two requests; a different
    member misses each, so each was answered by 3 of 4. That is no outage,
    however small the limit."""
    committee = _OneMemberLostPerRequest(verifiers(4))
    decided = decide(committee, GOOD + BAD)
    assert committee.requests == 2
    assert [o.accepted for o in decided.outcomes] == [True] * 3 + [False] * 2
    assert len(decided.unreachable) == 1  # the last request's: the deciding one
    watch = OutageWatch(limit=1.0)
    watch.observe(decided, sent=0.0, now=10.0)
    assert watch.since is None


def test_a_member_gone_beside_one_that_refuses_is_an_outage() -> None:
    """One member of four unreachable and one refusing every vote: 3 answer
    (a quorum) but only 2 can ever approve, so nothing passes. The silence
    rule leaves requests that a member missed to this watch, so this one
    must count them, or the run stalls until FedBuff's idle timeout."""
    stalled = CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=3,
        votes=[{"verifier": k, "verdict": True} for k in MEMBERS[2:]],
        outcomes=[],
        dropped_votes=[
            f"verifier {MEMBERS[0][:12]}…: node is not connected",
            f"verifier {MEMBERS[1][:12]}…: refused: judges by another rule",
        ],
        unreachable=[MEMBERS[0]],
    )
    watch = OutageWatch(limit=100.0, nodes=NODES)
    watch.observe(stalled, sent=0.0, now=5.0)
    with pytest.raises(CommitteeUnreachableError) as raised:
        watch.observe(stalled, sent=96.0, now=101.0)
    assert "valid votes from 2" in str(raised.value)
    alive = replace(stalled, unreachable=[])  # all answered, still 2 voters
    with pytest.raises(CommitteeStalledError) as stalled_on:
        watch.observe(alive, sent=102.0, now=103.0)
    assert not isinstance(stalled_on.value, CommitteeUnreachableError)
    assert watch.since == 0.0


def _refusing_grid(
    tmp_path: Path,
    refusing: Collection[int],
    *,
    during: tuple[float, float] = (0.0, math.inf),
    work_fn: Callable[[Message, Message], float] | None = None,
    profiles: Mapping[int, DeviceProfile] | None = None,
) -> VirtualGrid:
    """Three trainers and four verifier nodes (shards 0-3, nodes 3-6 of
    ``grid.node_ids``); while the grid's clock is in ``during``, the shards
    in ``refusing`` answer every vote request with a refusal. ``profiles``:
    a shard's own device profile."""
    grid: list[VirtualGrid] = []

    def refuse(msg: Message, context_: Context, call_next: object) -> Message:
        shard = context_.node_config.get("verifier-shard")
        if (
            msg.metadata.message_type == queries.VOTE
            and shard in refusing
            and during[0] <= grid[0].clock.now() < during[1]
        ):
            raise ValueError("judges by another rule")
        reply: Message = call_next(msg, context_)  # type: ignore[operator]
        return reply

    configs: list[dict[str, int | float | str | bool]] = [
        {"partition-id": p, "num-partitions": 3} for p in range(3)
    ]
    configs += [
        {
            "partition-id": 0,
            "num-partitions": 3,
            "role": "verifier",
            "verifier-key": str(tmp_path / f"verifier-{i}.key"),
            "verifier-shard": i,
        }
        for i in range(4)
    ]
    devices = [DeviceProfile() for _ in configs]
    for shard, profile in (profiles or {}).items():
        devices[3 + shard] = profile
    grid.append(
        VirtualGrid(
            _node_app([refuse]),
            devices,
            node_configs=configs,
            work_fn=work_fn or constant_work(1.0),
        )
    )
    return grid[0]


def test_one_verifier_gone_and_one_refusing_stop_the_run(tmp_path: Path) -> None:
    """Verifier 1 leaves at t=20 s for good and verifier 2 refuses every
    vote: from then on 3 of 4 answer but only 2 approve, short of the
    quorum of 3. Before, neither watch counted it and the run ended on
    FedBuff's idle timeout at 3620 s of grid time with 3 of 8 versions, as
    if it had merely finished early."""
    grid = _refusing_grid(
        tmp_path, {2}, profiles={1: DeviceProfile(online=((0.0, 20.0),))}
    )
    path = tmp_path / "stalled.db"
    strategy = _remote_fedbuff(grid, path, None)
    with pytest.raises(CommitteeUnreachableError, match="valid votes from 2"):
        simulate(strategy, grid, initial_arrays(), num_rounds=8)
    assert grid.clock.now() < 20.0 + OUTAGE_LIMIT + 60.0
    with Ledger(path, create=False) as ledger:
        assert 1 <= len(ledger) < 9 and ledger.verify().ok

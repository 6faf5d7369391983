"""Trust weighting with remote verifier nodes, on the virtual grid: members
whose own rule weighs by trust replay and sign an honest run, and refuse a
server (which holds no verifier key) that aggregates, records or judges
otherwise than that rule."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr import cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.blocks import CONFIG_FIELD
from flchain_flwr.ledger.consensus import quorum
from flchain_flwr.ledger.replaysettings import rule_weighs_by_trust
from flchain_flwr.pov import Rule, discovery
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.silence import CommitteeSilentError
from flchain_flwr.pov.trust import weigh_by_trust
from flchain_flwr.sim import simulate
from flchain_flwr.strategies import AsyncResult, Constant, FedBuff, committeestage
from flchain_flwr.strategies.block import BufferedUpdate

from .test_pov import CHAIN
from .test_remote_pov import _grid
from .test_trust import DIRECTION, skewed_app
from .toy import initial_arrays

MEMBERS = 4
TRUSTING: dict[str, Any] = {"min-cosine": 0.0, "trust-weighting": True}
"""Node config of a verifier whose own rule is the direction test, by trust."""
PLAIN: dict[str, Any] = {"min-cosine": 0.0}
"""The same direction test, without trust weighting."""
BUDGET = 20.0
"""Grid seconds a run whose every header is refused is given: a few versions'
worth (each takes 6 s here)."""


def _run(
    tmp_path: Path, members: dict[str, Any], *, trust: bool, **settings: Any
) -> tuple[AsyncResult, RemoteCommittee]:
    """Two versions of FedBuff over skewed trainers (two trusts per block),
    judged by a committee of remote nodes configured as ``members``, the
    server's committee told ``trust_weighting=trust``."""
    grid = _grid(tmp_path, [members] * MEMBERS, attackers=set(), app=skewed_app())
    nodes = discovery.discover_verifiers(grid, expected=MEMBERS, timeout=30)
    committee = RemoteCommittee(
        grid, nodes, threshold=DIRECTION, trust_weighting=trust, chain_id=CHAIN
    )
    strategy = FedBuff(
        buffer_size=3,
        staleness_fn=Constant(),
        committee=committee,
        ledger=tmp_path / "chain.db",
        seed=0,
        fraction_evaluate=0.0,
        **settings,
    )
    return simulate(strategy, grid, initial_arrays(), num_rounds=2).result, committee


def _genesis_alone(path: Path) -> None:
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 1
        assert not ledger.header_signatures(1)


def _no_member_signs(
    tmp_path: Path, members: dict[str, Any], *, trust: bool, why: str
) -> None:
    """The run stops at block 1, every member refusing its header for ``why``."""
    with pytest.raises(Exception, match="0 of 4 committee members signed") as err:
        _run(tmp_path, members, trust=trust)
    assert str(err.value).count(why) == MEMBERS, err.value
    _genesis_alone(tmp_path / "chain.db")


def test_remote_members_that_weigh_by_trust_replay_and_sign_an_honest_run(
    tmp_path: Path,
) -> None:
    result, _ = _run(tmp_path, TRUSTING, trust=True)
    assert len(result.versions) == 2 and not result.rejected
    path = tmp_path / "chain.db"
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 3
        genesis = ledger.block(0).body
        assert rule_weighs_by_trust(genesis) is True
        configs = [
            b.body[CONFIG_FIELD] for b in ledger.blocks() if CONFIG_FIELD in b.body
        ]
        assert configs and all(c["trust_weighting"] == "fltrust" for c in configs)
        stale = 0
        for block in ledger.blocks():
            if not block.height:
                continue
            signatures = ledger.header_signatures(block.height)
            assert len(signatures) == MEMBERS
            assert all(s["replayed"] is True for s in signatures)
            trusts = set()
            for entry in block.body["included"]:
                approvals = sorted(
                    (
                        v["score"]
                        for v in block.body["votes"]
                        if v["candidate"] == entry["digest"] and v["verdict"]
                    ),
                    reverse=True,
                )
                trusts.add(approvals[quorum(MEMBERS) - 1])
                stale += entry["staleness"] > 0
            assert len(trusts) == 2, trusts  # else FedBuff's plain step would do
    assert stale  # a full-weights reply, replayed against its older base
    out = io.StringIO()
    assert cli.main(["ledger", "verify", str(path), "--replay"], out) == 0
    assert "in 2 of them a quorum of signers recomputed the model" in out.getvalue()


def _untrusted(
    updates: Sequence[BufferedUpdate], votes: Sequence[Any], size: int
) -> None:
    """The clips, but every trust left at 1: the votes' scores unused."""
    weigh_by_trust(updates, votes, size)
    for update in updates:
        update.trust = 1.0


@pytest.mark.parametrize(
    "weigh",
    [lambda updates, votes, size: None, _untrusted],
    ids=["plain-step", "trusts-unused"],
)
def test_a_server_that_skips_the_trust_weights_gets_no_remote_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weigh: Any
) -> None:
    """It records trust weighting (its committee has it, as the members do)
    but takes FedBuff's plain step, or clips without the trusts: every
    member's replay gives another model."""
    monkeypatch.setattr(committeestage, "weigh_by_trust", weigh)
    why = "replay refuses the block: the replayed model "
    _no_member_signs(tmp_path, TRUSTING, trust=True, why=why)


@pytest.mark.parametrize(
    ("members", "trust"), [(TRUSTING, False), (PLAIN, True)], ids=["drop", "add"]
)
def test_members_refuse_the_vote_requests_of_a_server_judging_otherwise(
    tmp_path: Path, members: dict[str, Any], trust: bool
) -> None:
    """Trust weighting is in the rule digest the votes sign: a server whose
    committee drops it (or adds it) names another rule, and every member
    refuses to vote, so nothing is approved, no block is written, and the run
    stops (pov.silence) with the members' reason, well within its budget."""
    with pytest.raises(CommitteeSilentError) as raised:
        _run(tmp_path, members, trust=trust, time_budget=BUDGET)
    _genesis_alone(tmp_path / "chain.db")
    asked = Rule(DIRECTION, trust_weighting=trust).digest
    own = Rule(DIRECTION, trust_weighting=not trust).digest
    why = f"the request names rule {asked[:16]}…, this verifier judges by {own[:16]}…"
    assert str(raised.value).count(why) == MEMBERS, raised.value


@pytest.mark.parametrize(
    ("members", "trust"), [(TRUSTING, True), (PLAIN, False)], ids=["drop", "add"]
)
def test_members_refuse_a_header_whose_recorded_settings_contradict_their_rule(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    members: dict[str, Any],
    trust: bool,
) -> None:
    """The server judges by the members' rule but records settings that drop
    (or add) trust weighting: the block's config digest then names an
    aggregation the members did not agree to, and none signs its header."""
    honest = FedBuff.config_dict

    def recorded(self: FedBuff) -> dict[str, Any]:
        config = honest(self)
        if trust:
            del config["trust_weighting"]
        else:
            config["trust_weighting"] = "fltrust"
        return config

    monkeypatch.setattr(FedBuff, "config_dict", recorded)
    why = "the recorded settings weigh updates otherwise than its rule"
    _no_member_signs(tmp_path, members, trust=trust, why=why)

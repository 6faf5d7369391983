"""The pure block rules a PoV block's votes are checked by, one at a time."""

from __future__ import annotations

import math
from typing import Any

import pytest

from flchain_flwr.ledger.consensus import (
    PoVRules,
    judged_shares,
    quorum_problem,
    votes_problem,
    weights_problem,
)
from flchain_flwr.ledger.povstate import PoVState
from flchain_flwr.pov.judging import Score, signed_score

COMMITTEE = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
UPDATE, OTHER = "1" * 64, "2" * 64


def _vote(member: str, verdict: bool = True, weight: float = 0.0) -> dict[str, object]:
    return {
        "verifier": member,
        "candidate": UPDATE,
        "verdict": verdict,
        "weight": weight,
    }


def test_votes_must_come_from_members_once_each() -> None:
    assert votes_problem([_vote(k) for k in COMMITTEE], COMMITTEE) is None
    outsider = [_vote(COMMITTEE[0]), _vote("e" * 64)]
    assert votes_problem(outsider, COMMITTEE) == (
        "vote 1 is from a verifier outside the committee"
    )
    twice = [_vote(COMMITTEE[1]), _vote(COMMITTEE[1], verdict=False)]
    assert votes_problem(twice, COMMITTEE) == (
        "vote 1 is a second vote by the same verifier"
    )


def test_an_included_update_needs_a_quorum_of_approvals() -> None:
    included = [{"digest": UPDATE}]
    votes = [_vote(k, verdict=i < 3) for i, k in enumerate(COMMITTEE)]
    assert quorum_problem(included, votes, COMMITTEE) is None
    problem = quorum_problem(included, votes[:2], COMMITTEE)
    assert problem is not None and problem.endswith("2 approvals; the quorum is 3")


def test_votes_sign_the_share_the_block_applies() -> None:
    included = [
        {"digest": UPDATE, "weight": 1.0, "num_examples": 30},
        {"digest": OTHER, "weight": 0.5, "num_examples": 10},
    ]
    share = judged_shares(0.5, [1.0, 0.5], [30, 10])[0]
    body = {"included": included, "votes": [_vote(COMMITTEE[0], weight=share)]}
    assert weights_problem(0.5, body) is None
    assert weights_problem(1.0, body) is not None  # another lr, another share
    stray = {"included": [], "rejected": [], "votes": [_vote(COMMITTEE[0])]}
    problem = weights_problem(0.5, stray)
    assert problem is not None and problem.endswith("neither includes nor rejects")
    assert weights_problem(0.5, {**stray, "rejected": [{"digest": UPDATE}]}) is None


def test_the_signed_score_is_the_cosine_else_the_accuracy() -> None:
    score = Score(accuracy=0.81234567, loss=0.4)
    assert signed_score(0.123456789, score) == 0.123457
    assert signed_score(None, score) == 0.812346
    assert signed_score(math.nan, score) == -1.0
    assert signed_score(None, Score(math.inf, 0.4)) == -1.0
    assert signed_score(None, None) == -1.0


RULES = {
    "pool": COMMITTEE,
    "committee_size": 4,
    "initial_stake": 100.0,
    "slash": 1.0,
    "floor": 50,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool", "a" * 64),  # a string, not a list: read as 64 one-letter keys
        ("pool", [1, 2, 3]),
        ("pool", {k: 1 for k in COMMITTEE}),
        ("committee_size", 3.7),
        ("committee_size", True),
        ("committee_size", "4"),
        ("initial_stake", "100"),
        ("slash", True),
        ("floor", None),
    ],
)
def test_pov_rules_are_read_only_in_their_exact_shape(field: str, value: Any) -> None:
    """Genesis rules a third party's reader would refuse are refused here too,
    rather than read as some other rules (a float committee size cut down)."""
    assert PoVRules.from_json(RULES) == PoVRules(tuple(COMMITTEE), 4, floor=50.0)
    with pytest.raises((TypeError, ValueError)):
        PoVRules.from_json({**RULES, field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stakes", {k: "100" for k in COMMITTEE}),
        ("stakes", {k: True for k in COMMITTEE}),
        ("equivocated", "a"),  # a string, not a list
        ("server_lr", "1.0"),
        ("server_lr", True),
        ("server_lr", 0.0),
    ],
)
def test_a_pov_state_is_read_only_in_its_exact_shape(field: str, value: Any) -> None:
    rule = {"format": "x"}
    good = PoVState(PoVRules(tuple(COMMITTEE), 4)).to_json() | {"server_lr": 1.0}
    assert PoVState.from_json(good, rule).stakes == dict.fromkeys(COMMITTEE, 100.0)
    with pytest.raises(ValueError, match="not a PoV state"):
        PoVState.from_json({**good, field: value}, rule)

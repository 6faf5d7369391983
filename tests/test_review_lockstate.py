"""Review (h-review): holes in a verifier node's durable locks."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import RecordDict

from flchain_flwr.pov import queries, voterequest

from .pov_replies import reply_candidate
from .test_lockstate import RULE, _me, _node, _node_config, _rejecting
from .test_pov import context, model


def _vote_in_view(view: int, node_id: int) -> RecordDict:
    """A vote request at height 5 in ``view`` on node ``node_id``'s reply."""
    return voterequest.vote_request(
        context(5, rule=RULE.digest, view=view),
        model(0.0),
        [reply_candidate(node_id, 0.5)],
        [1.0],
    )


@pytest.mark.parametrize("hop", [1, 7])
def test_a_vote_in_a_later_view_does_not_free_a_header_that_leaves_out_its_vote(
    tmp_path: Path, hop: int
) -> None:
    """It votes at height 5 view 0 on node 1's reply. The server then sends a
    vote request at the same height in view ``hop`` (nothing checks that the
    view changed: a request names any view), which replaces the votes kept
    (one position's only). A view-0 header that rejects node 1's reply
    without the node's vote on it is then signed: the lock that the state
    file was made to keep ("a header that leaves out any vote it cast there is
    refused") is lifted by one extra vote request."""
    ask = _node(_node_config(tmp_path), run_id=1)
    me = _me(tmp_path)
    ask(queries.VOTE, _vote_in_view(0, node_id=1))
    with pytest.raises(ValueError, match="leaves out this verifier's vote"):
        ask(queries.SIGN, _rejecting(me, [1]))  # refused, as designed
    ask(queries.VOTE, _vote_in_view(hop, node_id=2))
    with pytest.raises(ValueError, match="leaves out this verifier's vote"):
        ask(queries.SIGN, _rejecting(me, [1]))


def test_a_state_file_reached_through_a_symlink_stays_the_file_written(
    tmp_path: Path,
) -> None:
    """``verifier-state`` names a symlink into a kept volume (a common way to
    put state on persistent storage). The first write replaces the link with a
    regular file beside it (``os.replace`` of the temporary file), so the
    kept file never sees a lock: a node rebuilt with the link (a new
    container, the volume kept) reads the old locks and signs against what it
    signed. The lock file is also taken beside the link, not the target, so a
    second config naming the target directly takes another lock."""
    kept = tmp_path / "volume" / "v.state"
    kept.parent.mkdir()
    link = tmp_path / "v.state.link"
    link.symlink_to(kept)
    ask = _node(_node_config(tmp_path, **{"verifier-state": str(link)}), run_id=1)
    ask(queries.VOTE, _vote_in_view(0, node_id=1))
    assert link.is_symlink(), "the link was replaced by a regular file"
    assert kept.exists(), "the locks never reached the file the link names"


def test_the_state_file_is_bounded(tmp_path: Path) -> None:
    """lockstate's docstring: the node "drops none it holds, so the file stays
    bounded" (73 KiB at MAX_VOTED). The bound is per chain: the server names
    the chain id (any string, any length) and the node keeps every chain's
    locks forever, rewriting the whole file (fsynced) at every vote. One vote
    on one candidate in a chain with a 100 kB id already passes 73 KiB."""
    from flchain_flwr.ledger import VoteContext

    ask = _node(_node_config(tmp_path), run_id=1)
    base = context(5, rule=RULE.digest)
    long_chain = VoteContext(
        "c" * 100_000, 5, base.prev_hash, base.parent_model, RULE.digest, 0
    )
    ask(
        queries.VOTE,
        voterequest.vote_request(
            long_chain, model(0.0), [reply_candidate(1, 0.5)], [1.0]
        ),
    )
    assert (tmp_path / "v.key.state").stat().st_size <= 73 * 1024

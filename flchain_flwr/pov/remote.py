"""PoV verifiers on SuperNodes of their own, over Flower's transport.

A verifier node is an ordinary SuperNode whose node config says
``role="verifier"`` and names its Ed25519 key file. It holds its trusted data
locally and answers three query messages (:mod:`.queries`): its identity, its
votes, and its signature as a block's leader or committee member; what it
checks and refuses before it answers is :mod:`.verifiernode`'s.

On the server, :func:`~.discovery.discover_verifiers` maps public keys to
node IDs and :class:`RemoteCommittee` is a
:class:`~flchain_flwr.pov.Committee` whose members vote (in parallel, one
message each) and sign blocks remotely. Votes pass the same checks as local
ones (:func:`~flchain_flwr.pov.collect_votes`: signature for this chain and
height, committee membership, one vote per candidate, judged at the share
asked), so a verifier node can lie or fail but cannot forge another's vote;
at most the votes it was asked for are read from its reply
(:func:`~.queries.parse_votes`), and each reason quoted from a node (its
error reply, what it echoed) is cut to
:data:`~flchain_flwr.quoting.REASON_CHARS` (:func:`member_problem`), so it
cannot flood a decision, or the view-change and header-signing record, either.

This module is the server's :class:`RemoteCommittee` and its
:class:`RemoteSigner`; the query messages are in :mod:`.queries`, the node's
side in :mod:`.verifiernode` and finding the nodes in :mod:`.discovery`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ..arrays import NDArrays
from ..ledger import Block, Ledger, VoteContext
from ..ledger.statements import view_change_statement
from ..quoting import clip
from .committee import Committee
from .decision import Candidate, Cast
from .memberreplay import replay_material
from .members import header_entry, header_request, view_change_entry
from .queries import (
    CONFIG,
    SIGN,
    VOTE,
    RemoteVerifierError,
    answered,
    bytes_field,
    config,
    parse_votes,
    said_moved_past,
    send,
)
from .voterequest import vote_request


@dataclass(frozen=True)
class _Signed:
    signature: bytes


class RemoteSigner:
    """Signs block headers with a key that never leaves its verifier node.

    Satisfies the ledger's signer interface (``verify_key``, ``sign``); every
    signature that comes back is checked before it is used.
    """

    def __init__(
        self, grid: Grid, node_id: int, public_key: str, timeout: float
    ) -> None:
        self.grid = grid
        self.node_id = node_id
        self.verify_key = VerifyKey(public_key.encode(), encoder=HexEncoder)
        self.timeout = timeout

    def sign(self, message: bytes) -> _Signed:
        """The leader node's signature over ``message`` (raises if none or bad)."""
        content = RecordDict({CONFIG: ConfigRecord({"message": message})})
        reply = send(self.grid, {self.node_id: (SIGN, content)}, self.timeout).get(
            self.node_id
        )
        if reply is None:
            raise RemoteVerifierError(
                f"leader node {self.node_id} did not sign within {self.timeout:g}s"
            )
        if reply.has_error():
            raise RemoteVerifierError(
                f"leader node {self.node_id} refused to sign: "
                f"{clip(reply.error.reason)}"
            )
        try:
            signature = bytes_field(config(reply.content), "signature")
            self.verify_key.verify(message, signature)
        except (ValueError, BadSignatureError) as exc:
            raise RemoteVerifierError(
                f"leader node {self.node_id} sent a bad signature: {clip(str(exc))}"
            ) from exc
        return _Signed(signature)


class RemoteCommittee(Committee):
    """A PoV committee whose verifiers run on SuperNodes of their own.

    Everything but where votes come from is :class:`Committee`'s: the pool, the
    rotation, the quorum, the deposits and the checks on every vote. Each
    block's members are asked in parallel (one ``query.pov_vote`` message each,
    carrying the global model and the candidates' updates); its leader signs
    the block on its own node (``query.pov_sign``).

    Parameters
    ----------
    grid : Grid
        The run's grid (the one the strategy uses).
    nodes : Mapping[str, int]
        ``{verifier public key: node ID}``, e.g. from
        :func:`~.discovery.discover_verifiers`. These nodes are kept out of
        training.
    timeout : float (default: 120.0)
        Seconds (finite, > 0) to wait for a round of votes, or for the leader's
        signature. A member that has not answered by then has no votes in this
        block.
    **settings
        :class:`Committee`'s keyword arguments (committee_size, threshold,
        deposits, prefilters, scoring, consensus_delay, chain_id).
    """

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[str, int],
        *,
        timeout: float = 120.0,
        **settings: Any,
    ) -> None:
        if not nodes:
            raise ValueError("a remote committee needs at least one verifier node")
        if not 0 < timeout < math.inf:  # NaN too
            raise ValueError(f"timeout must be a finite number > 0, not {timeout!r}")
        super().__init__((), remote_members=tuple(sorted(nodes)), **settings)
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout = timeout

    needs_payloads = True

    def __repr__(self) -> str:
        return "Remote" + super().__repr__()

    @property
    def reserved_nodes(self) -> frozenset[int]:
        return frozenset(self.nodes.values())

    def signer(self, leader: str) -> RemoteSigner:
        return RemoteSigner(self.grid, self.nodes[leader], leader, self.timeout)

    def header_signatures(
        self, members: Sequence[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Each member node's header signature (see
        :func:`~.members.member_header`), with what it needs to replay the
        block (:func:`~.memberreplay.replay_material`)."""
        fields, arrays = replay_material(ledger, block)
        request = header_request(block, view, self.state)
        for name, value in fields.items():
            request[name] = value
        return self._ask_members(members, request, header_entry, arrays)

    def view_change_signatures(
        self, members: Sequence[str], context: VoteContext
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Each member node's signed view change."""
        assert context.prev_hash is not None
        statement = view_change_statement(
            context.chain_id, context.height, context.view, context.prev_hash
        )
        request = ConfigRecord({"kind": "view-change", "message": statement})
        return self._ask_members(members, request, view_change_entry)

    def _ask_members(
        self,
        members: Sequence[str],
        request: ConfigRecord,
        entry: Callable[[str, ConfigRecord], dict[str, Any]],
        arrays: Mapping[str, ArrayRecord] | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Send ``request`` (and ``arrays``) to each member node in parallel;
        the entries ``entry`` makes of their replies, and why others gave none."""
        node_of = {key: self.nodes[key] for key in members}
        content = RecordDict({CONFIG: request, **(arrays or {})})
        replies = send(
            self.grid,
            {node: (SIGN, content) for node in node_of.values()},
            self.timeout,
        )
        entries: list[dict[str, Any]] = []
        problems: list[str] = []
        for key, node in node_of.items():
            reply = replies.get(node)
            if reply is None or reply.has_error():
                why = "no reply in time" if reply is None else reply.error.reason
                problems.append(member_problem(key, node, why))
                continue
            try:
                entries.append(entry(key, config(reply.content)))
            except (ValueError, KeyError) as exc:
                problems.append(member_problem(key, node, str(exc)))
        return entries, problems

    def cast_votes(
        self,
        members: Sequence[str],
        *,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
        weights: Sequence[float],
    ) -> Cast:
        content = vote_request(
            context, global_model, candidates, weights, self.parse_keys
        )
        node_of = {key: self.nodes[key] for key in members}
        replies = send(
            self.grid,
            {node: (VOTE, content) for node in node_of.values()},
            self.timeout,
        )
        votes: list[dict[str, Any]] = []
        problems: list[str] = []
        unreachable: set[str] = set()
        moved: set[str] = set()
        for key, node in node_of.items():
            reply = replies.get(node)
            if not answered(reply):
                unreachable.add(key)
            try:
                read, excess = parse_votes(reply, len(candidates))
            except RemoteVerifierError as exc:
                problems.append(member_problem(key, node, str(exc)))
                continue
            votes.extend(read)
            if said_moved_past(reply):
                moved.add(key)
            if excess is not None:
                problems.append(member_problem(key, node, excess))
        return Cast(votes, problems, frozenset(unreachable), frozenset(moved))


def member_problem(key: str, node: int, why: str | None) -> str:
    """Why member ``key`` (on ``node``) gave no usable answer, for the
    decision's record: ``why`` may quote the node, so it is clipped."""
    return f"verifier {key[:12]}… (node {node}): {clip(why)}"

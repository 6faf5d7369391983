"""PoV verifiers on SuperNodes of their own, over Flower's transport.

A verifier node is an ordinary SuperNode whose node config says
``role="verifier"`` and names its Ed25519 key file. It holds its trusted data
locally and answers three query messages:

- ``query.pov_identity``: its role and public key, with a signature over the
  server's random challenge (so a node cannot claim a key it does not hold);
- ``query.pov_vote``: the vote context (chain id, height, view, previous
  hash, parent model hash, rule digest), the global model and the candidates'
  replies as their trainers sent them, with their digests and weights
  (:mod:`.voterequest`: it recomputes each digest and derives each delta
  itself, and keeps them for the header's replay); it judges them by its own
  configured :class:`~flchain_flwr.pov.Rule` (never a threshold the server
  sends), refuses a request whose model does not hash to the parent named,
  whose rule is not its own, or that goes back on the chain positions it has
  voted on (kept in the node's run state), and returns its signed votes;
- ``query.pov_sign``: as a block's leader, the block header to sign, or
  before the votes the statement that it leads the block's view (see
  :meth:`~flchain_flwr.pov.Committee.leader_ready`; a leader node that refuses
  or does not answer in time hands over to the next view's). It signs a lead
  statement only in its canonical form and at a position that does not go
  back on what it has voted on or led (the position is then its own), and a
  header only at the chain, height and previous hash it holds, and only one
  header per height: so the server, which holds no verifier key, cannot get
  two different blocks at one height signed by one leader node. As a
  committee member (``kind="header"``) it is sent the pending block's header
  and body and signs its header statement after the checks of
  :mod:`.headers` and a replay of the model (:mod:`.memberreplay`); as a
  member giving up a view (``kind="view-change"``) it signs the canonical
  view-change statement (:func:`~.views.sign_view_change`). What it signed
  as a member (:attr:`~flchain_flwr.pov.Verifier.statements`) is kept in the
  node's run state, so a restarted node does not sign against it.

On the server, :func:`discover_verifiers` maps public keys to node IDs and
:class:`RemoteCommittee` is a :class:`~flchain_flwr.pov.Committee` whose members
vote (in parallel, one message each) and sign blocks remotely. Votes pass the
same checks as local ones (:func:`~flchain_flwr.pov.collect_votes`: signature for
this chain and height, committee membership, one vote per candidate), so a
verifier node can lie or fail but cannot forge another's vote.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ..arrays import NDArrays
from ..ledger import Block, Ledger, VoteContext
from ..ledger.canonical import HEADER_TAG
from ..ledger.chain import load_or_create_key
from ..ledger.statements import view_change_statement
from .committee import LEAD_TAG, Candidate, Cast, Committee, lead_statement
from .discovery import declared_pool as declared_pool
from .discovery import discover_verifiers as discover_verifiers
from .memberreplay import replay_material
from .members import (
    STATEMENT_COLUMNS,
    header_entry,
    header_request,
    member_header,
    member_view_change,
    view_change_entry,
)
from .memory import load as load_memory
from .memory import store as store_memory
from .queries import _CONFIG, _answered, _bytes, _config, _parse_votes, _send
from .queries import ACTIONS as ACTIONS
from .queries import IDENTITY as IDENTITY
from .queries import IDENTITY_TAG as IDENTITY_TAG
from .queries import ROLE_KEY as ROLE_KEY
from .queries import SIGN as SIGN
from .queries import VERIFIER_ROLE as VERIFIER_ROLE
from .queries import VOTE as VOTE
from .queries import RemoteVerifierError as RemoteVerifierError
from .runstate import Columns, columns_record, read_columns
from .verifier import Verifier
from .voterequest import judge_request, vote_request

_SEEN = "pov-seen"
"""A verifier node's run state: the last chain position it voted at or led."""
_SEEN_COLUMNS: Columns = {"height": int, "prev_hash": str, "parent_model": str}
_HEADERS = "pov-headers"
"""A verifier node's run state: the last block header it signed, by chain."""
_HEADER_COLUMNS: Columns = {"height": int, "sha256": str}
_STATEMENTS = "pov-statements"
"""A verifier node's run state: the last statement it signed as a member."""


# ------------------------------------------------------------------ node side
def serve(app: ClientApp, verifier_of: Callable[[Context], Verifier | None]) -> None:
    """Register the PoV queries on ``app``; ``verifier_of(context)`` gives the
    node's verifier (None on a node that only trains, see
    :func:`verifier_from_node_config`)."""

    def pov_query(message: Message, context: Context) -> Message:
        return answer_in_run(message, context, verifier_of(context))

    for action in ACTIONS:
        app.query(action)(pov_query)


def answer_in_run(
    message: Message, context: Context, verifier: Verifier | None
) -> Message:
    """:func:`answer`, with what the verifier has voted on, led and signed
    taken from the node's run state and kept there (only when it answered)."""
    if verifier is None:
        return answer(message, None)
    records = context.state.config_records
    verifier.seen = read_columns(records.get(_SEEN), _SEEN_COLUMNS)
    verifier.headers = read_columns(records.get(_HEADERS), _HEADER_COLUMNS)
    verifier.statements = read_columns(records.get(_STATEMENTS), STATEMENT_COLUMNS)
    verifier.memory = load_memory(context.state)
    reply = answer(message, verifier)
    store_memory(verifier.memory, context.state)
    if verifier.seen:
        records[_SEEN] = columns_record(verifier.seen, _SEEN_COLUMNS)
    if verifier.headers:
        records[_HEADERS] = columns_record(verifier.headers, _HEADER_COLUMNS)
    if verifier.statements:
        records[_STATEMENTS] = columns_record(verifier.statements, STATEMENT_COLUMNS)
    return reply


def answer(message: Message, verifier: Verifier | None) -> Message:
    """A verifier node's reply to one PoV query (``verifier=None``: not one).

    Raises ``ValueError`` for a request this node cannot answer; Flower turns
    that into an error reply, which the server records.
    """
    kind = message.metadata.message_type
    if kind == IDENTITY:
        return Message(_identity(message.content, verifier), reply_to=message)
    if verifier is None:
        raise ValueError(f"{kind}: this node is not a PoV verifier")
    if kind == VOTE:
        return Message(_votes(message.content, verifier), reply_to=message)
    if kind == SIGN:
        return Message(_signature(message.content, verifier), reply_to=message)
    raise ValueError(f"unknown PoV query {kind!r}")


def _identity(content: RecordDict, verifier: Verifier | None) -> RecordDict:
    if verifier is None:
        return RecordDict({_CONFIG: ConfigRecord({ROLE_KEY: "trainer"})})
    challenge = _bytes(_config(content), "challenge")
    signature = verifier.key.sign(IDENTITY_TAG + challenge).signature
    return RecordDict(
        {
            _CONFIG: ConfigRecord(
                {
                    ROLE_KEY: VERIFIER_ROLE,
                    "public-key": verifier.public_key,
                    "signature": signature,
                }
            )
        }
    )


def _votes(content: RecordDict, verifier: Verifier) -> RecordDict:
    votes = judge_request(content, verifier)
    return RecordDict({_CONFIG: ConfigRecord({"votes": json.dumps(votes)})})


def _signature(content: RecordDict, verifier: Verifier) -> RecordDict:
    cfg = _config(content)
    if cfg.get("kind") == "header":
        return RecordDict(
            {_CONFIG: ConfigRecord(member_header(cfg, content, verifier))}
        )
    if cfg.get("kind") == "view-change":
        signed = member_view_change(_bytes(cfg, "message"), verifier)
        return RecordDict({_CONFIG: ConfigRecord({"signature": signed})})
    data = _bytes(cfg, "message")
    tag = next((t for t in (HEADER_TAG, LEAD_TAG) if data.startswith(t)), None)
    if tag is None:
        raise ValueError("only block headers and lead statements are signed")
    fields = json.loads(data[len(tag) :])
    if not isinstance(fields, dict) or fields.get("leader") != verifier.public_key:
        raise ValueError("this block names another leader")
    if tag == LEAD_TAG:
        _check_lead(data, fields, verifier)
    else:
        _check_header(data, fields, verifier)
    signature = verifier.key.sign(data).signature
    return RecordDict({_CONFIG: ConfigRecord({"signature": signature})})


def _check_lead(data: bytes, fields: dict[str, Any], verifier: Verifier) -> None:
    """Refuse a lead statement that is not canonical or goes back on the
    chain position this verifier holds; else take its position."""
    context = VoteContext(
        chain_id=_field(fields, "chain_id", str),
        height=_field(fields, "height", int),
        prev_hash=_field(fields, "prev_hash", str),
        parent_model=_field(fields, "parent_model", str),
        view=_field(fields, "view", int),
    )
    if data != lead_statement(context, verifier.public_key):
        raise ValueError("the lead statement is not in its canonical form")
    assert context.prev_hash is not None
    verifier.take_position(
        context.chain_id, context.height, context.prev_hash, context.parent_model
    )


def _check_header(data: bytes, fields: dict[str, Any], verifier: Verifier) -> None:
    """Refuse a header away from the position this verifier holds in its chain
    (where it voted or led), or a second, different header at one height;
    else remember it. A header does not carry its view: one per height."""
    chain_id = _field(fields, "chain_id", str)
    height = _field(fields, "height", int)
    prev_hash = _field(fields, "prev_hash", str)
    held = verifier.seen.get(chain_id)
    if held is None or held[:2] != (height, prev_hash):
        where = "nothing" if held is None else f"height {held[0]}"
        raise ValueError(
            f"the header is at height {height} after {prev_hash[:12]}…; this "
            f"verifier holds {where} in chain {chain_id[:40]!r}"
        )
    digest = hashlib.sha256(data).hexdigest()
    signed = verifier.headers.get(chain_id)
    if signed is not None and signed[0] == height and signed[1] != digest:
        raise ValueError(f"this leader already signed another header at {height}")
    verifier.headers[chain_id] = (height, digest)


def _field(fields: dict[str, Any], key: str, kind: type) -> Any:
    """``fields[key]``, which must be a ``kind`` (an int is never a bool)."""
    value = fields.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be a {kind.__name__}")
    return value


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
        content = RecordDict({_CONFIG: ConfigRecord({"message": message})})
        reply = _send(self.grid, {self.node_id: (SIGN, content)}, self.timeout).get(
            self.node_id
        )
        if reply is None:
            raise RemoteVerifierError(
                f"leader node {self.node_id} did not sign within {self.timeout:g}s"
            )
        if reply.has_error():
            raise RemoteVerifierError(
                f"leader node {self.node_id} refused to sign: {reply.error.reason}"
            )
        try:
            signature = _bytes(_config(reply.content), "signature")
            self.verify_key.verify(message, signature)
        except (ValueError, BadSignatureError) as exc:
            raise RemoteVerifierError(
                f"leader node {self.node_id} sent a bad signature: {exc}"
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
        ``{verifier public key: node ID}``, e.g. from :func:`discover_verifiers`.
        These nodes are kept out of training.
    timeout : float (default: 120.0)
        Seconds to wait for a round of votes, or for the leader's signature. A
        member that has not answered by then has no votes in this block.
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
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
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
        """Each member node's header signature (see :func:`member_header`),
        with what it needs to replay the block (:func:`replay_material`)."""
        fields, arrays = replay_material(ledger, block)
        request = header_request(block, view)
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
        content = RecordDict({_CONFIG: request, **(arrays or {})})
        replies = _send(
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
                problems.append(f"verifier {key[:12]}… (node {node}): {why}")
                continue
            try:
                entries.append(entry(key, _config(reply.content)))
            except (ValueError, KeyError) as exc:
                problems.append(f"verifier {key[:12]}… (node {node}): {exc}")
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
        replies = _send(
            self.grid,
            {node: (VOTE, content) for node in node_of.values()},
            self.timeout,
        )
        votes: list[dict[str, Any]] = []
        problems: list[str] = []
        unreachable: set[str] = set()
        for key, node in node_of.items():
            reply = replies.get(node)
            if not _answered(reply):
                unreachable.add(key)
            try:
                votes.extend(_parse_votes(reply))
            except RemoteVerifierError as exc:
                problems.append(f"verifier {key[:12]}… (node {node}): {exc}")
        return Cast(votes, problems, frozenset(unreachable))


def is_verifier(node_config: Mapping[str, Any]) -> bool:
    """Whether a node's config gives it the verifier role."""
    return bool(node_config.get(ROLE_KEY, "trainer") == VERIFIER_ROLE)


def verifier_from_node_config(
    node_config: Mapping[str, Any], make: Callable[[Any, int], Verifier]
) -> Verifier | None:
    """This node's verifier if its node config says ``role="verifier"``, else None.

    ``make(key, shard)`` builds the verifier from its signing key (read from the
    ``verifier-key`` file, created on first use) and its ``verifier-shard``.
    """
    if not is_verifier(node_config):
        return None
    path = node_config.get("verifier-key")
    if not path:
        raise ValueError('a verifier node needs node config verifier-key="<path>"')
    return make(
        load_or_create_key(Path(str(path))), int(node_config.get("verifier-shard", 0))
    )

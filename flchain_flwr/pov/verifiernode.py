"""A verifier node's side of the PoV queries: what it answers, and refuses.

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
  voted on, and returns its signed votes, saying (``moved-past``) whether it
  has signed a view change in that view or anything at a later view of that
  height (:func:`~.views.moved_past`: it will sign no new header there);
- ``query.pov_sign``: as a block's leader, the block header to sign, or
  before the votes the statement that it leads the block's view (see
  :meth:`~flchain_flwr.pov.Committee.leader_ready`; a leader node that refuses
  or does not answer in time hands over to the next view's). It signs a lead
  statement only in its canonical form, at a position that does not go
  back on what it has voted on or led (the position is then its own) and at
  a height where it has signed no header yet, and a
  header only at the chain, height and previous hash it holds, and only one
  header per height: so the server, which holds no verifier key, cannot get
  two different blocks at one height signed by one leader node. As a
  committee member (``kind="header"``) it is sent the pending block's header
  and body and signs its header statement after the checks of
  :mod:`.headers` and a replay of the model (:mod:`.memberreplay`); as a
  member giving up a view (``kind="view-change"``) it signs the canonical
  view-change statement (:func:`~.views.sign_view_change`), never a second
  header nor a view change where it signed a header at one (height, view).

Where it voted or led, what it signed and the candidates it voted on in each
view at its current height and previous block (its locks) are kept in the
file ``verifier-state`` beside its key (:mod:`.lockstate`), written before the
reply leaves, not in the node's run state: Flower starts that empty for every
``flwr run`` (a resumed PoV run is one) and on a SuperNode restart, after
which the node would have signed against its own earlier signatures. So
these guarantees hold across runs and restarts for as long as the file is
kept; whoever can delete or roll it back can make the node equivocate (the
key's own trust: keep the file with the key). The candidates it holds for
the pending height (:mod:`.memory`, up to 1 GiB) stay in the run state: a node
that lost them cannot replay that block (it signs ``replayed: false``), which
contradicts nothing it signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from ..configvalues import integer_value, text_value
from ..ledger import VoteContext
from ..ledger.canonical import HEADER_TAG
from ..ledger.keys import load_or_create_key
from .lockstate import locks_held, run_state_held, state_file_of
from .members import member_header, member_view_change
from .memory import load as load_memory
from .memory import store as store_memory
from .queries import (
    ACTIONS,
    CONFIG,
    IDENTITY,
    IDENTITY_TAG,
    MOVED_PAST,
    ROLE_KEY,
    SIGN,
    VERIFIER_ROLE,
    VOTE,
    bytes_field,
    config,
)
from .verifier import MAX_VOTED, Verifier
from .views import LEAD_TAG, lead_statement, moved_past
from .voterequest import judge_request


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
    read from its state file (:mod:`.lockstate`; the run state if it has
    none) and kept there before the reply leaves, and the candidates it
    holds from the node's run state (:mod:`.memory`); each kept only when
    it answered."""
    if verifier is None:
        return answer(message, None)
    verifier.memory = load_memory(context.state)
    if verifier.state_file is not None:
        with locks_held(verifier.state_file, verifier):
            reply = answer(message, verifier)
    else:
        with run_state_held(context.state.config_records, verifier):
            reply = answer(message, verifier)
    store_memory(verifier.memory, context.state)
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
        return Message(signature_reply(message.content, verifier), reply_to=message)
    raise ValueError(f"unknown PoV query {kind!r}")


def _identity(content: RecordDict, verifier: Verifier | None) -> RecordDict:
    if verifier is None:
        return RecordDict({CONFIG: ConfigRecord({ROLE_KEY: "trainer"})})
    challenge = bytes_field(config(content), "challenge")
    signature = verifier.key.sign(IDENTITY_TAG + challenge).signature
    return RecordDict(
        {
            CONFIG: ConfigRecord(
                {
                    ROLE_KEY: VERIFIER_ROLE,
                    "public-key": verifier.public_key,
                    "signature": signature,
                }
            )
        }
    )


def _votes(content: RecordDict, verifier: Verifier) -> RecordDict:
    votes, context = judge_request(content, verifier)
    moved = moved_past(verifier, context.chain_id, context.height, context.view)
    return RecordDict(
        {CONFIG: ConfigRecord({"votes": json.dumps(votes), MOVED_PAST: moved})}
    )


def signature_reply(content: RecordDict, verifier: Verifier) -> RecordDict:
    """What ``verifier`` answers to a ``query.pov_sign`` request with
    ``content``: a member's header signature or view change, or a leader's
    signature over a header or lead statement; raises where it refuses (see
    the module docstring)."""
    cfg = config(content)
    if cfg.get("kind") == "header":
        return RecordDict({CONFIG: ConfigRecord(member_header(cfg, content, verifier))})
    if cfg.get("kind") == "view-change":
        signed = member_view_change(bytes_field(cfg, "message"), verifier)
        return RecordDict({CONFIG: ConfigRecord({"signature": signed})})
    data = bytes_field(cfg, "message")
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
    return RecordDict({CONFIG: ConfigRecord({"signature": signature})})


def _check_lead(data: bytes, fields: dict[str, Any], verifier: Verifier) -> None:
    """Refuse a lead statement that is not canonical, that goes back on the
    chain position this verifier holds, or at a height where it already
    signed a header (it signs one per height, so it could not sign the
    block it would lead: refusing now lets the server pass it over, as a
    leader that does not answer); else take its position."""
    context = VoteContext(
        chain_id=_field(fields, "chain_id", str),
        height=_field(fields, "height", int),
        prev_hash=_field(fields, "prev_hash", str),
        parent_model=_field(fields, "parent_model", str),
        view=_field(fields, "view", int),
    )
    if data != lead_statement(context, verifier.public_key):
        raise ValueError("the lead statement is not in its canonical form")
    signed = verifier.headers.get(context.chain_id)
    if signed is not None and signed[0] == context.height:
        raise ValueError(
            f"this leader already signed a header at height {context.height} "
            f"({signed[1][:12]}…) and signs no other there: it leads no view "
            "of that height again"
        )
    verifier.take_position(context)


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


def is_verifier(node_config: Mapping[str, Any]) -> bool:
    """Whether a node's config gives it the verifier role."""
    return bool(node_config.get(ROLE_KEY, "trainer") == VERIFIER_ROLE)


def verifier_from_node_config(
    node_config: Mapping[str, Any], make: Callable[[Any, int], Verifier]
) -> Verifier | None:
    """This node's verifier if its node config says ``role="verifier"``, else None.

    ``make(key, shard)`` builds the verifier from its signing key (read from the
    ``verifier-key`` file, created on first use) and its ``verifier-shard`` (an
    integer >= 0, default 0); its locks are kept in the ``verifier-state`` file
    (default ``<verifier-key>.state``, see :mod:`.lockstate`). All are read by
    the typed readers (:mod:`flchain_flwr.configvalues`): a value of another
    type is refused naming its key, never converted.
    """
    if not is_verifier(node_config):
        return None
    if not node_config.get("verifier-key"):
        raise ValueError('a verifier node needs node config verifier-key="<path>"')
    path = Path(text_value(node_config, "verifier-key", source="node config"))
    shard = 0
    if "verifier-shard" in node_config:
        shard = integer_value(
            node_config, "verifier-shard", minimum=0, source="node config"
        )
    state_file = state_file_of(path, node_config)
    verifier = make(load_or_create_key(path), shard)
    verifier.state_file = state_file
    verifier.max_voted = MAX_VOTED  # written to the state file at every vote
    return verifier

"""The PoV query messages between the server and verifier nodes.

Three query types travel over Flower's transport (:data:`IDENTITY`,
:data:`VOTE`, :data:`SIGN`), each carrying its fields in one config record
(``"pov"``); a verifier node answers them (:mod:`.verifiernode`) and the
server asks them (:mod:`.discovery`, :mod:`.remote`). This module holds what
both sides share: the message names and role keys, reading a config record's
fields, sending one message per node and waiting for the replies, and telling
a reply the verifier app gave (votes, or a refusal) from one the grid gave
(node or message unavailable).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

IDENTITY = "query.pov_identity"
VOTE = "query.pov_vote"
SIGN = "query.pov_sign"
ACTIONS = ("pov_identity", "pov_vote", "pov_sign")
"""The query actions a verifier node's ClientApp registers (see
:func:`~.verifiernode.serve`)."""
ROLE_KEY = "role"
VERIFIER_ROLE = "verifier"
IDENTITY_TAG = b"flchain/pov-identity/v1\x00"
CONFIG = "pov"
"""The config record each query and reply carries its fields in."""


class RemoteVerifierError(RuntimeError):
    """A verifier node's reply could not be used (missing, malformed, forged)."""


def config(content: RecordDict) -> ConfigRecord:
    """The message's :data:`CONFIG` record; ``ValueError`` if it has none."""
    if CONFIG not in content.config_records:
        raise ValueError(f"the message has no {CONFIG!r} config record")
    return content.config_records[CONFIG]


def bytes_field(cfg: ConfigRecord, key: str) -> bytes:
    """``cfg[key]``, which must be bytes (``ValueError`` otherwise)."""
    value = cfg.get(key)
    if not isinstance(value, bytes):
        raise ValueError(f"{key!r} must be bytes")
    return value


def send(
    grid: Grid, requests: Mapping[int, tuple[str, RecordDict]], timeout: float
) -> dict[int, Message]:
    """Send one message per node and wait up to ``timeout`` s; replies by node."""
    messages = {
        node: Message(content, node, kind, ttl=timeout)
        for node, (kind, content) in requests.items()
    }
    replies = grid.send_and_receive(list(messages.values()), timeout=timeout)
    by_id = {m.metadata.message_id: node for node, m in messages.items()}
    return {
        by_id[r.metadata.reply_to_message_id]: r
        for r in replies
        if r.metadata.reply_to_message_id in by_id
    }


def answered(reply: Message | None) -> bool:
    """Whether the node's verifier app itself answered (votes, or a raise such
    as a refusal), not the grid saying the node or message was unavailable."""
    if reply is None:
        return False
    return not reply.has_error() or reply.error.code in _APP_ERRORS


_APP_ERRORS = frozenset(
    {ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.MOD_FAILED_PRECONDITION}
)
"""Error replies that the node's app gave (it ran and said no)."""


MOVED_PAST = "moved-past"
"""A vote reply's flag: the member has moved past the view it voted in
(:func:`~.views.moved_past`)."""


def said_moved_past(reply: Message | None) -> bool:
    """Whether a verifier node's vote ``reply`` says it has moved past the
    view it voted in (absent, or not ``True``: it has not)."""
    if reply is None or reply.has_error():
        return False
    return CONFIG in reply.content.config_records and (
        reply.content.config_records[CONFIG].get(MOVED_PAST) is True
    )


VOTE_CHARS = 1_024
"""The most characters of a reply's ``votes`` per vote asked for (a signed
vote takes about 400): a longer reply is refused unread."""


def parse_votes(
    reply: Message | None, asked: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The votes in a verifier node's reply to a request about ``asked``
    candidates (checked later, like any vote), and why some were left out.

    At most ``asked`` votes are read (the rest are dropped, with one reason)
    from at most :data:`VOTE_CHARS` characters per vote: a member cannot make
    the leader check, or the decision record, more than it was asked for.
    """
    if reply is None:
        raise RemoteVerifierError("no reply in time")
    if reply.has_error():
        raise RemoteVerifierError(f"error reply: {reply.error.reason}")
    try:
        text = config(reply.content)["votes"]
    except (ValueError, KeyError) as exc:
        raise RemoteVerifierError(f"unreadable votes: {exc}") from exc
    if not isinstance(text, str):
        raise RemoteVerifierError("unreadable votes: 'votes' must be a JSON string")
    limit = VOTE_CHARS * max(1, asked)
    if len(text) > limit:
        raise RemoteVerifierError(
            f"unreadable votes: {len(text)} characters, more than the {limit} "
            f"that {asked} votes may take"
        )
    try:
        votes = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        raise RemoteVerifierError(f"unreadable votes: {exc}") from exc
    if not isinstance(votes, list) or not all(isinstance(v, dict) for v in votes):
        raise RemoteVerifierError("votes must be a list of objects")
    if len(votes) <= asked:
        return votes, None
    excess = f"{len(votes) - asked} votes beyond the {asked} asked for were dropped"
    return votes[:asked], excess

"""Witnesses on SuperNodes of their own, over Flower's transport.

A witness node is an ordinary SuperNode whose node config says
``role="witness"`` and names its witness folder (``witness-dir``, made with
``flchain witness init``). Its ClientApp answers two query messages:

- ``query.witness_identity``: its cosigner vkey, with an Ed25519 signature by
  that key over the server's random challenge (domain-separated from
  cosignatures), so no node can take another witness's place;
- ``query.witness_cosign``: a tlog-witness ``add-checkpoint`` body
  (:class:`~flchain_flwr.ledger.witness.CosignRequest`, ``request``) and, for
  a trust-on-first-use witness, the log's vkey beside it (``log_key``); it
  answers as the spec's HTTP response would (``status``, ``body``: the
  cosignature line, or for 409 the size last cosigned; ``reason``), after
  persisting its state as the local witness does.

On the server, :func:`discover_witnesses` maps the policy's witness keys to
node IDs, and :class:`RemoteWitness` is a
:class:`~flchain_flwr.ledger.anchoring.WitnessClient`: what a node answers is
checked against the witness's key before it is used, so a node can refuse or
fail, never slip in a cosignature its key did not make.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from .configvalues import text_value
from .ledger.cosignature import CosignerKey, parse_cosigner_key
from .ledger.notes import NoteError, NoteSignature, parse_note
from .ledger.witness import CosignRequest, Witness, WitnessAnswer, WitnessRefused
from .quoting import clip
from .runtime import clock_of

IDENTITY: Final = "query.witness_identity"
COSIGN: Final = "query.witness_cosign"
ACTIONS: Final = ("witness_identity", "witness_cosign")
ROLE: Final = "witness"
IDENTITY_TAG: Final = b"flchain/witness-identity/v1\x00"
_CONFIG: Final = "witness"


# ------------------------------------------------------------------ node side
def witness_from_node_config(node_config: Mapping[str, Any]) -> Witness | None:
    """This node's witness if its node config says ``role="witness"``."""
    if node_config.get("role", "trainer") != ROLE:
        return None
    if not node_config.get("witness-dir"):
        raise ValueError('a witness node needs node config witness-dir="<path>"')
    return Witness(text_value(node_config, "witness-dir", source="node config"))


def serve_witness(
    app: ClientApp,
    witness_of: Callable[[Context], Witness | None] = lambda c: (
        witness_from_node_config(c.node_config)
    ),
) -> None:
    """Register the witness queries on ``app``."""

    def witness_query(message: Message, context: Context) -> Message:
        return answer(message, witness_of(context))

    for action in ACTIONS:
        app.query(action)(witness_query)


def answer(message: Message, witness: Witness | None) -> Message:
    """A witness node's reply to one query; ``ValueError`` (an error reply)
    on a node that is no witness or for an unknown query."""
    if witness is None:
        raise ValueError(f"{message.metadata.message_type}: this node is no witness")
    cfg = message.content.config_records.get(_CONFIG, ConfigRecord())
    kind = message.metadata.message_type
    reply: dict[str, Any]
    if kind == IDENTITY:
        challenge = cfg.get("challenge")
        if not isinstance(challenge, bytes) or len(challenge) != 32:
            raise ValueError("an identity query needs a 32-byte challenge")
        signature = witness.sign_identity(IDENTITY_TAG + challenge)
        reply = {"vkey": witness.key.encode(), "signature": signature}
    elif kind == COSIGN:
        data, log_key = cfg.get("request"), cfg.get("log_key")
        if not isinstance(data, bytes) or not isinstance(log_key, str | None):
            refused = WitnessRefused(400, "a cosign query needs a request body")
            found = WitnessAnswer.of(refused)
        else:
            found = witness.answer(data, log_key)
        reply = {"status": found.status, "body": found.body, "reason": found.reason}
    else:
        raise ValueError(f"unknown witness query {kind!r}")
    return Message(RecordDict({_CONFIG: ConfigRecord(reply)}), reply_to=message)


# ---------------------------------------------------------------- server side
def _ask(
    grid: Grid, node: int, kind: str, cfg: dict[str, Any], timeout: float
) -> ConfigRecord:
    message = Message(RecordDict({_CONFIG: ConfigRecord(cfg)}), node, kind, ttl=timeout)
    replies = list(grid.send_and_receive([message], timeout=timeout))
    if not replies:
        raise WitnessRefused(504, f"witness node {node} did not answer in {timeout}s")
    reply = replies[0]
    if reply.has_error():
        raise WitnessRefused(502, f"witness node {node}: {clip(reply.error.reason)}")
    return reply.content.config_records.get(_CONFIG, ConfigRecord())


class RemoteWitness:
    """A witness on node ``node``, expected to hold ``key``."""

    def __init__(
        self, grid: Grid, node: int, key: CosignerKey, timeout: float = 60.0
    ) -> None:
        self.grid, self.node, self.key, self.timeout = grid, node, key, timeout

    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        """Ask the node; its cosignature, checked against :attr:`key`.

        Raises
        ------
        WitnessRefused
            The node's refusal, or 502/504 if it failed, did not answer, or
            answered with a line its key did not sign.
        """
        query: dict[str, Any] = {"request": request.encode()}
        if request.log_key is not None:
            query["log_key"] = request.log_key
        cfg = _ask(self.grid, self.node, COSIGN, query, self.timeout)
        status, body = cfg.get("status"), cfg.get("body")
        found = WitnessAnswer(
            status if isinstance(status, int) else 502,
            body if isinstance(body, bytes) else b"",
            str(cfg.get("reason", "")),  # quoted clipped by cosignatures()
        )
        lines = found.cosignatures(request.checkpoint)
        mine = [line for line in lines if line.key_id == self.key.key_id]
        try:
            if not mine:
                raise NoteError(f"no line by {self.key}")
            self.key.verify(parse_note(request.checkpoint).text, mine[0])
        except NoteError as exc:
            raise WitnessRefused(
                502, f"witness node {self.node} answered no valid cosignature: {exc}"
            ) from None
        return mine[0]


def discover_witnesses(
    grid: Grid,
    keys: Iterable[CosignerKey],
    *,
    expected: int | None = None,
    timeout: float = 120.0,
    reply_timeout: float = 30.0,
    poll_interval: float = 3.0,
) -> dict[str, int]:
    """Find the nodes of the given witnesses; ``{vkey: node ID}``.

    Every node not asked yet is asked for its identity at once, each with a
    fresh challenge it must sign with the key it names (a node that answered
    is not asked again; one that did not is); nodes of other keys are
    ignored. Stops once ``expected`` of the keys (default: all) are found.
    Raises ``TimeoutError`` if they are not found within ``timeout`` seconds
    of the grid's clock (virtual on the simulator's grid), ``ValueError`` if
    ``expected`` is not between 1 and the number of keys.
    """
    wanted = {key.encode(): key for key in keys}
    count = len(wanted) if expected is None else expected
    if not 1 <= count <= len(wanted):
        raise ValueError(f"cannot find {count} of {len(wanted)} witness keys")
    clock = clock_of(grid, poll_interval)
    deadline = clock.now() + timeout
    found: dict[str, int] = {}
    asked: set[int] = set()
    while len(found) < count:
        if clock.now() >= deadline:
            missing = ", ".join(sorted(set(wanted) - set(found)))
            raise TimeoutError(
                f"{len(found)} of {count} witness nodes found in {timeout:g}s; "
                f"not found: {missing}"
            )
        new = sorted(set(grid.get_node_ids()) - asked)
        if not new:
            clock.wait(min(clock.now() + poll_interval, deadline))
            continue
        challenges = {node: os.urandom(32) for node in new}
        messages = [
            Message(
                RecordDict({_CONFIG: ConfigRecord({"challenge": challenge})}),
                node,
                IDENTITY,
                ttl=reply_timeout,
            )
            for node, challenge in challenges.items()
        ]
        for reply in grid.send_and_receive(messages, timeout=reply_timeout):
            node = reply.metadata.src_node_id
            if node not in challenges or node in asked:
                continue
            asked.add(node)  # answered: not asked again (one that did not is)
            key = None if reply.has_error() else _proven_key(reply, challenges[node])
            if key is not None and key.encode() in wanted and key.encode() not in found:
                found[key.encode()] = node
    return dict(sorted(found.items())[:count])


def _proven_key(reply: Message, challenge: bytes) -> CosignerKey | None:
    """The cosigner key an identity reply names, if it signed ``challenge``
    with it; ``None`` for a trainer, a failed node or a claim it cannot back."""
    cfg = reply.content.config_records.get(_CONFIG, ConfigRecord())
    try:
        key = parse_cosigner_key(str(cfg.get("vkey")))
        signature = cfg.get("signature")
        VerifyKey(key.public_key).verify(
            IDENTITY_TAG + challenge,
            signature if isinstance(signature, bytes) else b"",
        )
    except (NoteError, CryptoError, ValueError):
        return None
    return key

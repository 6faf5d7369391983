"""A verifier node's side of header signing and view changes.

The node is sent a pending block (header and body bytes) or a view-change
statement in a ``query.pov_sign`` message (see :mod:`.verifiernode`); it
checks them as an in-process member does (:mod:`.headers`, :mod:`.views`) with
what it holds: its own judging rule and, kept in its state file (see
:mod:`.lockstate`), its chain position (where it voted), the candidates it
voted on there in each view and the last statement it signed. A header
request also carries the leader's signature over the header and the chain's
PoV state before the block (:meth:`~flchain_flwr.ledger.PoVState.to_json`:
the node holds no chain), on which it checks the block by ``verify``'s own
rules (:mod:`.headers`). Before it signs a header
it replays the model from the payloads of its own vote requests
(:mod:`.memberreplay`) and says whether it did (``replayed``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

from ..ledger import Block, PoVState, VoteContext
from ..ledger.canonical import (
    HEADER_TAG,
    LATEST_FORMAT,
    encode,
    parse_canonical,
    sha256_hex,
)
from ..ledger.statements import VIEW_CHANGE_TAG, view_change_statement
from .headers import cosign_header
from .memberreplay import member_replay
from .verifier import Verifier
from .views import sign_view_change
from .voterequest import config_int


def member_header(
    cfg: ConfigRecord, content: RecordDict, verifier: Verifier
) -> dict[str, Any]:
    """The reply to a request to sign a pending block's header (``cfg``, in
    ``content`` with the state blobs): ``{"signature": bytes, "replayed":
    bool}``, ``replayed`` when the member replayed the model from its own
    vote requests' payloads (:func:`~.memberreplay.member_replay`);
    ``ValueError`` (an error reply) if a check fails."""
    if verifier.rule is None:
        raise ValueError("this verifier node has no judging rule configured")
    header_bytes, body_bytes = cfg.get("header"), cfg.get("body")
    if not isinstance(header_bytes, bytes) or not isinstance(body_bytes, bytes):
        raise ValueError("header and body must be bytes")
    signature, state = cfg.get("signature"), cfg.get("pov-state")
    if not isinstance(signature, str) or not isinstance(state, str):
        raise ValueError("the leader's signature and pov-state must be text")
    header = parse_canonical(header_bytes, LATEST_FORMAT)
    body = parse_canonical(body_bytes, LATEST_FORMAT)
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise ValueError("header and body must be JSON objects")
    block = Block(
        config_int(header, "height"),
        sha256_hex(HEADER_TAG, header_bytes),
        header_bytes,
        body_bytes,
        signature,
        header,
        body,
    )
    chain = PoVState.from_json(
        parse_canonical(state.encode("utf-8"), LATEST_FORMAT),
        verifier.rule.to_json(),
    )
    view = config_int(cfg, "view")
    memory = verifier.memory
    if memory.replay is None or memory.replay[0] != block.hash:
        memory.replay = (
            block.hash,
            *member_replay(
                cfg, content, memory.pending, block, verifier.rule.trust_weighting
            ),
        )
    _, replayed, problem = memory.replay
    entry = cosign_header(
        verifier,
        block,
        view=view,
        rule_digest=verifier.rule.digest,
        replayed=replayed,
        state=chain,
        model_problem=problem,
    )
    memory.signed(block)
    return {"signature": bytes.fromhex(entry["signature"]), "replayed": replayed}


def member_view_change(data: bytes, verifier: Verifier) -> bytes:
    """The signature over a view-change statement, which must be canonical;
    ``ValueError`` if it is not, or if signing it would contradict what this
    verifier holds or signed."""
    if not data.startswith(VIEW_CHANGE_TAG):
        raise ValueError("not a view-change statement")
    fields = parse_canonical(data[len(VIEW_CHANGE_TAG) :], LATEST_FORMAT)
    if not isinstance(fields, dict):
        raise ValueError("a view-change statement is a JSON object")
    prev_hash = fields.get("prev_hash")
    chain_id = fields.get("chain_id")
    if not isinstance(prev_hash, str) or not isinstance(chain_id, str):
        raise ValueError("chain_id and prev_hash must be strings")
    context = VoteContext(
        chain_id=chain_id,
        height=config_int(fields, "height"),
        prev_hash=prev_hash,
        view=config_int(fields, "view"),
    )
    if data != view_change_statement(
        context.chain_id, context.height, context.view, prev_hash
    ):
        raise ValueError("the view-change statement is not in its canonical form")
    return bytes.fromhex(sign_view_change(verifier, context)["signature"])


# ---------------------------------------------------------------- server side
def header_request(block: Block, view: int, state: PoVState) -> ConfigRecord:
    """What a member node is sent to sign a pending block's header: the block,
    its leader's signature, the view, and the chain's PoV ``state`` before
    it (the node holds no chain; it checks the block by ``verify``'s rules
    on that state, see :mod:`.headers`)."""
    return ConfigRecord(
        {
            "kind": "header",
            "header": block.header_bytes,
            "body": block.body_bytes,
            "signature": block.signature,
            "view": view,
            "pov-state": encode(LATEST_FORMAT, state.to_json()).decode("utf-8"),
        }
    )


def header_entry(key: str, cfg: ConfigRecord) -> dict[str, Any]:
    """A member node's reply to :func:`header_request` as a stored header
    signature (checked by :class:`~.headers.HeaderSigner`)."""
    replayed = cfg.get("replayed")
    if not isinstance(replayed, bool):
        raise ValueError("the reply's replayed must be a boolean")
    return {
        "verifier": key,
        "replayed": replayed,
        "signature": _signature_bytes(cfg).hex(),
    }


def view_change_entry(key: str, cfg: ConfigRecord) -> dict[str, Any]:
    """A member node's signed view change as a certificate entry."""
    return {"verifier": key, "signature": _signature_bytes(cfg).hex()}


def _signature_bytes(cfg: ConfigRecord) -> bytes:
    value = cfg.get("signature")
    if not isinstance(value, bytes):
        raise ValueError("'signature' must be bytes")
    return value

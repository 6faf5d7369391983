"""A vote request: the candidates as their trainers sent them, and reading one.

A ``query.pov_vote`` message (see :mod:`.verifiernode`) carries, for each
candidate, its reply's payload blob exactly as a ledger stores it
(:func:`~flchain_flwr.ledger.payload.payload_chunks`: the sender's node id and
the reply content, losslessly), never a delta the server derived. A verifier
node decodes each payload, recomputes the candidate's digest from it
(:func:`~flchain_flwr.ledger.canonical.sender_update_digest`, the digest votes,
Merkle roots and ledger entries name) and refuses the whole request if one
does not match the digest the server names. It then derives the delta itself,
with the server's own parser (:func:`~flchain_flwr.strategies.updates.
parse_update`): a delta reply (the DGC mod's, sparse) needs only the global
model's layout; a full-weights reply is taken against the model it was
trained from, which is the global model unless the request carries another
base, which must hash to a model this verifier knows from the chain (see
:class:`~.memory.MemberMemory`), else the request is refused.

Wire cost: a sparse reply costs its kept values (a few bytes each) plus the
payload header; a dense reply costs its full arrays, once per vote request
(see docs/deployment.md for measured sizes). Bases are sent once per distinct
model, and not at all for replies trained on the global model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..ledger import VoteContext, model_hash, sender_update_digest
from ..ledger.consensus import natural
from ..ledger.payload import decode_payload, payload_chunks
from ..protocol import UPDATE_KIND_DELTA
from ..strategies.updates import UpdateRejected, parse_update, update_kind
from .committee import Committee
from .decision import Candidate
from .verifier import RefusedRequest, Verifier

CONFIG = "pov"
"""The request's config record (the vote context, digests, weights, payloads)."""
GLOBAL = "global"
"""The request's ArrayRecord holding the global model."""
BASE_PREFIX = "base-"
"""ArrayRecords ``base-<model hash>``: models full-weight replies trained from."""


def payload_blob(node_id: int, content: RecordDict) -> bytes:
    """A reply's payload blob, the bytes a ledger stores (and hashes) for it."""
    return b"".join(payload_chunks(node_id, content))


def vote_request(
    context: VoteContext,
    global_model: NDArrays,
    candidates: Sequence[Candidate],
    weights: Sequence[float],
    keys: tuple[str, str] = Committee.parse_keys,
) -> RecordDict:
    """The content of a ``query.pov_vote`` message (no rule or threshold: a
    verifier node judges by its own, and checks every digest named).

    ``keys``: the ``arrayrecord_key`` and ``weighted_by_key`` the server
    parses replies with. ``ValueError`` if a candidate has no reply content
    (a remote verifier judges only what a trainer sent).
    """
    if context.prev_hash is None:
        raise ValueError("a vote request needs a format-2 context")
    content = RecordDict({GLOBAL: to_arrayrecord(global_model)})
    payloads: list[bytes] = []
    bases: list[str] = []
    for c in candidates:
        if c.content is None:
            raise ValueError(
                f"candidate {c.digest[:16]}… has no reply content: a remote "
                "verifier judges the payload its trainer sent"
            )
        payloads.append(payload_blob(c.node_id, c.content))
        base = ""
        if c.base is not None and update_kind(c.content) != UPDATE_KIND_DELTA:
            base = model_hash(c.base)
            if base == context.parent_model:
                base = ""
            elif BASE_PREFIX + base not in content:
                content[BASE_PREFIX + base] = to_arrayrecord(c.base)
        bases.append(base)
    content[CONFIG] = ConfigRecord(
        {
            "chain-id": context.chain_id,
            "height": context.height,
            "view": context.view,
            "prev-hash": context.prev_hash,
            "parent-model": context.parent_model,
            "rule": context.rule,
            "digests": [c.digest for c in candidates],
            "weights": [float(w) for w in weights],
            "payloads": payloads,
            "bases": bases,
            "arrayrecord-key": keys[0],
            "weighted-by-key": keys[1],
        }
    )
    return content


@dataclass(frozen=True)
class Judged:
    """A vote request as a verifier node read and checked it."""

    context: VoteContext
    global_model: NDArrays
    digests: list[str]
    weights: list[float]
    deltas: list[NDArrays]
    """Each candidate's update, derived here from its payload."""
    payloads: list[bytes]
    bases: list[str]
    """The model each full-weights reply was taken against ("" = the global)."""
    base_models: dict[str, NDArrays]
    keys: tuple[str, str]


def read_vote_request(
    content: RecordDict, known_model: Callable[[str, str], bool]
) -> Judged:
    """Read a vote request and check every payload against its digest.

    ``known_model(chain_id, hash)``: whether this verifier knows ``hash`` as a
    model of that chain (a base other than the global model must be one).
    Raises :class:`~.verifier.RefusedRequest` (a digest that is not its
    payload's, a base not bound to the chain, an unparsable reply) or
    ``ValueError`` (a malformed request).
    """
    cfg = content.config_records.get(CONFIG)
    if cfg is None:
        raise ValueError(f"the message has no {CONFIG!r} config record")
    digests = [str(d) for d in config_list(cfg, "digests")]
    weights = [float(w) for w in config_list(cfg, "weights")]
    payloads = config_list(cfg, "payloads")
    bases = [str(b) for b in config_list(cfg, "bases")]
    if not len(digests) == len(weights) == len(payloads) == len(bases):
        raise ValueError("digests, weights, payloads and bases differ in length")
    context = VoteContext(
        chain_id=str(cfg["chain-id"]),
        height=config_int(cfg, "height"),
        prev_hash=str(cfg["prev-hash"]),
        parent_model=str(cfg["parent-model"]),
        rule=str(cfg["rule"]),
        view=config_int(cfg, "view"),
    )
    keys = (str(cfg["arrayrecord-key"]), str(cfg["weighted-by-key"]))
    if GLOBAL not in content.array_records:
        raise ValueError("the request carries no global model")
    global_model = to_ndarrays(content.array_records[GLOBAL])
    base_models: dict[str, NDArrays] = {}
    deltas: list[NDArrays] = []
    for index, (digest, blob, base) in enumerate(
        zip(digests, payloads, bases, strict=True)
    ):
        where = f"candidate {index} ({digest[:16]}…)"
        if not isinstance(blob, bytes):
            raise ValueError(f"{where}: its payload must be bytes")
        try:
            node_id, reply = decode_payload(blob)
        except (ValueError, KeyError, TypeError) as exc:
            raise RefusedRequest(f"{where}: its payload is unreadable: {exc}") from None
        if sender_update_digest(node_id, reply) != digest:
            raise RefusedRequest(
                f"{where}: the payload sent does not hash to the digest named"
            )
        reference = global_model
        if base:
            reference = _base(content, base, context, known_model, base_models)
        try:
            if base and update_kind(reply) == UPDATE_KIND_DELTA:
                raise UpdateRejected("a delta reply is sent with a base model")
            parsed = parse_update(
                reply, reference, arrayrecord_key=keys[0], weighted_by_key=keys[1]
            )
        except UpdateRejected as exc:
            raise RefusedRequest(f"{where}: not a valid update: {exc.reason}") from None
        deltas.append(parsed.delta)
    return Judged(
        context,
        global_model,
        digests,
        weights,
        deltas,
        [bytes(b) for b in payloads],
        bases,
        base_models,
        keys,
    )


def _base(
    content: RecordDict,
    base: str,
    context: VoteContext,
    known_model: Callable[[str, str], bool],
    loaded: dict[str, NDArrays],
) -> NDArrays:
    """The base model ``base`` the request carries, checked to hash to that
    name and to be a model of the chain this verifier knows."""
    if base in loaded:
        return loaded[base]
    record = content.array_records.get(BASE_PREFIX + base)
    if record is None:
        raise ValueError(f"the request names base {base[:16]}… but carries none")
    model = to_ndarrays(record)
    if model_hash(model) != base:
        raise RefusedRequest(f"the base model sent does not hash to {base[:16]}…")
    if not known_model(context.chain_id, base):
        raise RefusedRequest(
            f"base model {base[:16]}… is not a model of this chain this "
            "verifier knows (the parent, or an earlier block's)"
        )
    loaded[base] = model
    return model


def config_int(cfg: Mapping[str, Any], key: str) -> int:
    """``cfg[key]`` (a request's ConfigRecord, or a statement's or header's
    fields), a height or view: an integer >= 0, never a bool
    (:func:`~flchain_flwr.ledger.consensus.natural`)."""
    value = natural(cfg.get(key))
    if value is None:
        raise ValueError(f"{key!r} must be an integer >= 0")
    return value


def config_list(cfg: ConfigRecord, key: str) -> list[Any]:
    """``cfg[key]``, which must be a list."""
    value = cfg.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list")
    return value


def judge_request(
    content: RecordDict, verifier: Verifier
) -> tuple[list[dict[str, Any]], VoteContext]:
    """A verifier node's signed votes on a vote request, and the context they
    sign: read and checked by :func:`read_vote_request`, judged by the node's
    own rule (:meth:`~.verifier.Verifier.vote`); the candidates are then kept
    for the header's replay (:meth:`~.memory.MemberMemory.keep`)."""
    rule = verifier.rule
    if rule is None:
        raise ValueError("this verifier node has no judging rule configured")
    judged = read_vote_request(content, verifier.memory.knows)
    context = judged.context
    position = (
        context.chain_id,
        context.height,
        str(context.prev_hash),
        context.parent_model,
    )
    problem = verifier.memory.room_problem(
        position, judged.global_model, list(judged.payloads), judged.base_models
    )
    if problem is not None:
        raise RefusedRequest(problem)
    models = [
        (
            digest,
            apply_step(judged.global_model, delta, rule.scale(weight))
            if rule.threshold.scores_models
            else {},
        )
        for digest, delta, weight in zip(
            judged.digests, judged.deltas, judged.weights, strict=True
        )
    ]
    votes = verifier.vote(
        context=judged.context,
        global_model=judged.global_model,
        candidates=models,
        weights=judged.weights,
        deltas=judged.deltas,
    )
    verifier.memory.keep(
        position,
        judged.keys,
        judged.global_model,
        list(zip(judged.digests, judged.payloads, judged.bases, strict=True)),
        judged.base_models,
    )
    return votes, context

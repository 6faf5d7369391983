"""A verifier node replays the pending block before it signs its header.

The server's header request (:func:`replay_material`) carries, beside the
pending block, what a replay needs that the node does not already hold:

- the run's settings, which must hash to the block's ``config_digest`` (the
  digest the chain records);
- the blocks before it, back to the oldest version its included updates were
  trained on, each linked by its hash to the next and the last being the
  block the member voted after (so they are the chain's, whatever the server
  says);
- the server state blobs (momentum velocity, claim history) the previous and
  the pending block name, each checked against its hash.

The payloads and the models their deltas were taken against come from the
member's own vote requests (:class:`~.memory.Pending`): a block including an
update the member did not see judged, or judged against another base, or
parsed with other keys than the recorded settings, is not signed as replayed.
The replay itself is :func:`~flchain_flwr.ledger.replay.replay_pending`, the
code in-process members and ``verify --replay`` run. A member that cannot
replay (missing material, fairness weighting, another strategy's block) signs
``replayed: false``; one whose replay gives another model, or whose previous
block's model is not the parent it voted on, refuses to sign.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from ..arrays import NDArrays, to_arrayrecord, to_ndarrays
from ..ledger import Block, Ledger, model_hash
from ..ledger.blocks import CONFIG_FIELD
from ..ledger.canonical import BODY_TAG, HEADER_TAG, encode, parse_canonical, sha256_hex
from ..ledger.consensus import TRUST_WEIGHTING
from ..ledger.payload import PAYLOAD_FIELD, decode_payload
from ..ledger.replay import replay_pending
from ..ledger.replaysettings import REPLAYABLE_STRATEGY
from ..ledger.replaytypes import MissingData
from ..ledger.serverstate import SERVER_STATE_FIELD, ServerState
from ..protocol import UPDATE_KIND_DELTA
from ..strategies.updates import UpdateRejected, update_kind
from .memory import Pending

STATE_PREFIX = "state-"
"""ArrayRecords ``state-<blob hash>``: server state blobs a header request carries."""


@dataclass
class _Sent:
    """A :class:`~flchain_flwr.ledger.replay.ReplaySource` over what a member
    holds: the pending models and payloads, and the checked state blobs."""

    models: dict[str, NDArrays]
    payloads: dict[str, bytes]

    @property
    def blobs(self) -> _Sent:
        """Itself: models and payloads by hash."""
        return self

    def load_model(self, digest: str) -> NDArrays:
        """A model or state blob it holds; :class:`MissingData` if none."""
        if digest not in self.models:
            raise MissingData(f"model {digest[:16]}… was not sent to this member")
        return self.models[digest]

    def load_update(self, digest: str) -> tuple[int, RecordDict]:
        """A payload it was sent in a vote request."""
        if digest not in self.payloads:
            raise MissingData(f"payload {digest[:16]}… was not sent to this member")
        return decode_payload(self.payloads[digest])

    def server_state(self, block: Block) -> ServerState | None:
        """The ledger's own reading of ``block``'s server state, from these blobs."""
        return Ledger.server_state(cast(Ledger, self), block)


# ---------------------------------------------------------------- server side
def _state_hashes(body: dict[str, Any]) -> list[str]:
    state = body.get(SERVER_STATE_FIELD)
    if not isinstance(state, dict):
        return []
    momentum = state.get("momentum")
    found = [state.get("claims")]
    if isinstance(momentum, dict):
        found.append(momentum.get("velocity"))
    return [h for h in found if isinstance(h, str)]


def replay_material(
    ledger: Ledger, block: Block
) -> tuple[dict[str, Any], dict[str, ArrayRecord]]:
    """What a member needs to replay the pending ``block`` besides its own
    payloads: config fields, and the state blobs as ArrayRecords."""
    head = ledger.head()
    if head is None or block.height == 0:
        return {}, {}
    config = block.body.get(CONFIG_FIELD)
    if not isinstance(config, dict):
        config = ledger.recorded_config(head)
    trained = [
        u["trained_on"]
        for u in block.body.get("included", [])
        if isinstance(u, dict) and isinstance(u.get("trained_on"), int)
    ]
    oldest = min(trained, default=int(head.header["model_version"]))
    earlier = [head]
    while earlier[0].height > 0 and earlier[0].header["model_version"] > oldest:
        earlier.insert(0, ledger.block(earlier[0].height - 1))
    fields: dict[str, Any] = {
        "earlier-headers": [b.header_bytes for b in earlier],
        "earlier-bodies": [b.body_bytes for b in earlier],
    }
    if config is not None:
        fields["config"] = encode(block.format_version, dict(config))
    arrays = {
        STATE_PREFIX + h: to_arrayrecord(ledger.blobs.load_model(h))
        for b in (head, block)
        for h in _state_hashes(b.body)
    }
    return fields, arrays


# ------------------------------------------------------------------ node side
def member_replay(
    cfg: ConfigRecord,
    content: RecordDict,
    pending: Pending | None,
    block: Block,
    trust: bool = False,
) -> tuple[bool, str | None]:
    """``(replayed, problem)`` for the pending ``block`` (see the module):
    ``(True, None)`` if it replays exactly, ``(False, None)`` if this member
    cannot replay it, ``(False, why)`` if it must not sign it. ``trust``:
    whether the member's own rule weighs by trust (the block's recorded
    settings must say the same)."""
    header = block.header
    position = (str(header.get("chain_id")), header.get("height"))
    if pending is None or (pending.chain_id, pending.height) != position:
        return False, None
    config, earlier = _config(cfg, block), _earlier(cfg, block)
    if config is None or earlier is None:
        return False, None
    if earlier[-1].header.get("model_hash") != pending.parent_model:
        return False, "the previous block's model is not the parent it voted on"
    if (config.get("trust_weighting") == TRUST_WEIGHTING) != trust:
        return False, "the recorded settings weigh updates otherwise than its rule"
    included = block.body.get("included", [])
    if (
        config.get("strategy") != REPLAYABLE_STRATEGY
        or not isinstance(included, list)
        or not all(
            isinstance(u, dict) and u.get(PAYLOAD_FIELD) in pending.payloads
            for u in included
        )
    ):
        return False, None
    keys = (config.get("arrayrecord_key"), config.get("weighted_by_key"))
    if keys != pending.keys:
        return False, "the recorded settings parse replies with other keys than judged"
    versions = {
        b.header.get("model_version"): b.header.get("model_hash") for b in earlier
    }
    problem = _base_problem(included, pending, versions)
    if problem is not None:
        return False, problem
    models = dict(pending.models)
    for name, record in content.array_records.items():
        if name.startswith(STATE_PREFIX):
            arrays = to_ndarrays(record)
            if model_hash(arrays) == name[len(STATE_PREFIX) :]:
                models[name[len(STATE_PREFIX) :]] = arrays
    return replay_pending(_Sent(models, pending.payloads), earlier, block, config)


def _base_problem(
    included: Iterable[dict[str, Any]], pending: Pending, versions: dict[Any, Any]
) -> str | None:
    """Why an included full-weights update was judged against another model
    than the version the block says it was trained on (``None``: none was)."""
    for index, entry in enumerate(included):
        judged = pending.bases.get(str(entry.get("digest")))
        _, reply = decode_payload(pending.payloads[str(entry[PAYLOAD_FIELD])])
        try:
            if update_kind(reply) == UPDATE_KIND_DELTA:
                continue
        except UpdateRejected:
            continue  # the replay rejects it
        applied = versions.get(entry.get("trained_on"))
        if judged is None or (judged or pending.parent_model) != applied:
            return f"included update {index} was judged against another base model"
    return None


def _config(cfg: ConfigRecord, block: Block) -> dict[str, Any] | None:
    """The settings sent, if they hash to the block's ``config_digest``."""
    data = cfg.get("config")
    if not isinstance(data, bytes) or sha256_hex(data) != block.header.get(
        "config_digest"
    ):
        return None
    try:
        config = parse_canonical(data, block.format_version)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _earlier(cfg: ConfigRecord, block: Block) -> list[Block] | None:
    """The blocks sent before ``block``, if each is linked by its hash to the
    next (the last to ``block``'s ``prev_hash``) and its body to its header."""
    headers, bodies = cfg.get("earlier-headers"), cfg.get("earlier-bodies")
    if not isinstance(headers, list) or not isinstance(bodies, list) or not headers:
        return None
    if len(headers) != len(bodies):
        return None
    blocks: list[Block] = []
    for header_bytes, body_bytes in zip(headers, bodies, strict=True):
        if not isinstance(header_bytes, bytes) or not isinstance(body_bytes, bytes):
            return None
        try:
            header = parse_canonical(header_bytes, block.format_version)
            body = parse_canonical(body_bytes, block.format_version)
        except ValueError:
            return None
        if (
            not isinstance(header, dict)
            or not isinstance(body, dict)
            or header.get("body_hash") != sha256_hex(BODY_TAG, body_bytes)
        ):
            return None
        digest = sha256_hex(HEADER_TAG, header_bytes)
        if blocks and header.get("prev_hash") != blocks[-1].hash:
            return None
        height = header.get("height")
        if not isinstance(height, int):
            return None
        blocks.append(Block(height, digest, header_bytes, body_bytes, "", header, body))
    if blocks[-1].hash != block.header.get("prev_hash"):
        return None
    return blocks

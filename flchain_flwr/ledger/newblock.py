"""A new aggregation block: its body, then its header once the head is known.

:meth:`~.chain.Ledger.append` builds a block in two steps. Outside the
block's transaction, :func:`aggregation_body` stores the blobs the body
names (each included reply's payload and the server state; the model is
stored before it) and returns the body. Inside the transaction, once the
head it extends is read, :meth:`BlockDraft.on` writes the header that
commits to that head, the body's hash, the Merkle root of the included
update digests and the model's hash, and has the leader sign it (a remote
signer is asked then, holding the write lock). Both are encoded in the
ledger's format (:func:`~.canonical.encode_round_trip`: only values that
read back as they are written); a format-1 header also carries a
``wall_time``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import RecordDict
from nacl.encoding import HexEncoder

from .blocks import CONFIG_FIELD, Block, BlockSigner, ids_as_text
from .canonical import BODY_TAG, HEADER_TAG, ZERO_HASH, encode_round_trip, sha256_hex
from .merkle import merkle_root
from .payload import PAYLOAD_FIELD
from .serverstate import SERVER_STATE_FIELD, ServerState, put_server_state

if TYPE_CHECKING:
    from .blobs import BlobStore


# pylint: disable=too-many-arguments
def aggregation_body(
    blobs: BlobStore,
    version: int,
    *,
    included: Sequence[Mapping[str, Any]],
    rejected: Sequence[Mapping[str, Any]],
    votes: Sequence[Mapping[str, Any]],
    contributions: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    server_state: ServerState | None,
    payloads: Sequence[RecordDict] | None,
) -> dict[str, Any]:
    """A block body in format ``version``, its payloads and server state
    stored in ``blobs`` first (see :meth:`~.chain.Ledger.append`)."""
    entries = ids_as_text if version >= 2 else (lambda e: [dict(x) for x in e])
    included_entries = entries(included)
    for entry, content in zip(included_entries, payloads or (), strict=False):
        node_id = int(entry["node_id"])
        entry[PAYLOAD_FIELD] = blobs.put_update(node_id, content)
    body = {
        **(extra or {}),
        "included": included_entries,
        "rejected": entries(rejected),
        "votes": [dict(v) for v in votes],
        "contributions": entries(contributions),
    }
    if config is not None:
        body[CONFIG_FIELD] = dict(config)
    if server_state is not None:
        body[SERVER_STATE_FIELD] = put_server_state(blobs, server_state)
    return body


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class BlockDraft:
    """Everything of a new block but the head it extends.

    ``fields`` are the header's own values, in header order: ``sim_time``,
    ``model_version``, ``base_version``, ``config_digest`` and
    ``model_hash``. ``included`` gives the update digests of the Merkle root.
    """

    version: int
    chain_id: str
    fields: Mapping[str, Any]
    included: Sequence[Mapping[str, Any]]
    body: dict[str, Any]
    body_bytes: bytes
    key: BlockSigner
    wall_time: float | None

    def on(self, head: Block | None) -> Block:
        """The block on ``head`` (``None``: the genesis block), signed by
        :attr:`key`."""
        version, key, body_bytes = self.version, self.key, self.body_bytes
        height = 0 if head is None else head.height + 1
        header = {
            "format": f"flchain-block/{version}",
            "chain_id": self.chain_id,
            "height": height,
            "prev_hash": ZERO_HASH if head is None else head.hash,
            **self.fields,
            "updates_root": merkle_root([str(u["digest"]) for u in self.included]),
            "body_hash": sha256_hex(BODY_TAG, body_bytes),
            "leader": key.verify_key.encode(HexEncoder).decode(),
        }
        if version == 1:
            header["wall_time"] = (
                time.time() if self.wall_time is None else self.wall_time
            )
        header_bytes = encode_round_trip(version, header)
        block_hash = sha256_hex(HEADER_TAG, header_bytes)
        signature = key.sign(HEADER_TAG + header_bytes).signature.hex()
        return Block(
            height, block_hash, header_bytes, body_bytes, signature, header, self.body
        )

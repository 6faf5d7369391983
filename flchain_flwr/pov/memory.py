"""What a verifier node remembers between PoV queries: chain models, pending payloads.

- **Models of the chain** (bounded, :data:`MAX_MODELS` per chain): the parent
  model of each vote request it voted on (the global model sent hashed to it)
  and the model of each header it signed. A full-weights reply trained on an
  older version is judged against a base model only if the base hashes to one
  of these (see :mod:`.voterequest`).
- **The pending height's candidates**: the payload blobs (exactly as the
  ledger stores them), the models their deltas were taken against, the global
  model and the parse keys of the vote requests at one chain position
  (chain, height, previous hash). A request at another position replaces them,
  and signing that height's header drops them, so at most one height's
  candidates are held. A member replays the pending block from them before it
  signs its header (see :mod:`.memberreplay`).

A verifier node keeps this in its run state (:func:`store` / :func:`load`),
as it keeps its chain position.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from ..arrays import NDArrays, to_arrayrecord, to_ndarrays
from ..ledger import Block

MAX_MODELS = 64
"""Model hashes remembered per chain (the oldest are forgotten first)."""
MAX_PENDING_BYTES = 1 << 30
"""Default bound on the pending height's payloads and models (1 GiB): a vote
request that would take a node's pending candidates past it is refused, so a
server cannot fill a verifier's memory with candidates at one height."""
_MODELS = "pov-models"
_PENDING = "pov-pending"
_REPLAY = "pov-replay"
_ARRAYS = "pov-pending-"
"""Run-state ArrayRecords ``pov-pending-<model hash>``: the pending models."""


@dataclass
class Pending:
    """The candidates voted on at one chain position, until its header is signed."""

    chain_id: str
    height: int
    prev_hash: str
    parent_model: str
    keys: tuple[str, str]
    payloads: dict[str, bytes] = field(default_factory=dict)
    """Payload blobs by SHA-256 (what a ledger entry's ``payload`` names)."""
    bases: dict[str, str] = field(default_factory=dict)
    """By candidate digest, the model its delta was taken against ("" = parent)."""
    models: dict[str, NDArrays] = field(default_factory=dict)
    """The parent model and the bases, by model hash."""

    @property
    def position(self) -> tuple[str, int, str, str]:
        """(chain, height, previous hash, parent model) it was voted on at."""
        return (self.chain_id, self.height, self.prev_hash, self.parent_model)

    @property
    def size(self) -> int:
        """Bytes held: payloads and models."""
        arrays = sum(a.nbytes for m in self.models.values() for a in m.values())
        return arrays + sum(len(p) for p in self.payloads.values())


class MemberMemory:
    """A verifier's known chain models and pending candidates (see module)."""

    def __init__(self, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.models: dict[str, list[str]] = {}
        self.pending: Pending | None = None
        self.replay: tuple[str, bool, str | None] | None = None
        """The last pending block replayed: its hash, whether it replayed,
        and why it must not be signed (a re-sent request gets the same answer
        once its candidates are dropped)."""

    def knows(self, chain_id: str, digest: str) -> bool:
        """Whether ``digest`` is a model of ``chain_id`` this verifier saw."""
        return digest in self.models.get(chain_id, [])

    def know(self, chain_id: str, digest: str) -> None:
        """Remember ``digest`` as a model of ``chain_id`` (bounded)."""
        known = self.models.setdefault(chain_id, [])
        if digest in known:
            known.remove(digest)
        known.append(digest)
        del known[:-MAX_MODELS]

    def room_problem(
        self,
        position: tuple[str, int, str, str],
        global_model: NDArrays,
        blobs: list[bytes],
        base_models: dict[str, NDArrays],
    ) -> str | None:
        """Why keeping ``blobs`` (with ``global_model`` and ``base_models``) at
        ``position`` would take the pending candidates past
        :attr:`max_pending_bytes`, or ``None``."""
        pending = self.pending
        if pending is None or pending.position != position:
            pending = None
        held = pending.size if pending is not None else 0
        held_models = pending.models if pending is not None else {}
        models = {**base_models, position[3]: global_model}
        added = sum(len(b) for b in blobs) + sum(
            a.nbytes
            for digest, model in models.items()
            if digest not in held_models
            for a in model.values()
        )
        if held + added > self.max_pending_bytes:
            return (
                f"the candidates pending at height {position[1]} would hold "
                f"{held + added} bytes, above this node's {self.max_pending_bytes}"
            )
        return None

    # pylint: disable=too-many-arguments
    def keep(
        self,
        position: tuple[str, int, str, str],
        keys: tuple[str, str],
        global_model: NDArrays,
        candidates: list[tuple[str, bytes, str]],
        base_models: dict[str, NDArrays],
    ) -> None:
        """Keep the candidates ``(digest, payload blob, base hash)`` voted on at
        ``position`` (chain, height, previous hash, parent model), with the
        global model and bases; candidates of another position are dropped."""
        chain_id, height, prev_hash, parent = position
        pending = self.pending
        if pending is None or pending.position != position:
            pending = Pending(chain_id, height, prev_hash, parent, keys)
            self.pending = pending
        if pending.keys != keys:  # asked to judge with other keys: keep none
            pending.payloads.clear()
            pending.bases.clear()
            pending.keys = keys
        pending.models.setdefault(parent, global_model)
        for digest, blob, base in candidates:
            pending.payloads[hashlib.sha256(blob).hexdigest()] = blob
            pending.bases[digest] = base
            if base:
                pending.models.setdefault(base, base_models[base])
        self.know(chain_id, parent)

    def signed(self, block: Block) -> None:
        """``block``'s header was signed: remember its model, drop the
        candidates pending at its height."""
        chain_id = str(block.header.get("chain_id"))
        self.know(chain_id, str(block.header.get("model_hash")))
        if self.pending is not None and (
            self.pending.chain_id,
            self.pending.height,
        ) == (chain_id, block.height):
            self.pending = None


def store(memory: MemberMemory, state: RecordDict) -> None:
    """Write ``memory`` into a node's run state (replacing what was there)."""
    for name in [n for n in state.array_records if n.startswith(_ARRAYS)]:
        del state[name]
    chains = sorted(memory.models)
    state[_MODELS] = ConfigRecord(
        {
            "chain_id": [c for c in chains for _ in memory.models[c]],
            "model": [m for c in chains for m in memory.models[c]],
        }
    )
    if memory.replay is not None:
        digest, replayed, problem = memory.replay
        state[_REPLAY] = ConfigRecord(
            {"block": digest, "replayed": replayed, "problem": problem or ""}
        )
    pending = memory.pending
    if pending is None:
        if _PENDING in state:
            del state[_PENDING]
        return
    digests = sorted(pending.bases)
    state[_PENDING] = ConfigRecord(
        {
            "position": [pending.chain_id, pending.prev_hash, pending.parent_model],
            "height": pending.height,
            "keys": list(pending.keys),
            "payloads": list(pending.payloads.values()),
            "digests": digests,
            "bases": [pending.bases[d] for d in digests],
        }
    )
    for digest, model in pending.models.items():
        state[_ARRAYS + digest] = to_arrayrecord(model)


def load(state: RecordDict) -> MemberMemory:
    """Inverse of :func:`store` (an empty memory without a record)."""
    memory = MemberMemory()
    models = state.config_records.get(_MODELS)
    if models is not None:
        chains, hashes = models.get("chain_id"), models.get("model")
        if not isinstance(chains, list) or not isinstance(hashes, list):
            raise ValueError("the stored chain models are malformed")
        for chain_id, digest in zip(chains, hashes, strict=True):
            memory.know(str(chain_id), str(digest))
    replay = state.config_records.get(_REPLAY)
    if replay is not None:
        problem = str(replay.get("problem", ""))
        memory.replay = (
            str(replay.get("block")),
            replay.get("replayed") is True,
            problem or None,
        )
    record = state.config_records.get(_PENDING)
    if record is not None:
        memory.pending = _pending(record, state)
    return memory


def _pending(record: ConfigRecord, state: RecordDict) -> Pending:
    position, keys = record.get("position"), record.get("keys")
    payloads, digests, bases = (record.get(k) for k in ("payloads", "digests", "bases"))
    height = record.get("height")
    if (
        not isinstance(position, list)
        or not isinstance(keys, list)
        or not isinstance(payloads, list)
        or not isinstance(digests, list)
        or not isinstance(bases, list)
        or not isinstance(height, int)
    ):
        raise ValueError("the stored pending candidates are malformed")
    chain_id, prev_hash, parent = (str(p) for p in position)
    pending = Pending(chain_id, height, prev_hash, parent, (str(keys[0]), str(keys[1])))
    for blob in payloads:
        assert isinstance(blob, bytes)
        pending.payloads[hashlib.sha256(blob).hexdigest()] = blob
    pending.bases = {str(d): str(b) for d, b in zip(digests, bases, strict=True)}
    for name, arrays in state.array_records.items():
        if name.startswith(_ARRAYS) and isinstance(arrays, ArrayRecord):
            pending.models[name[len(_ARRAYS) :]] = to_ndarrays(arrays)
    return pending

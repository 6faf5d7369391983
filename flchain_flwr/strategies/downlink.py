"""The sending half of the lossless sparse downlink: what changed since a
node's version, exactly.

When the accepted updates are sparse (the DGC mod) and server momentum is off,
each version changes few entries of the model. A node that holds version ``b``
can then be sent, instead of the full model, the entries that changed from
``b`` to the current version ``v``, with their **final values** (not the sum of
the steps, which float addition would not reproduce bit for bit), in the sparse
wire format, plus the hash of the model they make. The receiving half is
:func:`~flchain_flwr.mods.downlink.downlink_mod`.

Memory stays bounded: per version, the flat indices that changed (a few K * k
per version, as uint32, not a model; none kept for a tensor that changed in so
many entries that its sparse encoding would not be smaller), for the last
``window`` versions only; the values come from the current model. A node
whose version is older, or whose delta would not be smaller than the full
model, gets the full model. Tensors of other dtypes than float32/float16
(which the sparse format cannot carry) go whole in every delta, changed or
not. What a node holds is what its last train reply said, checked against the
hashes of the versions still in the window, and forgotten when that version
leaves the window or the node fails.

With ``from_initial``, a node the server has not heard from is taken to hold
the run's initial version (the app's ``downlink_mod(initial_model=...)``
builds it on the node), so its first model goes as a delta too, marked so.
A node that fails such a message gets full models from then on; a refusal
naming the initial model (the app cannot build it, or builds another) turns
the offer off for every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.logger import log

from ..arrays import NDArrays
from ..compression.sparse import MAX_NUMEL, encode, payload_size
from ..ledger.canonical import model_hash
from ..protocol import DOWNLINK_INITIAL_KEY, DOWNLINK_RECORD

_EXACT_VALUES = ("float32", "float16")
"""Tensor dtypes whose values the sparse format carries exactly."""
Changes = dict[str, np.ndarray | None]
"""Per tensor, the flat indices that changed (``None``: send it whole)."""


@dataclass(frozen=True)
class _Delta:
    arrays: ArrayRecord
    num_bytes: int
    entries: int  # entries sent (whole tensors count every entry)


@dataclass
class DistanceStats:
    """Deltas at one distance ``s`` (a node's base is ``s`` versions old)."""

    offered: int = 0
    """Train messages to nodes that held a base ``s`` versions old."""
    sent: int = 0
    """Of those, how many went as a delta (the rest were not smaller)."""
    entries: int = 0
    """Entries of all offered deltas (the union of ``s`` versions' changes)."""
    delta_bytes: int = 0
    """Bytes of all offered deltas."""


def changed_entries(old: np.ndarray, new: np.ndarray) -> np.ndarray | None:
    """Flat indices where ``new`` differs from ``old`` bit for bit, or ``None``
    when the tensor must travel whole (not float32/float16, or reshaped)."""
    if old.shape != new.shape or old.dtype != new.dtype:
        return None
    if new.dtype.name not in _EXACT_VALUES:
        return np.zeros(0, np.int64) if np.array_equal(old, new) else None
    bits = np.dtype(f"u{new.dtype.itemsize}")
    return np.flatnonzero(
        np.ascontiguousarray(old).reshape(-1).view(bits)
        != np.ascontiguousarray(new).reshape(-1).view(bits)
    )


def sparse_pays(value: np.ndarray, entries: int) -> bool:
    """Whether ``entries`` changed entries of ``value`` travel smaller sparse
    (exactly: float32/float16 values only) than the whole tensor."""
    return (
        value.dtype.name in _EXACT_VALUES
        and value.size <= MAX_NUMEL
        and payload_size(value.size, entries, value.dtype.name) < value.nbytes
    )


def _kept(value: np.ndarray, idx: np.ndarray | None) -> np.ndarray | None:
    """The indices worth keeping for a delta (uint32), or ``None``: send whole."""
    if idx is None or not sparse_pays(value, len(idx)):
        return None
    return idx.astype(np.uint32)


class DownlinkSync:
    """Per-node downlink deltas for one run (see the module).

    Parameters
    ----------
    version, model : int, NDArrays
        The run's current version and model.
    window : callable
        How many versions a delta may start from, the current one included
        (``None``: ``default_window``); FedBuff passes its full-copy bound,
        ``max_staleness + 1``, so a delta reaches as far back as an update
        may be stale.
    arrayrecord_key : str
        Key of the model's ArrayRecord in a train message.
    from_initial : bool
        Offer nodes not heard from the delta from ``version``, the run's
        initial model, which their ``downlink_mod`` builds itself.
    """

    def __init__(
        self,
        version: int,
        model: NDArrays,
        window: Callable[[], int | None],
        arrayrecord_key: str = "arrays",
        default_window: int = 32,
        from_initial: bool = False,
    ) -> None:
        self.version, self.model = version, model
        self.window = window
        self.default_window = default_window
        self.key = arrayrecord_key
        self.hashes: dict[int, str] = {version: model_hash(model)}
        self.changes: dict[int, Changes] = {}  # version u: what u changed from u - 1
        # node -> version, hash it holds; None: send it full models
        self.holds: dict[int, tuple[int, str] | None] = {}
        self.initial = (version, self.hashes[version]) if from_initial else None
        """What a node not heard from holds (``None``: nothing)."""
        self._sent_initial: set[int] = set()  # nodes whose last delta was on it
        self.initial_refused = 0
        """Messages on the initial model that their node failed."""
        self._deltas: dict[int, _Delta | None] = {}  # base -> delta, this version
        self.full_sent = 0
        self.by_distance: dict[int, DistanceStats] = {}
        """Per distance (versions between a node's base and the current one),
        what its deltas held: bounded by the window."""

    # ---------------------------------------------------------------- versions
    def advance(self, version: int, model: NDArrays) -> None:
        """Adopt a new current version; forget versions beyond the window."""
        self.changes[version] = {
            name: _kept(value, changed_entries(self.model[name], value))
            for name, value in model.items()
        }
        self.hashes[version] = model_hash(model)
        self.version, self.model = version, model
        self._deltas.clear()
        limit = self.window()
        # a base as old as the window's oldest version: its hash, and the
        # changes of the versions after it
        oldest = version - (limit if limit is not None else self.default_window) + 1
        for v in [v for v in self.hashes if v < oldest]:
            del self.hashes[v]
        for v in [v for v in self.changes if v <= oldest]:
            del self.changes[v]
        # a node on a version out of the window gets the full model anyway
        if self.initial is not None and self.initial[0] < oldest:
            self.initial = None
        for node in [
            n for n, held in self.holds.items() if held is None or held[0] < oldest
        ]:
            self._hold(node, None)

    # ------------------------------------------------------------------ nodes
    def observe(self, node_id: int, content: RecordDict) -> None:
        """A train reply from ``node_id``: remember the version it says it holds."""
        record = content.config_records.get(DOWNLINK_RECORD)
        held = None
        if record is not None:
            version, digest = record.get("holds-version"), record.get("holds-hash")
            if (
                isinstance(version, int)
                and not isinstance(version, bool)
                and isinstance(digest, str)
                and self.hashes.get(version) == digest
            ):
                held = (version, digest)
        self._hold(node_id, held)
        self._sent_initial.discard(node_id)

    def _hold(self, node_id: int, held: tuple[int, str] | None) -> None:
        if held is None and self.initial is None:
            self.holds.pop(node_id, None)  # the same as a node not heard from
        else:
            self.holds[node_id] = held

    def forget(self, node_id: int, reason: str = "") -> None:
        """``node_id`` failed (the failure's ``reason``): send it full models."""
        self._hold(node_id, None)
        if node_id not in self._sent_initial:
            return
        self._sent_initial.discard(node_id)
        self.initial_refused += 1
        if self.initial is not None and "initial model" in reason:
            self.initial = None
            log(
                WARNING,
                "Downlink: node %d cannot rebuild the run's initial model (%s); "
                "first models go whole from now on",
                node_id,
                reason,
            )

    # --------------------------------------------------------------- messages
    def content(self, node_id: int, content: RecordDict) -> RecordDict:
        """``content`` (a train message on the current version), or the same
        with the model replaced by the delta from the node's version."""
        held = self.holds.get(node_id, self.initial)
        full = content.array_records.get(self.key)
        delta = self._delta(held[0]) if held is not None and full is not None else None
        if delta is None or full is None or held is None:
            self.full_sent += 1
            return content
        stats = self.by_distance.setdefault(self.version - held[0], DistanceStats())
        stats.offered += 1
        stats.entries += delta.entries
        stats.delta_bytes += delta.num_bytes
        sync = ConfigRecord(
            {
                "base-version": held[0],
                "base-hash": held[1],
                "model-hash": self.hashes[self.version],
            }
        )
        on_initial = node_id not in self.holds
        if on_initial:
            sync[DOWNLINK_INITIAL_KEY] = True
        if delta.num_bytes + sync.count_bytes() >= full.count_bytes():
            self.full_sent += 1  # the full model is smaller
            return content
        stats.sent += 1
        if on_initial:
            self._sent_initial.add(node_id)
        out = RecordDict({k: v for k, v in content.items() if k != self.key})
        out[self.key] = delta.arrays
        out[DOWNLINK_RECORD] = sync
        return out

    def _delta(self, base: int) -> _Delta | None:
        """The delta from ``base`` to the current version and its bytes, or
        ``None`` if ``base`` is beyond the window (cached per version)."""
        if base not in self._deltas:
            self._deltas[base] = self._build(base)
        return self._deltas[base]

    def _build(self, base: int) -> _Delta | None:
        steps = range(base + 1, self.version + 1)
        if base not in self.hashes or any(v not in self.changes for v in steps):
            return None
        arrays: dict[str, Array] = {}
        entries = 0
        for name, value in self.model.items():
            idx = _union([self.changes[v][name] for v in steps], value)
            if idx is None:
                entries += value.size
                arrays[name] = Array(np.asarray(value, order="C"))
            else:
                entries += len(idx)
                arrays[name] = encode(
                    idx,
                    value.reshape(-1)[idx],
                    shape=tuple(value.shape),
                    dtype=value.dtype.name,
                    value_dtype=value.dtype.name,
                )
        record = ArrayRecord(arrays)
        return _Delta(record, record.count_bytes(), entries)


def _union(parts: list[np.ndarray | None], value: np.ndarray) -> np.ndarray | None:
    """The indices that changed in any of ``parts``, or ``None`` (send whole) as
    soon as the union is too large for its sparse encoding to be smaller."""
    known = [p for p in parts if p is not None]
    if len(known) < len(parts):
        return None
    union = np.zeros(0, np.uint32)
    for part in known:
        union = np.union1d(union, part)
        if not sparse_pays(value, len(union)):
            return None  # payload_size grows with the entries: no need to go on
    return union

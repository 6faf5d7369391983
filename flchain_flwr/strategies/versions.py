"""The global versions the server still needs, with a bound on full copies.

A reply with full weights is turned into a delta against the version its node
trained on, so that version must still be held. A delta reply (the DGC mod)
needs only the model's names, shapes and dtypes, which every version shares.
The store therefore keeps a full copy of version ``v`` only while a train
message on ``v`` is in flight to a node that has not been seen sending deltas,
and never for a version staler than ``max_staleness`` (such a reply is dropped
anyway). Non-trainable state (BatchNorm statistics, a few values per layer) is
kept for every version in flight: averaging reported values needs each update's
base. So at most ``max_staleness + 1`` full copies exist at once: with the
default ``max_staleness`` of 20 and a 400 MB model, 8.4 GB in the worst case,
and one copy (the current model) when every node sends deltas. A signed reply
names the model it trained on by its model hash
(:mod:`flchain_flwr.ledger.trainers`): a version's hash is the ledger's when a
ledger wrote it (given to :meth:`VersionStore.advance`), else hashed when a
signed reply first names it, from its kept copy; once replies are signed
(:attr:`VersionStore.keep_hashes`), a version still in flight is hashed before
its full copy goes. A run nobody signs in hashes nothing here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ..arrays import NDArrays
from ..ledger.canonical import model_hash
from ..protocol import UPDATE_KIND_DELTA


class VersionStore:
    """Full copies of the global versions that replies in flight may need."""

    def __init__(
        self,
        version: int,
        model: NDArrays,
        max_staleness: Callable[[], int | None],
        state_names: frozenset[str] = frozenset(),
        hashed: str | None = None,
    ) -> None:
        self.version = version
        self.model = model
        self.max_staleness = max_staleness
        self.state_names = state_names
        self._state: dict[int, NDArrays] = {version: self._state_of(model)}
        self._hashes: dict[int, str] = {} if hashed is None else {version: hashed}
        self.keep_hashes = False
        """Whether a version still in flight is hashed before its full copy
        goes (set once a signed reply arrived, or when all must be signed)."""
        self._full: dict[int, NDArrays] = {version: model}
        self._in_flight: Counter[int] = Counter()  # version -> train messages
        self._needs_full: Counter[int] = Counter()  # ... to full-weight senders
        self._sends_deltas: set[int] = set()
        self._settled = False  # something settled since the last prune

    @property
    def bound(self) -> int | None:
        """The most full copies that can be held at once (``None``: unbounded)."""
        limit = self.max_staleness()
        return None if limit is None else limit + 1

    def full_copies(self) -> int:
        """Full model copies held now."""
        return len(self._full)

    def sends_deltas(self, node_id: int) -> bool:
        """Whether ``node_id`` has replied with a delta before."""
        return node_id in self._sends_deltas

    def dispatched(self, node_id: int, version: int) -> None:
        """A train message on ``version`` is in flight to ``node_id``."""
        self._in_flight[version] += 1
        if node_id not in self._sends_deltas:
            self._needs_full[version] += 1

    def settled(self, node_id: int, version: int, kind: str | None) -> None:
        """The train message to ``node_id`` on ``version`` got a reply of ``kind``.

        ``kind`` is the reply's update kind (``"delta"`` or ``"weights"``), or
        ``None`` when there was no usable reply.
        """
        self._settled = True
        _decrement(self._in_flight, version)
        if node_id not in self._sends_deltas:
            _decrement(self._needs_full, version)
        if kind == UPDATE_KIND_DELTA:
            self._sends_deltas.add(node_id)
        elif kind is not None:
            self._sends_deltas.discard(node_id)

    def _state_of(self, model: NDArrays) -> NDArrays:
        return {name: model[name] for name in self.state_names}

    def state(self, version: int) -> NDArrays:
        """The non-trainable arrays of ``version`` (kept while it is in flight)."""
        return self._state[version]

    def model_hash(self, version: int) -> str | None:
        """The model hash of ``version`` (kept while it is in flight; hashed
        from its full copy when first asked for), or ``None`` if neither is
        kept."""
        known = self._hashes.get(version)
        if known is None and version in self._state:
            model = self._full.get(version)
            if model is not None:
                known = self._hashes[version] = model_hash(model)
        return known

    def get(self, version: int) -> NDArrays | None:
        """The full copy of ``version``, or ``None`` if it was not kept."""
        return self._full.get(version)

    def advance(self, version: int, model: NDArrays, hashed: str | None = None) -> None:
        """Adopt a new current version (``hashed``: its model hash, when the
        ledger computed it)."""
        self.version, self.model = version, model
        self._full[version] = model
        self._state[version] = self._state_of(model)
        if hashed is not None:
            self._hashes[version] = hashed
        self._settled = True
        self.prune()

    def prune(self) -> None:
        """Drop full copies no reply in flight can need (after a change only)."""
        if not self._settled:
            return
        self._settled = False
        limit = self.max_staleness()
        for v in list(self._full):
            if v == self.version:
                continue
            too_old = limit is not None and self.version - v > limit
            if too_old or self._needs_full[v] == 0:
                if self.keep_hashes and not too_old and self._in_flight[v]:
                    self.model_hash(v)  # a signed reply on it names it by hash
                del self._full[v]
        for v in list(self._state):
            if v != self.version and self._in_flight[v] == 0:
                del self._state[v]
                self._hashes.pop(v, None)


def _decrement(counter: Counter[int], key: int) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]

"""A verifier node's locks, kept in a file beside its key.

What a verifier must never go back on: the chain position it voted at or led
(:attr:`~flchain_flwr.pov.Verifier.seen`), the last block header it signed as
a leader (:attr:`~flchain_flwr.pov.Verifier.headers`), the last statement it
signed as a member (:attr:`~flchain_flwr.pov.Verifier.statements`) and the
candidates it voted on at its last (height, previous hash, view)
(:attr:`~flchain_flwr.pov.Verifier.voted`: it signs no header that judges one
of them without its vote), each by chain id. Flower keeps a node's run state
only in the SuperNode's memory and only for one run series (a new
``flwr run``, as a resumed PoV run is, starts with an empty one, and so does
a restarted SuperNode), so these locks live in a file of their own, named by
node config ``verifier-state`` (default ``<verifier-key>.state``), like
Tendermint's priv-validator state file::

    {"format": "flchain-verifier-state/1", "public_key": "<hex>",
     "seen": {"<chain id>": {"height": 5, "prev_hash": "…", "parent_model": "…"}},
     "headers": {"<chain id>": {"height": 5, "sha256": "…"}},
     "statements": {"<chain id>": {"height": 5, "view": 0, "what": "…"}},
     "voted": {"<chain id>": {"height": 5, "prev_hash": "…", "view": 0,
                              "digests": ["<sorted candidate digests>"]}}}

(``json.dumps(sort_keys=True, indent=1)``). ``voted`` holds one position's
digests: a vote request asked again there (after a timeout, say) adds its
candidates, one at another position replaces them. A verifier node refuses a vote
request that would take them past
:attr:`~flchain_flwr.pov.Verifier.max_voted` (:data:`~.verifier.MAX_VOTED`,
1024: a 73 KiB file) and votes on no new candidates there; it drops none it
holds, so the file stays bounded and the check whole (in-process members keep
them in memory, unbounded). Every query is answered under an
exclusive ``flock`` on ``<state>.lock`` (a SuperNode may run ClientApp
processes for two runs at once, whose queries then take turns): the locks are
read, the query answered, and the new locks, if they changed, written
atomically and fsynced before the reply leaves the node.
A missing file is a first use (no locks); a file that cannot be read, is
malformed or holds another key's locks is refused, never replaced: starting
afresh is how a node would sign two blocks at one height. Whoever can delete
or roll back the file (write access to the key's folder) can make the node
equivocate: it takes the key's own trust, so keep it with the key.

The members of an in-process committee (simulation: the server process holds
every key, in ``<ledger>.verifiers/``) keep their locks in that process's
memory, so a restarted server forgets them; that process can sign anything
with those keys anyway, and ``verify`` says so. Verifier nodes on the virtual
grid are built from node config like deployed ones, with state files.
A verifier without a state file (one an app builds without
:func:`~.verifiernode.verifier_from_node_config`, as some tests do) keeps its
locks in the node's run state instead (:func:`read_run_state`), as before:
only as long as the run. A verifier with one neither reads nor writes those
run-state records: they never outlive a ``flwr run``, and new code comes with
a new one, so an upgraded node has none to carry over.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from logging import INFO
from pathlib import Path
from typing import Any, Final

from flwr.app import ConfigRecord
from flwr.supercore import log

from ..configvalues import text_value
from ..ledger.atomicfile import write_file_atomically
from .runstate import columns_record, read_columns
from .verifier import Verifier

STATE_FORMAT: Final = "flchain-verifier-state/1"
SEEN_COLUMNS: Final[Mapping[str, type]] = {
    "height": int,
    "prev_hash": str,
    "parent_model": str,
}
"""By chain: the last position it voted at or led."""
HEADER_COLUMNS: Final[Mapping[str, type]] = {"height": int, "sha256": str}
"""By chain: the last block header it signed as a leader."""
STATEMENT_COLUMNS: Final[Mapping[str, type]] = {"height": int, "view": int, "what": str}
"""By chain: the last statement (block hash or "view-change") it signed as a
member, at a height and view."""
VOTED_COLUMNS: Final[Mapping[str, type]] = {
    "height": int,
    "prev_hash": str,
    "view": int,
    "digests": list,
}
"""By chain: the position it last voted at and the (sorted) digests of the
candidates it voted on there."""
_LOCKS: Final = {
    "seen": SEEN_COLUMNS,
    "headers": HEADER_COLUMNS,
    "statements": STATEMENT_COLUMNS,
    "voted": VOTED_COLUMNS,
}
_RUN_STATE: Final = "pov-"
"""Run-state record names: ``pov-seen``, ``pov-headers``, ``pov-statements``,
``pov-voted`` (whose digests are one space-separated string: a config record
holds no list of lists)."""

Locks = dict[str, dict[str, tuple[Any, ...]]]
"""Each lock's rows (a tuple by chain id), by lock name."""


def _locks(verifier: Verifier) -> Locks:
    return {
        "seen": dict(verifier.seen),
        "headers": dict(verifier.headers),
        "statements": dict(verifier.statements),
        "voted": {
            chain_id: (*where, tuple(sorted(digests)))
            for chain_id, (*where, digests) in verifier.voted.items()
        },
    }


def _take(verifier: Verifier, locks: Locks) -> None:
    verifier.seen = locks["seen"]
    verifier.headers = locks["headers"]
    verifier.statements = locks["statements"]
    verifier.voted = {
        chain_id: (height, prev_hash, view, set(digests))
        for chain_id, (height, prev_hash, view, digests) in locks["voted"].items()
    }


def state_file_of(key_path: Path, node_config: Mapping[str, Any]) -> Path:
    """Node config ``verifier-state`` (a non-empty string), else
    ``<key_path>.state``."""
    if "verifier-state" not in node_config:
        return key_path.with_name(key_path.name + ".state")
    path = text_value(node_config, "verifier-state", source="node config")
    if not path:
        raise ValueError('node config verifier-state="<path>" must not be empty')
    return Path(path)


@contextmanager
def locks_held(path: Path, verifier: Verifier) -> Iterator[None]:
    """Hold the lock on ``path``, give ``verifier`` the locks it holds, and,
    if the body returns (the query was answered) and they changed, write
    them back durably before returning; ``ValueError`` naming ``path`` if
    the file cannot be locked or read, or is not this verifier's state."""
    try:
        lock = os.open(
            path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
    except OSError as exc:
        raise ValueError(f"cannot lock the verifier state {path}: {exc}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = read_state(path, verifier.public_key)
        _take(verifier, {name: dict(rows) for name, rows in held.items()})
        yield
        now = _locks(verifier)
        if now != held:
            _write_state(path, verifier.public_key, now)
    finally:
        os.close(lock)  # and with it the lock


def read_state(path: Path, public_key: str) -> Locks:
    """The locks in the state file ``path`` of the verifier ``public_key``
    (none if there is no file); ``ValueError`` naming ``path`` otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {name: {} for name in _LOCKS}
    except OSError as exc:
        raise ValueError(f"cannot read the verifier state {path}: {exc}") from None
    try:
        return _parse(data, public_key)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not a usable verifier state ({exc}); this node signs "
            "nothing until it is restored (never delete it: it is what keeps "
            "the node from signing two blocks at one height)"
        ) from None


def _parse(data: bytes, public_key: str) -> Locks:
    state = json.loads(data)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a {STATE_FORMAT} object")
    if state.get("public_key") != public_key:
        key = str(state.get("public_key"))[:64]
        raise ValueError(f"it holds the locks of key {key!r}, not {public_key}")
    return {name: _rows(state.get(name), name, cols) for name, cols in _LOCKS.items()}


def _rows(
    value: Any, name: str, columns: Mapping[str, type]
) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, dict):
        raise ValueError(f"{name!r} must be an object")
    rows: dict[str, tuple[Any, ...]] = {}
    for chain_id, fields in value.items():
        where = f"{name}[{chain_id[:40]!r}]"
        if not isinstance(fields, dict) or set(fields) != set(columns):
            raise ValueError(f"{where} must have exactly {sorted(columns)}")
        for column, kind in columns.items():
            cell = fields[column]
            if not isinstance(cell, kind) or isinstance(cell, bool):
                raise ValueError(f"{where}[{column!r}] must be a {kind.__name__}")
            if isinstance(cell, list) and not all(isinstance(i, str) for i in cell):
                raise ValueError(f"{where}[{column!r}] must be a list of strings")
        rows[chain_id] = tuple(
            tuple(sorted(cell)) if isinstance(cell, list) else cell
            for cell in (fields[column] for column in columns)
        )
    return rows


def _write_state(path: Path, public_key: str, locks: Locks) -> None:
    state: dict[str, Any] = {"format": STATE_FORMAT, "public_key": public_key}
    for name, columns in _LOCKS.items():
        state[name] = {
            chain_id: dict(zip(columns, row, strict=True))
            for chain_id, row in locks[name].items()
        }
    data = json.dumps(state, sort_keys=True, indent=1).encode("utf-8")
    first = not path.exists()
    write_file_atomically(path, data, mode=0o600, overwrite=True)
    if first:
        log(INFO, "Verifier state %s created (this key's first locks)", path)


def _split(value: Any) -> tuple[str, ...]:
    """A list column as kept in the run state: one space-separated string."""
    return tuple(sorted(str(value).split()))


def read_run_state(verifier: Verifier, records: Mapping[str, ConfigRecord]) -> None:
    """Give ``verifier`` the locks kept in a node's run state ``records``."""
    _take(
        verifier,
        {
            name: read_columns(
                records.get(_RUN_STATE + name),
                {c: _split if kind is list else kind for c, kind in columns.items()},
            )
            for name, columns in _LOCKS.items()
        },
    )


def write_run_state(
    verifier: Verifier, records: MutableMapping[str, ConfigRecord]
) -> None:
    """Keep ``verifier``'s locks in a node's run state ``records``."""
    for name, rows in _locks(verifier).items():
        if rows:
            records[_RUN_STATE + name] = columns_record(
                {
                    chain_id: tuple(
                        " ".join(cell) if isinstance(cell, tuple) else cell
                        for cell in row
                    )
                    for chain_id, row in rows.items()
                },
                _LOCKS[name],
            )

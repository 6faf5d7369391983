"""A verifier node's locks, kept in a file beside its key.

What a verifier must never go back on: the chain position it voted at or led
(:attr:`~flchain_flwr.pov.Verifier.seen`), the last block header it signed as
a leader (:attr:`~flchain_flwr.pov.Verifier.headers`), the last statement it
signed as a member (:attr:`~flchain_flwr.pov.Verifier.statements`) and the
candidates it voted on in each view at its last (height, previous hash)
(:attr:`~flchain_flwr.pov.Verifier.voted`: it signs no header in a view that
judges one of them without its vote in that view), each by chain id. Flower
keeps a node's run state only in the SuperNode's memory and only for one run
series (a new ``flwr run``, as a resumed PoV run is, starts with an empty
one, and so does a restarted SuperNode), so these locks live in a file of
their own, named by node config ``verifier-state`` (default
``<verifier-key>.state``; a symlink is resolved, so the file it names is the
one written and locked), like Tendermint's priv-validator state file::

    {"format": "flchain-verifier-state/1", "public_key": "<hex>",
     "seen": {"<chain id>": {"height": 5, "prev_hash": "…", "parent_model": "…"}},
     "headers": {"<chain id>": {"height": 5, "sha256": "…"}},
     "statements": {"<chain id>": {"height": 5, "view": 0, "what": "…"}},
     "voted": {"<chain id>": {"height": 5, "prev_hash": "…",
                              "views": {"<view>": ["<sorted digests>"]}}}}

(``json.dumps(sort_keys=True, indent=1)``). ``voted`` holds one (height,
previous hash)'s votes, every view's: a vote request asked again there (after
a timeout, say, or in a later view) adds its candidates to its view's, one at
another (height, previous hash) replaces them all. A later view's request
frees no header of an earlier one, so none is refused for naming a lower view
either (a restarted server may ask again from view 0). A verifier node
refuses a vote request that would take them past
:attr:`~flchain_flwr.pov.Verifier.max_voted` (:data:`~.verifier.MAX_VOTED`,
1024 votes, all views together: a 74 KiB file with one chain) and votes on no
new candidates there; it drops none it holds, so the check stays whole
(in-process members keep them in memory, unbounded). The server names the
chain id, so a node also takes locks in at most :data:`MAX_CHAINS` (64)
chains, each id at most :data:`MAX_CHAIN_ID_CHARS` (128) characters, and
refuses a request that would take on another, saying what the operator can
do (a new key and state file for new chains, or deleting, with the node
stopped, the entries of chains that will never grow); it never drops a
chain's locks, which would let it sign twice there. A request takes a
position only in its exact shape (heights and views integers from 0 to
2**53 - 1, hashes 64 lower-case hex digits:
:func:`~.verifier.position_problem`), so at those bounds the file is at
most 6.7 MiB (measured: 1024 votes each in a view of its own with 16-digit
views, in each of 64 chains; 4.6 MiB with each chain's votes in one view),
rewritten at every vote; a state the node could not read back (over
:data:`MAX_STATE_BYTES`) is never written, its request refused. Every query, an identity
challenge too, is answered under an exclusive ``flock`` on ``<state>.lock``
(opened with ``O_CREAT``: the state file's folder must be writable), held
while the node scores and replays: a SuperNode may run ClientApp processes for
two runs at once, whose queries then take turns. The locks are read, the
query answered, and the new locks, if they changed, written atomically and
fsynced before the reply leaves the node.
A missing file is a first use (no locks); a file that cannot be read, is not
a regular file (a FIFO would block the read), is malformed (JSON nested too
deeply included) or holds another key's locks is refused, never replaced: starting
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
locks in the node's run state instead (:func:`run_state_held`, with the same
bounds), as before: only as long as the run. A verifier with one neither
reads nor writes those run-state records: they never outlive a ``flwr run``,
and new code comes with a new one, so an upgraded node has none to carry over.
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
from ..ledger.canonical import parse_json
from ..ledger.checkpoint import MAX_CHAIN_ID_CHARS
from ..ledger.inputfile import read_head
from .runstate import columns_record, read_columns
from .verifier import Verifier

STATE_FORMAT: Final = "flchain-verifier-state/1"
MAX_STATE_BYTES: Final = 1 << 24
"""Largest state file read, and written (16 MiB; the bounds below keep one
at most 6.7 MiB)."""
MAX_CHAINS: Final = 64
"""The most chains a node holds locks in: it acts in no new chain past it
(never dropping an old chain's locks, which would let it sign twice there)."""
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
    "views": dict,
}
"""By chain: the (height, previous hash) it last voted at and, by view, the
(sorted) digests of the candidates it voted on there."""
_LOCKS: Final = {
    "seen": SEEN_COLUMNS,
    "headers": HEADER_COLUMNS,
    "statements": STATEMENT_COLUMNS,
    "voted": VOTED_COLUMNS,
}
_RUN_STATE: Final = "pov-"
"""Run-state record names: ``pov-seen``, ``pov-headers``, ``pov-statements``,
``pov-voted`` (whose views are one JSON text, as in the file: a config record
holds no mappings)."""

Locks = dict[str, dict[str, tuple[Any, ...]]]
"""Each lock's rows (a tuple by chain id), by lock name; ``voted``'s views
are a mapping of view to sorted digest tuple."""


def _locks(verifier: Verifier) -> Locks:
    return {
        "seen": dict(verifier.seen),
        "headers": dict(verifier.headers),
        "statements": dict(verifier.statements),
        "voted": {
            chain_id: (
                height,
                prev_hash,
                {view: tuple(sorted(held)) for view, held in views.items()},
            )
            for chain_id, (height, prev_hash, views) in verifier.voted.items()
        },
    }


def _take(verifier: Verifier, locks: Locks) -> None:
    verifier.seen = locks["seen"]
    verifier.headers = locks["headers"]
    verifier.statements = locks["statements"]
    verifier.voted = {
        chain_id: (height, prev_hash, {view: set(d) for view, d in views.items()})
        for chain_id, (height, prev_hash, views) in locks["voted"].items()
    }


def _chains(locks: Locks) -> set[str]:
    return {chain_id for rows in locks.values() for chain_id in rows}


def _bounded(held: Locks, now: Locks, where: str) -> None:
    """``ValueError`` if ``now`` takes locks in a chain ``held`` has none in
    whose id is longer than :data:`MAX_CHAIN_ID_CHARS`, or past
    :data:`MAX_CHAINS` chains (``where``: what keeps them)."""
    before = _chains(held)
    new = sorted(_chains(now) - before)
    for chain_id in new:
        if len(chain_id) > MAX_CHAIN_ID_CHARS:
            raise ValueError(
                f"the chain id {chain_id[:40]!r}… is {len(chain_id)} characters "
                f"long; this verifier acts in no chain whose id is longer than "
                f"{MAX_CHAIN_ID_CHARS} (a ledger's own is 32)"
            )
    if new and len(before) + len(new) > MAX_CHAINS:
        raise ValueError(
            f"this verifier holds locks in {len(before)} chains ({where}), the "
            f"most it keeps is {MAX_CHAINS}: it acts in no new chain "
            f"({new[0][:40]!r}). Give it another verifier-key and "
            "verifier-state for new chains, or, with the node stopped, delete "
            "from the state file the entries of chains that will never get "
            "another block"
        )


def state_file_of(key_path: Path, node_config: Mapping[str, Any]) -> Path:
    """Node config ``verifier-state`` (a non-empty string), else
    ``<key_path>.state``, with symlinks resolved: the file a link names is
    the one written (never the link replaced) and locked (``<target>.lock``,
    whichever name reaches it)."""
    if "verifier-state" not in node_config:
        path = str(key_path.with_name(key_path.name + ".state"))
    else:
        path = text_value(node_config, "verifier-state", source="node config")
        if not path:
            raise ValueError('node config verifier-state="<path>" must not be empty')
    return Path(os.path.realpath(path))


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
            _bounded(held, now, str(path))
            _write_state(path, verifier.public_key, now)
    finally:
        os.close(lock)  # and with it the lock


def read_state(path: Path, public_key: str) -> Locks:
    """The locks in the state file ``path`` of the verifier ``public_key``
    (none if there is no file); ``ValueError`` naming ``path`` otherwise."""
    try:  # a regular file only: a FIFO would wait for a writer for ever
        data = read_head(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return {name: {} for name in _LOCKS}
    except OSError as exc:
        raise ValueError(f"cannot read the verifier state {path}: {exc}") from None
    try:
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        return _parse(data, public_key)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not a usable verifier state ({exc}); this node signs "
            "nothing until it is restored (never delete it: it is what keeps "
            "the node from signing two blocks at one height)"
        ) from None


def _parse(data: bytes, public_key: str) -> Locks:
    state = parse_json(data)  # NotCanonical (a ValueError) for JSON it cannot read
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
        rows[chain_id] = tuple(
            _views(fields[c], f"{where}[{c!r}]") if kind is dict else fields[c]
            for c, kind in columns.items()
        )
    return rows


def _views(value: Any, where: str) -> dict[int, tuple[str, ...]]:
    """``voted``'s views: an object from view (decimal) to its digests."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    views: dict[int, tuple[str, ...]] = {}
    for view, digests in value.items():
        if not (view.isdecimal() and view.isascii() and str(int(view)) == view):
            raise ValueError(f"{where} has a key {view[:20]!r}, not a view")
        if not isinstance(digests, list) or not all(
            isinstance(d, str) for d in digests
        ):
            raise ValueError(f"{where}[{view!r}] must be a list of strings")
        views[int(view)] = tuple(sorted(digests))
    return views


def _cell(cell: Any) -> Any:
    """A lock's cell as written: ``voted``'s views by decimal view."""
    if isinstance(cell, dict):
        return {str(view): list(digests) for view, digests in cell.items()}
    return cell


def _write_state(path: Path, public_key: str, locks: Locks) -> None:
    state: dict[str, Any] = {"format": STATE_FORMAT, "public_key": public_key}
    for name, columns in _LOCKS.items():
        state[name] = {
            chain_id: dict(zip(columns, map(_cell, row), strict=True))
            for chain_id, row in locks[name].items()
        }
    data = json.dumps(state, sort_keys=True, indent=1).encode("utf-8")
    if len(data) > MAX_STATE_BYTES:  # the node could not read it back
        raise ValueError(
            f"the verifier state {path} would be {len(data)} bytes, more than "
            f"the {MAX_STATE_BYTES} it reads: not written, the request refused"
        )
    first = not path.exists()
    write_file_atomically(path, data, mode=0o600, overwrite=True)
    if first:
        log(INFO, "Verifier state %s created (this key's first locks)", path)


def _views_text(text: Any) -> dict[int, tuple[str, ...]]:
    """``voted``'s views as kept in the run state: their JSON text."""
    return _views(json.loads(str(text)), "pov-voted views")


@contextmanager
def run_state_held(
    records: MutableMapping[str, ConfigRecord], verifier: Verifier
) -> Iterator[None]:
    """:func:`locks_held` for a verifier without a state file: its locks
    read from and, if the body returns, kept in a node's run state
    ``records``."""
    held = {
        name: read_columns(
            records.get(_RUN_STATE + name),
            {c: _views_text if kind is dict else kind for c, kind in columns.items()},
        )
        for name, columns in _LOCKS.items()
    }
    _take(verifier, {name: dict(rows) for name, rows in held.items()})
    yield
    now = _locks(verifier)
    _bounded(held, now, "its run state")
    for name, rows in now.items():
        if rows:
            records[_RUN_STATE + name] = columns_record(
                {
                    chain_id: tuple(
                        json.dumps(_cell(c), sort_keys=True)
                        if isinstance(c, dict)
                        else c
                        for c in row
                    )
                    for chain_id, row in rows.items()
                },
                _LOCKS[name],
            )

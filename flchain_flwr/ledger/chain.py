"""The hash-chained ledger: blocks in SQLite, models in a content-addressed store.

One block per accepted aggregation (height 0 is the genesis block holding the
initial model). A block is stored as its canonical header and body bytes, its hash
(``sha256(HEADER_TAG + header)``) and the leader's Ed25519 signature over the same
bytes. The header commits to everything else: the previous block's hash, the
body's hash, the Merkle root of the included update digests and the new global
model's hash. Each block is one SQLite transaction (WAL mode), and its model blob
is in place before that transaction starts, so a process killed at any moment
leaves a ledger whose every committed block verifies.

Two optional body fields let a run be resumed exactly (ledgers written before
them lack both, and still verify):

``config``
    The strategy's settings (in the genesis block, and in the first block made
    after a resume with changed settings). Its canonical JSON hashes to the
    header's ``config_digest``, so a resume can name the settings that differ.
``server_state``
    The server's state after the block, each part a blob in the
    content-addressed store (written, like the model, before the block):
    ``{"claims": <hash>, "momentum": {"velocity": <hash>, "from_zero": <bool>}}``.
    ``claims`` is the example-weighting history the block's weights were
    computed from (:class:`ServerState`); ``momentum`` (only with server
    momentum) the velocity the block's step applied, ``new = parent + lr *
    velocity``, where ``velocity = momentum * previous + step`` and
    ``previous`` is the last block's velocity, or zero when ``from_zero``.
    The velocity is float64, so with momentum each block stores twice a
    float32 model's bytes beside its model; the claims take 16 bytes a node.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .blobs import BlobStore
from .canonical import (
    BODY_TAG,
    HEADER_TAG,
    VOTE_TAG,
    ZERO_HASH,
    NotCanonical,
    canonical_json,
    parse_canonical,
    sha256_hex,
)
from .consensus import VOTE_FORMAT, PoVRules, PoVState, VoteRules, block_view
from .merkle import (
    InvalidProof,
    MalformedProof,
    consistency_proof,
    inclusion_proof,
    merkle_root,
    proof_field,
    verify_proof,
)

LEDGER_FORMAT: Final = "flchain-ledger/1"
_MAX_HEIGHT: Final = 2**63 - 1
"""SQLite's largest integer: no block can be higher."""
BLOCK_FORMAT: Final = "flchain-block/1"
CONFIG_FIELD: Final = "config"
"""Body field: the settings behind the header's ``config_digest``."""
SERVER_STATE_FIELD: Final = "server_state"
"""Body field: blob hashes of the server's state after the block."""

_COLUMNS: Final = {
    "meta": ("key", "value"),
    "blocks": ("height", "hash", "header", "body", "signature"),
}
"""The columns :data:`_SCHEMA` creates: what an existing ledger must have."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL,
    signature TEXT NOT NULL
);
"""


class Signature(Protocol):
    """A signing result: what :class:`BlockSigner` returns."""

    @property
    def signature(self) -> bytes:
        """The 64-byte Ed25519 signature."""


class BlockSigner(Protocol):
    """What signs a block header: a ``nacl.signing.SigningKey``, or a key that
    stays on another machine (a PoV leader on its own SuperNode)."""

    @property
    def verify_key(self) -> VerifyKey:
        """The public half, written into the header as its ``leader``."""

    def sign(self, smessage: bytes) -> Signature:
        """Sign ``smessage`` (raise if it cannot be signed)."""


class LedgerError(Exception):
    """A ledger cannot be opened or used as asked (missing, not a ledger, ...)."""


@dataclass(frozen=True)
class Block:
    """A stored block: its exact bytes plus their parsed form."""

    height: int
    hash: str
    header_bytes: bytes
    body_bytes: bytes
    signature: str
    header: dict[str, Any] = field(compare=False)
    body: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class ServerState:
    """The server's state after a block: what a resume (or a replay) needs.

    Parameters
    ----------
    claims : list[tuple[int, float]] | None
        The example-weighting history, ``(node_id, latest claim)`` from the node
        heard from least recently to the most recent (see
        :class:`~flchain_flwr.strategies.weighting.ClaimHistory`). Node ids are
        Flower's unsigned 64-bit ids.
    velocity : dict[str, np.ndarray] | None
        The server momentum's velocity (``None`` without momentum): the step
        the block applied, one float64 array per model array.
    velocity_from_zero : bool (default: False)
        Whether that velocity started from zero (the first step of a run, or
        the first after a reset) rather than from the previous block's.
    """

    claims: list[tuple[int, float]] | None
    velocity: dict[str, np.ndarray] | None = None
    velocity_from_zero: bool = False


def _claims_arrays(claims: Sequence[tuple[int, float]]) -> dict[str, np.ndarray]:
    """The claim history as two arrays, in order: ``node_id`` and ``claim``."""
    ids = [node_id for node_id, _ in claims]
    if any(not 0 <= node_id < 2**64 for node_id in ids):
        raise ValueError("node ids in a claim history must fit an unsigned 64 bits")
    return {
        "node_id": np.array(ids, dtype=np.uint64),
        "claim": np.array([claim for _, claim in claims], dtype=np.float64),
    }


def _claims_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[tuple[int, float]]:
    """Inverse of :func:`_claims_arrays`; ``ValueError`` if the blob is not one."""
    ids, values = arrays.get("node_id"), arrays.get("claim")
    if (
        set(arrays) != {"node_id", "claim"}
        or ids is None
        or values is None
        or ids.dtype != np.uint64
        or values.dtype != np.float64
        or ids.ndim != 1
        or ids.shape != values.shape
    ):
        raise ValueError("the claims blob is not a claim history")
    return [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]


def _state_blobs(body: Mapping[str, Any]) -> dict[str, str]:
    """The blobs a body's ``server_state`` names, by part (``{}`` without one).

    Raises
    ------
    ValueError
        If the field is malformed.
    """
    if SERVER_STATE_FIELD not in body:
        return {}
    state = body[SERVER_STATE_FIELD]
    if not isinstance(state, Mapping) or not set(state) <= {"claims", "momentum"}:
        raise ValueError("server_state must hold only 'claims' and 'momentum'")
    blobs: dict[str, str] = {}
    if "claims" in state:
        blobs["claims"] = state["claims"]
    if "momentum" in state:
        momentum = state["momentum"]
        if (
            not isinstance(momentum, Mapping)
            or set(momentum) != {"velocity", "from_zero"}
            or not isinstance(momentum["from_zero"], bool)
        ):
            raise ValueError(
                "server_state.momentum must be {'velocity': hash, 'from_zero': bool}"
            )
        blobs["velocity"] = momentum["velocity"]
    for part, digest in blobs.items():
        if not _is_hex(digest, 64):
            raise ValueError(f"server_state {part} is not a SHA-256 hex digest")
    return blobs


@dataclass
class _ChainRules:
    """What :meth:`Ledger.verify` carries from block to block."""

    leader: str | None
    pov: PoVState | None = None
    model: str = ""
    """The previous block's model hash: the parent a vote was judged against."""

    def vote_context(
        self, chain_id: str, height: int, prev_hash: str, body: Mapping[str, Any]
    ) -> VoteContext:
        """The context a vote stored in this block must have been signed in."""
        if self.pov is None or self.pov.votes is None:
            return VoteContext(chain_id, height)
        return VoteContext(
            chain_id,
            height,
            prev_hash,
            self.model,
            self.pov.votes.digest,
            block_view(body) or 0,
        )


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`Ledger.verify`: ``ok``, or the first bad block and why."""

    ok: bool
    blocks: int
    bad_height: int | None = None
    reason: str = ""
    leader: str = ""
    """The leader key every block was checked against (hex); on a PoV chain the
    publisher who signed the genesis block."""
    pov: bool = False
    """Whether the chain follows PoV rules (rotating, committee-signed blocks)."""

    def __str__(self) -> str:
        if self.ok:
            if self.pov:
                return (
                    f"ok: {self.blocks} blocks verified, genesis signed by "
                    f"{self.leader[:16]}…, later blocks by their PoV committees"
                )
            signed = f", signed by leader {self.leader[:16]}…" if self.leader else ""
            return f"ok: {self.blocks} blocks verified{signed}"
        where = "ledger" if self.bad_height is None else f"block {self.bad_height}"
        return f"FAILED at {where}: {self.reason}"


_VOTE_TAG_V2: Final = b"flchain-vote/2\n"


@dataclass(frozen=True)
class VoteContext:
    """What a vote is judged against besides its candidate and weight.

    A format-2 vote signs all of it, so it holds for one block position, one
    parent model and one rule only. ``prev_hash=None`` stands for a format-1
    vote, which signs only ``chain_id`` and ``height``.
    """

    chain_id: str
    height: int
    prev_hash: str | None = None
    """Hash of the block this one follows."""
    parent_model: str = ""
    """Hash of the global model the candidates were applied to."""
    rule: str = ""
    """Digest of the judging rule (see ``consensus.rule_digest``)."""
    view: int = 0
    """The consensus view at this height (0 unless a leader failed)."""

    @property
    def format(self) -> int:
        """1 (chain id and height only) or 2 (everything)."""
        return 1 if self.prev_hash is None else 2


def vote_payload(
    context: VoteContext,
    candidate: str,
    verdict: bool,
    score: float,
    weight: float | None = None,
) -> bytes:
    """The bytes a verifier signs for one vote (``weight``: format 2 only)."""
    if context.format == 1:
        return VOTE_TAG + canonical_json(
            {
                "chain_id": context.chain_id,
                "height": context.height,
                "candidate": candidate,
                "verdict": verdict,
                "score": score,
            }
        )
    return _VOTE_TAG_V2 + canonical_json(
        {
            "format": VOTE_FORMAT,
            "chain_id": context.chain_id,
            "height": context.height,
            "view": context.view,
            "prev_hash": context.prev_hash,
            "parent_model": context.parent_model,
            "rule": context.rule,
            "candidate": candidate,
            "weight": weight,
            "verdict": verdict,
            "score": score,
        }
    )


# pylint: disable=too-many-arguments
def sign_vote(
    key: SigningKey,
    context: VoteContext,
    candidate: str,
    verdict: bool,
    score: float,
    weight: float | None = None,
) -> dict[str, Any]:
    """A signed vote, in the form stored in a block body.

    A format-2 vote stores its ``weight`` and ``format``; the rest of its
    context is recomputed from the chain by whoever checks it.
    """
    if context.format == 2 and (weight is None or not math.isfinite(weight)):
        raise ValueError("a format-2 vote needs a finite weight")
    payload = vote_payload(context, candidate, verdict, score, weight)
    vote: dict[str, Any] = {
        "verifier": key.verify_key.encode(HexEncoder).decode(),
        "candidate": candidate,
        "verdict": verdict,
        "score": score,
        "signature": key.sign(payload).signature.hex(),
    }
    if context.format == 2:
        vote["format"] = VOTE_FORMAT
        vote["weight"] = weight
    return vote


def _sqlite_message(exc: Exception) -> str:
    """SQLite's error message. Python's sqlite3 raises ``UnicodeDecodeError``
    instead when that message is not UTF-8 itself (it quotes a damaged
    schema): then its bytes, the undecodable ones replaced."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    return str(exc)


def load_or_create_key(path: Path) -> SigningKey:
    """The Ed25519 key at ``path``, created (mode 0600) if it does not exist."""
    if path.exists():
        try:
            return SigningKey(path.read_bytes().strip(), encoder=HexEncoder)
        except Exception as exc:
            raise LedgerError(
                f"{path} does not hold an Ed25519 signing key: {exc}"
            ) from None
    key = SigningKey.generate()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.encode(HexEncoder))
    os.replace(tmp, path)
    return key


def _make_folder_for(path: Path) -> None:
    """Create the missing folders above a new ledger file ``path`` (absolute) and
    check that the file can be created there; say exactly what is wrong if not."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
            None,
        )
        reason = f"{blocker} is a file" if blocker else exc.strerror or str(exc)
        # OSError(errno, ...) keeps the subclass (NotADirectoryError, ...).
        raise OSError(
            exc.errno, f"cannot create folder {folder} for the ledger {path}: {reason}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot create the ledger {path}: folder {folder} is not writable"
        )


# pylint: disable=too-many-instance-attributes
class Ledger:
    """An append-only chain of aggregation blocks.

    Parameters
    ----------
    path : str | Path
        The SQLite file. Models live beside it in ``<path>.models/``; the leader's
        signing key, unless given, in ``<path>.key`` (created on first append).
        A relative path is taken against the current directory (under
        ``flwr run``, the SuperLink's); the absolute one is kept and logged.
        Missing folders above a new ledger are created.
    chain_id : str, optional
        Identifies the chain; fixed at creation (a random id if not given). Opening
        an existing ledger with another id is an error.
    signing_key : nacl.signing.SigningKey, optional
        The leader's key for signing headers.
    create : bool (default: True)
        Create the ledger if the file does not exist; with ``False`` a missing
        file is an error (what read-only tools want).
    durable : bool (default: False)
        fsync blobs and use ``synchronous=FULL``: survive power loss, not just a
        killed process (which the default already survives).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chain_id: str | None = None,
        signing_key: SigningKey | None = None,
        create: bool = True,
        durable: bool = False,
    ) -> None:
        self.path = Path(path).resolve()
        if not create and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path}")
        if self.path.is_dir():
            raise LedgerError(f"{self.path} is a directory, not a ledger file")
        existed = self.path.exists()
        if not existed:
            _make_folder_for(self.path)
        self.blobs = BlobStore(
            self.path.with_name(self.path.name + ".models"), durable=durable
        )
        self._signing_key = signing_key
        self._key_path = self.path.with_name(self.path.name + ".key")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            if not existed:
                raise OSError(f"cannot create the ledger {self.path}: {exc}") from None
            raise LedgerError(
                f"{self.path} is not a flchain ledger ({_sqlite_message(exc)})"
            ) from None
        if not tables:
            if not create:
                raise LedgerError(f"{self.path} is not a flchain ledger (empty file)")
            self.db.execute("PRAGMA journal_mode=WAL")  # persistent in the file
            self.db.execute("BEGIN IMMEDIATE")  # schema and identity: all or nothing
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.db.execute(statement)
                self._set_meta("format", LEDGER_FORMAT)
                self._set_meta("chain_id", chain_id or uuid.uuid4().hex)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        try:  # SQLite's own errors: a damaged file, text that is not UTF-8
            problem = self._not_a_ledger(tables) if tables else None
            stored = None if problem else self._meta("chain_id")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.db.close()
            raise LedgerError(
                f"cannot read the ledger {self.path}: {_sqlite_message(exc)}"
            ) from exc
        if problem is not None:
            self.db.close()
            raise LedgerError(f"{self.path} is not a flchain ledger ({problem})")
        if stored is None:
            raise LedgerError(f"{self.path} has no chain id")
        if chain_id is not None and chain_id != stored:
            raise LedgerError(f"{self.path} holds chain {stored!r}, not {chain_id!r}")
        self.chain_id: str = stored
        if create:
            log(INFO, "Ledger: %s (chain %s)", self.path, stored)

    def _not_a_ledger(self, tables: set[str]) -> str | None:
        """Why an existing database is not a flchain ledger, or ``None`` (SQLite's
        errors pass through)."""
        for table, columns in _COLUMNS.items():
            if table not in tables:
                return f"it has no {table} table"
            present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            missing = [column for column in columns if column not in present]
            if missing:
                return f"its {table} table lacks the column(s) {', '.join(missing)}"
        if self._meta("format") != LEDGER_FORMAT:
            return f"its format is not {LEDGER_FORMAT}"
        return None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn SQLite's errors while reading (a damaged file, text that is not
        UTF-8) into a ``LedgerError`` naming the file."""
        try:
            yield
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise LedgerError(
                f"cannot read the ledger {self.path}: {_sqlite_message(exc)}"
            ) from exc

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
        )

    @property
    def signing_key(self) -> SigningKey:
        """The leader's key (loaded or created beside the ledger on first use)."""
        if self._signing_key is None:
            self._signing_key = load_or_create_key(self._key_path)
        return self._signing_key

    def __len__(self) -> int:
        with self._reading():
            row = self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _row_to_block(row: tuple[Any, ...]) -> Block:
        height, digest, header, body, signature = row
        try:
            header, body = bytes(header), bytes(body)
            parsed_header, parsed_body = parse_canonical(header), parse_canonical(body)
            if not isinstance(parsed_header, dict) or not isinstance(parsed_body, dict):
                raise NotCanonical("header or body is not a JSON object")
            return Block(
                height=int(height),
                hash=str(digest),
                header_bytes=header,
                body_bytes=body,
                signature=str(signature),
                header=parsed_header,
                body=parsed_body,
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise LedgerError(
                f"block {height!r} is corrupt ({exc}); run `flchain ledger verify`"
            ) from None

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT height, hash, header, body, signature FROM blocks ORDER BY height"
        )
        # Not `yield from`: closing this generator would then close the cursor,
        # which fails (in a destructor, as a traceback) once a caller that left
        # the loop early has closed the ledger.
        for row in rows:  # noqa: UP028
            yield row

    def blocks(self) -> Iterator[Block]:
        """Every block, by height."""
        with self._reading():
            for row in self._rows():
                yield self._row_to_block(row)

    def block(self, height: int) -> Block:
        """The block at ``height``; ``LedgerError`` if there is none."""
        row = None
        if 0 <= height <= _MAX_HEIGHT:  # beyond, SQLite cannot even take the number
            with self._reading():
                row = self.db.execute(
                    "SELECT height, hash, header, body, signature FROM blocks "
                    "WHERE height = ?",
                    (height,),
                ).fetchone()
        if row is None:
            raise LedgerError(
                f"no block at height {height} (ledger has {len(self)} blocks)"
            )
        return self._row_to_block(row)

    def head(self) -> Block | None:
        """The last block, or ``None`` for an empty ledger."""
        row = self.db.execute(
            "SELECT height, hash, header, body, signature FROM blocks "
            "ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else self._row_to_block(row)

    def load_model(self, block: Block) -> dict[str, np.ndarray]:
        """The global model a block references, from the content-addressed store."""
        return self.blobs.load_model(str(block.header["model_hash"]))

    def server_state(self, block: Block) -> ServerState | None:
        """The server state ``block`` records (``None`` if it records none).

        Raises
        ------
        ValueError
            If the record is malformed or a blob it names is missing or corrupt.
        """
        if SERVER_STATE_FIELD not in block.body:
            return None
        blobs = _state_blobs(block.body)
        claims = None
        if "claims" in blobs:
            claims = _claims_from_arrays(self.blobs.load_model(blobs["claims"]))
        velocity = None
        if "velocity" in blobs:
            velocity = self.blobs.load_model(blobs["velocity"])
        momentum = block.body[SERVER_STATE_FIELD].get("momentum", {})
        return ServerState(claims, velocity, bool(momentum.get("from_zero", False)))

    def recorded_config(self, block: Block) -> dict[str, Any] | None:
        """The settings behind ``block``'s ``config_digest``, if they are recorded.

        They are in the body of the first block written with that digest (the
        genesis block, or the first after a resume with changed settings), so
        the search goes back from ``block`` while the digest stays the same.
        ``None`` for ledgers written before settings were recorded.
        """
        digest = block.header["config_digest"]
        with self._reading():
            rows = self.db.execute(
                "SELECT height, hash, header, body, signature FROM blocks "
                "WHERE height <= ? ORDER BY height DESC",
                (block.height,),
            )
            for row in rows:
                earlier = self._row_to_block(row)
                if earlier.header["config_digest"] != digest:
                    break
                config = earlier.body.get(CONFIG_FIELD)
                if isinstance(config, dict) and _digest_of(config) == digest:
                    return config
        return None

    def block_hashes(self) -> list[str]:
        """Block hashes by height: the leaves of the chain's Merkle log."""
        with self._reading():
            return [
                str(r[0])
                for r in self.db.execute("SELECT hash FROM blocks ORDER BY height")
            ]

    # ---------------------------------------------------------------- appending
    # pylint: disable=too-many-arguments,too-many-locals
    def append(
        self,
        *,
        model: Mapping[str, np.ndarray],
        model_version: int,
        base_version: int,
        config_digest: str,
        included: Sequence[Mapping[str, Any]] = (),
        rejected: Sequence[Mapping[str, Any]] = (),
        votes: Sequence[Mapping[str, Any]] = (),
        contributions: Sequence[Mapping[str, Any]] = (),
        sim_time: float = 0.0,
        wall_time: float | None = None,
        extra: Mapping[str, Any] | None = None,
        signer: BlockSigner | None = None,
        config: Mapping[str, Any] | None = None,
        server_state: ServerState | None = None,
    ) -> Block:
        """Store the model, then commit one signed block in one transaction.

        ``included`` entries need a ``digest`` (hex SHA-256 of the update as
        received, see :func:`~flchain_flwr.ledger.canonical.update_digest`); their
        digests, in order, are the leaves of the block's Merkle root. ``extra``
        adds body fields (PoV: ``pov`` in the genesis block, ``committee`` and
        ``deposits`` after it); ``signer`` signs instead of the ledger's own key
        (a PoV block's rotating leader; it is called inside the block's
        transaction, so a remote signer holds the write lock while it waits).
        ``config`` records the settings behind ``config_digest`` (it must hash
        to it); ``server_state``'s blobs are stored beside the model, before
        the block, and its record goes into the body (see the module's
        docstring).
        """
        if config is not None and _digest_of(config) != config_digest:
            raise ValueError("config does not hash to config_digest")
        model_hash = self.blobs.put_model(model)
        body = {
            **(extra or {}),
            "included": [dict(u) for u in included],
            "rejected": [dict(r) for r in rejected],
            "votes": [dict(v) for v in votes],
            "contributions": [dict(c) for c in contributions],
        }
        if config is not None:
            body[CONFIG_FIELD] = dict(config)
        if server_state is not None:
            body[SERVER_STATE_FIELD] = self._put_server_state(server_state)
        body_bytes = canonical_json(body)
        key = signer or self.signing_key
        self.db.execute("BEGIN IMMEDIATE")
        try:
            head = self.head()
            height = 0 if head is None else head.height + 1
            header = {
                "format": BLOCK_FORMAT,
                "chain_id": self.chain_id,
                "height": height,
                "prev_hash": ZERO_HASH if head is None else head.hash,
                "wall_time": time.time() if wall_time is None else wall_time,
                "sim_time": sim_time,
                "model_version": model_version,
                "base_version": base_version,
                "config_digest": config_digest,
                "model_hash": model_hash,
                "updates_root": merkle_root([str(u["digest"]) for u in included]),
                "body_hash": sha256_hex(BODY_TAG, body_bytes),
                "leader": key.verify_key.encode(HexEncoder).decode(),
            }
            header_bytes = canonical_json(header)
            block_hash = sha256_hex(HEADER_TAG, header_bytes)
            signature = key.sign(HEADER_TAG + header_bytes).signature.hex()
            if head is None:  # the publisher who opened the chain
                self._set_meta("leader_key", str(header["leader"]))
            self.db.execute(
                "INSERT INTO blocks (height, hash, header, body, signature) "
                "VALUES (?, ?, ?, ?, ?)",
                (height, block_hash, header_bytes, body_bytes, signature),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return Block(
            height, block_hash, header_bytes, body_bytes, signature, header, body
        )

    def _put_server_state(self, state: ServerState) -> dict[str, Any]:
        """Store ``state``'s blobs; return the body record naming them."""
        record: dict[str, Any] = {}
        if state.claims is not None:
            record["claims"] = self.blobs.put_model(_claims_arrays(state.claims))
        if state.velocity is not None:
            record["momentum"] = {
                "velocity": self.blobs.put_model(state.velocity),
                "from_zero": state.velocity_from_zero,
            }
        return record

    # ---------------------------------------------------------------- verifying
    def verify(
        self, *, trusted_key: str | None = None, check_models: bool = True
    ) -> VerifyReport:
        """Check every block; report the first one that fails and why.

        Checks: canonical encodings, header hash, height sequence, chain id,
        previous-hash links, body hash, Merkle root of included updates, leader
        signature (against the genesis leader, or ``trusted_key``), every vote's
        signature, that a recorded ``config`` hashes to the header's
        ``config_digest``, that a ``server_state`` record is well formed, and
        (``check_models``) that each model blob, and each server-state blob,
        hashes to its name. Blocks without the optional fields (older ledgers)
        are checked as before.
        On a PoV chain (the genesis body declares a verifier pool) every later
        block must be signed by the leader of the committee drawn from the
        previous block's hash, include updates only with a quorum of that
        committee's votes, and record the deposit changes its votes imply (see
        :mod:`flchain_flwr.ledger.consensus`).
        """
        count = 0
        try:
            leader = trusted_key or self._meta("leader_key")
            if leader is None and len(self):
                return VerifyReport(
                    False, 0, None, "the leader key is missing from the metadata"
                )
            prev_hash = ZERO_HASH
            chain = _ChainRules(leader)
            for expected_height, row in enumerate(self._rows()):
                try:
                    problem = self._check_block(
                        row, expected_height, prev_hash, chain, check_models
                    )
                except Exception as exc:  # any corruption is a finding, not a crash
                    problem = f"block cannot be checked: {exc!r}"
                if problem is not None:
                    height = row[0] if isinstance(row[0], int) else None
                    return VerifyReport(False, count, height, problem, leader or "")
                prev_hash = str(row[1])
                count += 1
        except Exception as exc:  # an unreadable database is a finding, not a crash
            return VerifyReport(False, count, None, f"database unreadable: {exc!r}")
        return VerifyReport(True, count, leader=leader or "", pov=chain.pov is not None)

    # pylint: disable=too-many-return-statements,too-many-arguments
    def _check_block(
        self,
        row: tuple[Any, ...],
        expected_height: int,
        prev_hash: str,
        chain: _ChainRules,
        check_models: bool,
    ) -> str | None:
        height, stored_hash, header_raw, body_raw, signature = row
        if not isinstance(header_raw, bytes) or not isinstance(body_raw, bytes):
            return "header or body is not stored as bytes"
        if height != expected_height:
            return (
                f"block {expected_height} is missing (next stored height is {height})"
            )
        try:
            header = parse_canonical(header_raw)
            body = parse_canonical(body_raw)
        except NotCanonical as exc:
            return f"stored header or body is corrupt: {exc}"
        if not isinstance(header, dict) or not isinstance(body, dict):
            return "header or body is not a JSON object"
        if sha256_hex(HEADER_TAG, header_raw) != stored_hash:
            return "block hash does not match the header"
        try:
            checks = [
                (
                    header["format"] == BLOCK_FORMAT,
                    f"unknown block format {header['format']!r}",
                ),
                (header["height"] == height, f"header says height {header['height']}"),
                (
                    header["chain_id"] == self.chain_id,
                    "header belongs to another chain",
                ),
                (header["prev_hash"] == prev_hash, "previous-hash link is broken"),
                (
                    header["body_hash"] == sha256_hex(BODY_TAG, body_raw),
                    "body does not match the header's body hash",
                ),
                (
                    header["updates_root"]
                    == merkle_root([str(u["digest"]) for u in body["included"]]),
                    "Merkle root of included updates does not match",
                ),
                (
                    chain.leader is None
                    or (chain.pov is not None and height > 0)
                    or header["leader"] == chain.leader,
                    "signed by an unexpected leader",
                ),
            ]
        except (KeyError, TypeError, ValueError) as exc:
            return f"header or body is missing a field: {exc!r}"
        for ok, reason in checks:
            if not ok:
                return reason
        if not _is_hex(signature, 128) or not _signature_ok(
            str(header["leader"]), HEADER_TAG + header_raw, signature
        ):
            return "leader signature is invalid"
        context = chain.vote_context(self.chain_id, height, prev_hash, body)
        for index, vote in enumerate(body.get("votes", [])):
            problem = check_vote(context, vote)
            if problem is not None:
                return f"vote {index}: {problem}"
        if CONFIG_FIELD in body and (
            not isinstance(body[CONFIG_FIELD], dict)
            or _digest_of(body[CONFIG_FIELD]) != header["config_digest"]
        ):
            return "recorded config does not hash to the header's config_digest"
        try:
            state_blobs = _state_blobs(body)
        except ValueError as exc:
            return f"malformed server_state: {exc}"
        if height == 0 and "pov" in body:
            try:
                chain.pov = PoVState(
                    PoVRules.from_json(body["pov"]),
                    votes=VoteRules.from_genesis(body["pov"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                return f"genesis declares unusable PoV rules: {exc}"
        elif chain.pov is not None:
            problem = chain.pov.check_block(prev_hash, header, body)
            if problem is not None:
                return f"PoV: {problem}"
        if check_models:
            problem = self.blobs.check(str(header["model_hash"]))
            if problem is not None:
                return problem
            for part, digest in state_blobs.items():
                problem = self.blobs.check(digest)
                if problem is not None:
                    return f"server_state {part}: {problem}"
        chain.model = str(header["model_hash"])
        return None

    # ------------------------------------------------------------------- proofs
    def find_update(self, digest: str) -> tuple[Block, int]:
        """The block including an update digest, and its index in that block."""
        for block in self.blocks():
            for index, update in enumerate(block.body["included"]):
                if update["digest"] == digest:
                    return block, index
        raise LedgerError(f"update digest {digest} is not in any block")

    def prove_update(self, digest: str) -> dict[str, Any]:
        """Proof that an update is in a block, and that the block is in the log.

        Self-contained: the block header (whose hash the checker recomputes and
        whose ``updates_root`` anchors the update proof) and an inclusion proof of
        the block hash in the Merkle log of all block hashes so far.
        """
        block, index = self.find_update(digest)
        leaves = [str(u["digest"]) for u in block.body["included"]]
        hashes = self.block_hashes()
        _check_log_leaves(hashes)
        return {
            "type": "update-in-block",
            "chain_id": self.chain_id,
            "height": block.height,
            "header": block.header_bytes.decode("utf-8"),
            "update": inclusion_proof(leaves, index),
            "block": inclusion_proof(hashes, block.height),
        }

    def prove_consistency(
        self, prior_size: int, later_size: int | None = None
    ) -> dict[str, Any]:
        """Proof that the ledger at ``prior_size`` blocks is a prefix of a later one."""
        hashes = self.block_hashes()
        later = len(hashes) if later_size is None else later_size
        _check_log_leaves(hashes[:later])
        try:
            proof = consistency_proof(hashes, prior_size, later)
        except ValueError as exc:
            raise LedgerError(str(exc)) from None
        return {"chain_id": self.chain_id, **proof}


def _check_log_leaves(hashes: Sequence[str]) -> None:
    """``LedgerError`` unless every block hash a proof is about to use is a
    SHA-256 hex digest (a damaged ledger may hold anything)."""
    for position, digest in enumerate(hashes):
        if not _is_hex(digest, 64):
            raise LedgerError(
                f"block hash {position} (counting from 0, by height) is not "
                "a SHA-256 hex digest; run `flchain ledger verify`"
            )


_VOTE_FIELDS: Final = frozenset(
    {"verifier", "candidate", "verdict", "score", "signature"}
)
_VOTE_FIELDS_V2: Final = _VOTE_FIELDS | {"format", "weight"}


def _digest_of(config: Mapping[str, Any]) -> str:
    """SHA-256 of settings in canonical JSON: what ``config_digest`` holds."""
    return sha256_hex(canonical_json(dict(config)))


def _is_hex(value: object, length: int) -> bool:
    """Lower-case hex of exactly ``length`` characters: the only stored form."""
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )


def _signature_ok(public_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        VerifyKey(public_hex.encode(), encoder=HexEncoder).verify(
            message, bytes.fromhex(signature_hex)
        )
    except (BadSignatureError, ValueError, TypeError):
        return False
    except Exception:  # malformed keys raise nacl's own errors
        return False
    return True


def check_vote(context: VoteContext, vote: Any) -> str | None:
    """Why a stored vote is not a valid signed vote in ``context``, or ``None``.

    The vote's format must be the context's: a chain whose genesis declares
    format-2 votes accepts no format-1 vote, and the reverse.
    """
    fields = _VOTE_FIELDS if context.format == 1 else _VOTE_FIELDS_V2
    if not isinstance(vote, Mapping) or set(vote) != fields:
        return f"malformed vote: fields must be exactly {sorted(fields)}"
    if context.format == 2 and vote["format"] != VOTE_FORMAT:
        return f"malformed vote: format must be {VOTE_FORMAT!r}"
    if not isinstance(vote["verdict"], bool) or not _is_hex(vote["candidate"], 64):
        return "malformed vote: verdict must be a boolean, candidate a digest"
    numbers = ("score",) if context.format == 1 else ("score", "weight")
    for name in numbers:
        value = vote[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"malformed vote: {name} must be a number"
    try:
        payload = vote_payload(
            context,
            vote["candidate"],
            vote["verdict"],
            vote["score"],
            vote.get("weight"),
        )
        ok = _signature_ok(str(vote["verifier"]), payload, str(vote["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed vote: {exc!r}"
    return None if ok else "signature is invalid"


def check_proof(proof: Mapping[str, Any]) -> str:
    """Verify a proof from :meth:`Ledger.prove_update` or
    :meth:`Ledger.prove_consistency` offline; return what it proves.

    Raises ``InvalidProof`` if it does not hold, and its subclass
    ``MalformedProof`` if it is not a well-formed proof at all (read a proof's
    JSON text with :func:`~flchain_flwr.ledger.merkle.parse_proof`).
    """
    if not isinstance(proof, Mapping):
        raise MalformedProof("a proof is a JSON object")
    kind = proof_field(proof, "type", str)
    if kind == "consistency":
        verify_proof(dict(proof), "consistency")
        return (
            f"the ledger of {proof['later_size']} blocks "
            f"(root {proof['later_root'][:16]}…) extends the ledger of "
            f"{proof['prior_size']} blocks (root {proof['prior_root'][:16]}…)"
        )
    if kind != "update-in-block":
        raise MalformedProof(f"unknown proof type {kind[:40]!r}")
    header_text = proof_field(proof, "header", str)
    update = proof_field(proof, "update", dict)
    block = proof_field(proof, "block", dict)
    try:
        header_bytes = header_text.encode("utf-8")
        header = parse_canonical(header_bytes)
    except (ValueError, RecursionError) as exc:  # ValueError: NotCanonical, encoding
        raise MalformedProof(f"the block header is not canonical JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedProof("the block header is not a JSON object")
    block_hash = sha256_hex(HEADER_TAG, header_bytes)
    try:
        if (
            header["height"] != proof["height"]
            or header["chain_id"] != proof["chain_id"]
        ):
            raise InvalidProof("header does not match the claimed height or chain")
        if update["root"] != header["updates_root"]:
            raise InvalidProof("update proof is not anchored in the block header")
        if block["leaf"] != block_hash or block["index"] != header["height"]:
            raise InvalidProof("block proof is not about this block")
    except KeyError as exc:
        raise MalformedProof(f"malformed proof: {exc!r} is missing") from None
    verify_proof(update, "inclusion")
    verify_proof(block, "inclusion")
    return (
        f"update {update['leaf'][:16]}… is in block {header['height']} "
        f"({block_hash[:16]}…), which is block {block['index']} of a "
        f"{block['size']}-block log with root {block['root'][:16]}…"
    )

"""The hash-chained ledger: blocks in SQLite, models in a content-addressed store.

One block per accepted aggregation (height 0 is the genesis block holding the
initial model). A block is stored as its canonical header and body bytes, its hash
(``sha256(HEADER_TAG + header)``) and the leader's Ed25519 signature over the same
bytes. The header's ``format`` names the encoding of both
(:func:`~flchain_flwr.ledger.canonical.encode`): ``flchain-block/2`` is RFC 8785
JSON and its header has no ``wall_time`` (the block hash seeds the next PoV
committee, so nothing free to choose may enter it; no wall time is stored);
``flchain-block/1`` (older ledgers, still read and verified) is version-1 JSON
with a ``wall_time``. Format 2 stores node ids as decimal strings (RFC 8785
numbers are doubles; Flower's node ids are 64-bit). After each block the ledger
writes a signed C2SP checkpoint of its block log (see
:mod:`flchain_flwr.ledger.checkpoint`), by default to ``<path>.checkpoint``.
The header commits to everything else: the previous block's hash, the
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
import stat
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
from flwr.app import RecordDict
from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .blobs import BlobStore
from .canonical import (
    BODY_TAG,
    HEADER_TAG,
    LATEST_FORMAT,
    VOTE_TAG,
    ZERO_HASH,
    NotCanonical,
    encode,
    encode_round_trip,
    parse_canonical,
    parse_json,
    sha256_hex,
)
from .checkpoint import (
    ORIGIN_PREFIX,
    Checkpoint,
    CheckpointError,
    CheckpointMismatch,
    LogFrontier,
    check_against_ledger,
    ledger_origin,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from .consensus import VOTE_FORMAT, PoVRules, PoVState, VoteRules, block_view
from .evidence import settled_evidence
from .merkle import (
    InvalidProof,
    MalformedProof,
    consistency_proof,
    inclusion_proof,
    merkle_root,
    proof_field,
    verify_proof,
)
from .notes import (
    NoteError,
    SignerKey,
    VerifierKey,
    parse_note,
    parse_verifier_key,
    write_file_atomically,
)
from .payload import PAYLOAD_FIELD
from .proof_quorum import check_proof_quorum, quorum_proof_part
from .quorum import (
    HeaderCosigner,
    check_signed_block,
    headers_declared,
    load_signatures,
    store_signatures,
)
from .rewards import contribution_problem

LEDGER_FORMATS: Final = {"flchain-ledger/1": 1, "flchain-ledger/2": 2}
"""The ledger file's ``format`` (in ``meta``) by encoding version."""
BLOCK_FORMATS: Final = {"flchain-block/1": 1, "flchain-block/2": 2}
"""A header's ``format``, by the encoding version of its header and body."""
_MAX_HEIGHT: Final = 2**63 - 1
"""SQLite's largest integer: no block can be higher."""
COMMITTEE_KIND_FIELD: Final = "committee_kind"
"""Genesis body field: ``"in-process"`` when the server process holds every
verifier key (a simulation), ``"remote"`` when none, ``"mixed"`` otherwise."""
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


class CheckpointNotWritten(LedgerError):
    """A block IS committed, but the checkpoint after it could not be written."""


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
    quorum: list[dict[str, Any]] | None = field(default=None, compare=False)
    """The committee's header signatures, when this block was read with them
    (see :meth:`Ledger.header_signatures`)."""

    @property
    def format_version(self) -> int:
        """The encoding version of the header and body (see :func:`encode`)."""
        return BLOCK_FORMATS[str(self.header["format"])]


def _parse_block(header_raw: bytes, body_raw: bytes) -> tuple[Any, Any]:
    """A stored header and body, parsed in the encoding the header's ``format``
    names; :class:`NotCanonical` if either is not in exactly that encoding."""
    loose = parse_json(header_raw)
    name = loose.get("format") if isinstance(loose, dict) else None
    version = BLOCK_FORMATS.get(name) if isinstance(name, str) else None
    if version is None:
        raise NotCanonical(f"unknown block format {str(name)[:40]!r}")
    return parse_canonical(header_raw, version), parse_canonical(body_raw, version)


def ids_as_text(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Body entries with an integer ``node_id`` as a decimal string (format 2:
    a 64-bit Flower node id has no exact RFC 8785 number)."""
    out = []
    for entry in entries:
        entry = dict(entry)
        node_id = entry.get("node_id")
        if isinstance(node_id, int | np.integer) and not isinstance(node_id, bool):
            entry["node_id"] = str(int(node_id))
        out.append(entry)
    return out


def node_key(node_id: Any) -> int | None:
    """A body's ``node_id`` (an integer, or format 2's decimal string) as an
    int; ``None`` if it is neither."""
    if isinstance(node_id, bool):
        return None
    if isinstance(node_id, int):
        return node_id
    if (
        isinstance(node_id, str)
        and 0 < len(node_id) <= 20
        and node_id.isascii()
        and node_id.isdigit()
        and str(int(node_id)) == node_id
    ):
        return int(node_id)
    return None


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
    format: str | None = None
    """The genesis block's format: every block must have it."""
    committee_kind: str | None = None
    model: str = ""
    """The previous block's model hash: the parent a vote was judged against."""
    replayed: int = 0
    """Quorum-signed blocks whose signers' quorum replayed the model."""
    evidence: list[str] = field(default_factory=list)
    """What the equivocation evidence in the chain says, by block."""

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


_COMMITTEES: Final = {
    "in-process": "PoV committees whose every key the server process held "
    "(an in-process simulation: the votes show what that one process decided, "
    "not that independent verifiers agreed)",
    "mixed": "PoV committees some of whose keys the server process held",
    "remote": "their PoV committees (the genesis block records remote verifiers)",
}


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
    head: str = ""
    """The last verified block's hash."""
    anchor: str = ""
    """What outside the ledger the chain was checked against ("" = nothing)."""
    committee_kind: str | None = None
    """A PoV genesis block's ``committee_kind`` (``None``: not recorded)."""
    headers: str = ""
    """How a PoV chain's headers were signed ("": not a PoV chain)."""
    equivocations: tuple[str, ...] = ()
    """Equivocation evidence the chain's blocks carry (each settled)."""

    def __str__(self) -> str:
        if not self.ok:
            where = "ledger" if self.bad_height is None else f"block {self.bad_height}"
            return f"FAILED at {where}: {self.reason}"
        if self.pov:
            committees = _COMMITTEES.get(
                str(self.committee_kind),
                "their PoV committees (the ledger does not record whether one "
                "process held their keys)",
            )
            line = (
                f"ok: {self.blocks} blocks verified, genesis signed by "
                f"{self.leader}, later blocks by {committees}"
            )
        else:
            signed = (
                f", signed by leader {self.leader}"
                if self.leader and self.blocks
                else ""
            )
            line = f"ok: {self.blocks} blocks verified{signed}"
        if self.pov and self.headers:
            line += f"\nheaders: {self.headers}"
        for finding in self.equivocations:
            line += f"\nequivocation: {finding}"
        head = f"head: block {self.blocks - 1}, hash {self.head}" if self.blocks else ""
        anchor = self.anchor or (
            "self-consistent; no trusted anchor given (anyone can write a ledger "
            "that passes these checks: give --trusted-key or --checkpoint)"
        )
        return "\n".join(filter(None, (line, head, f"anchor: {anchor}")))


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
    """The bytes a verifier signs for one vote (``weight``: format 2 only).

    A format-1 vote is signed over the format-1 encoding (what ledgers of
    format 1 hold); a format-2 vote over RFC 8785 (:func:`encode`, version 2).
    """
    if context.format == 1:
        return VOTE_TAG + encode_round_trip(
            1,
            {
                "chain_id": context.chain_id,
                "height": context.height,
                "candidate": candidate,
                "verdict": verdict,
                "score": score,
            },
        )
    return _VOTE_TAG_V2 + encode_round_trip(
        2,
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
        },
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
    """The Ed25519 key at ``path`` (hex seed), created if it does not exist:
    mode 0600, fsynced with its folder, never over an existing file."""
    if not path.exists():
        key = SigningKey.generate()
        try:
            write_file_atomically(
                path, key.encode(HexEncoder), mode=0o600, overwrite=False
            )
            return key
        except FileExistsError:  # another process created it first: use theirs
            pass
    try:
        key = SigningKey(path.read_bytes().strip(), encoder=HexEncoder)
    except Exception as exc:
        raise LedgerError(
            f"{path} does not hold an Ed25519 signing key: {exc}"
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log(
            WARNING,
            "Signing key %s has mode %s: group or others can read or change it "
            "(chmod 600 it)",
            path,
            oct(mode),
        )
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
        signing key, unless given, in ``key_path`` (created on first append).
        A relative path is taken against the current directory (under
        ``flwr run``, the SuperLink's); the absolute one is kept and logged.
        Missing folders above a new ledger are created.
    chain_id : str, optional
        Identifies the chain; fixed at creation (a random id if not given). Opening
        an existing ledger with another id is an error. A new ledger's id must
        be usable in a checkpoint's origin (no spaces, '+' or control
        characters).
    signing_key : nacl.signing.SigningKey, optional
        The leader's key for signing headers and checkpoints.
    key_path : str | Path, optional
        Where the signing key lives when not given (default ``<path>.key``,
        beside the ledger: fine for a simulation; in deployment keep it
        elsewhere, see docs/deployment.md).
    checkpoint_path : str | Path, optional
        Where each append writes the signed checkpoint of the block log
        (default ``<path>.checkpoint``).
    format_version : int (default: LATEST_FORMAT)
        The encoding of a new ledger's blocks (an existing ledger keeps its own).
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
        key_path: str | Path | None = None,
        checkpoint_path: str | Path | None = None,
        format_version: int = LATEST_FORMAT,
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
        self._key_path = (
            Path(key_path) if key_path else self.path.with_name(self.path.name + ".key")
        )
        self.checkpoint_path = Path(
            checkpoint_path or self.path.with_name(self.path.name + ".checkpoint")
        ).resolve()
        self.durable = durable
        self._frontier: LogFrontier | None = None
        if f"flchain-ledger/{format_version}" not in LEDGER_FORMATS:
            raise ValueError(f"unknown ledger format version {format_version!r}")
        if not existed and chain_id is not None:
            try:
                ledger_origin(chain_id)
            except CheckpointError as exc:
                raise LedgerError(str(exc)) from None
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
                self._set_meta("format", f"flchain-ledger/{format_version}")
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
        self.format_version = LEDGER_FORMATS[str(self._meta("format"))]
        """The encoding version of the blocks this ledger writes: the genesis
        block's (the metadata must agree with it)."""
        genesis = self._genesis_format()
        if genesis is not None and genesis != self.format_version:
            self.db.close()
            raise LedgerError(
                f"{self.path}: its metadata says flchain-ledger/{self.format_version}"
                f" but its genesis block is flchain-block/{genesis}: the metadata "
                "was changed (a format downgrade?); refusing to open it"
            )
        self._pool: frozenset[str] | None = None
        """A PoV chain's verifier pool, once the genesis block was checked."""
        self._genesis_checked = False
        self._last_signed: Checkpoint | None = None
        """The last checkpoint this process signed."""
        self._frontier_head = ""
        """The block hash the log frontier ends with."""
        if create:
            try:
                self._check_checkpoint_location()
            except LedgerError:
                self.db.close()
                raise
            log(INFO, "Ledger: %s (chain %s)", self.path, stored)

    def _genesis_format(self) -> int | None:
        """The encoding version the genesis header names (``None``: no genesis
        block, or one too damaged to say; ``verify`` reports that)."""
        try:
            row = self.db.execute(
                "SELECT header FROM blocks WHERE height = 0"
            ).fetchone()
            loose = None if row is None else parse_json(bytes(row[0]))
        except (sqlite3.Error, UnicodeDecodeError, TypeError, NotCanonical):
            return None
        name = loose.get("format") if isinstance(loose, dict) else None
        return BLOCK_FORMATS.get(name) if isinstance(name, str) else None

    def _check_checkpoint_location(self) -> None:
        """``LedgerError`` unless a checkpoint can be written at
        ``checkpoint_path`` (its folder is created if missing): checked before
        a block is committed, so that writing it afterwards does not fail."""
        path = self.checkpoint_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the folder of the checkpoint {path}: "
                f"{exc.strerror or exc}"
            ) from None
        if path.is_dir():
            raise LedgerError(f"the checkpoint path {path} is a directory")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise LedgerError(
                f"cannot write the checkpoint {path}: folder {path.parent} is "
                "not writable"
            )

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
        if self._meta("format") not in LEDGER_FORMATS:
            return f"its format is not one of {', '.join(LEDGER_FORMATS)}"
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
        """The leader's key (loaded or created at ``key_path`` on first use)."""
        if self._signing_key is None:
            self._signing_key = load_or_create_key(self._key_path)
        return self._signing_key

    def config_digest(self, config: Mapping[str, Any]) -> str:
        """The ``config_digest`` of ``config`` in this ledger's blocks: SHA-256 of
        its canonical JSON in the ledger's encoding."""
        return _digest_of(config, self.format_version)

    @property
    def origin(self) -> str:
        """The checkpoint origin, and the checkpoint key's name:
        ``flchain-flwr/<chain id>``."""
        return ledger_origin(self.chain_id)

    def _checkpoint_origin(self) -> str | None:
        """:attr:`origin`, or ``None`` (a WARNING) for a ledger made before
        checkpoints whose chain id cannot be an origin: it gets none."""
        try:
            return self.origin
        except CheckpointError as exc:
            log(WARNING, "Ledger %s: no checkpoint written: %s", self.path, exc)
            return None

    def _signed_before(self, origin: str) -> Checkpoint | None:
        """The last checkpoint of this log the ledger's key signed: the one this
        process signed, else the one at ``checkpoint_path`` if it verifies
        under the ledger's key (``None`` if neither: nothing to be consistent
        with)."""
        if self._last_signed is not None:
            return self._last_signed
        try:
            note = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerError(
                f"cannot read the checkpoint {self.checkpoint_path}: "
                f"{exc.strerror or exc}"
            ) from None
        own = VerifierKey(origin, bytes(self.signing_key.verify_key))
        try:
            found, _ = open_checkpoint(note, [own])
        except (NoteError, CheckpointError) as exc:
            log(
                WARNING,
                "Ledger %s: the checkpoint %s is not one this ledger's key signed "
                "(%s); it will be replaced",
                self.path,
                self.checkpoint_path,
                exc,
            )
            return None
        return found

    def _log_up_to(self, head: Block | None, origin: str) -> LogFrontier:
        """The Merkle log of the blocks up to ``head``, checked to extend the
        last checkpoint the ledger's key signed (so that the key never signs
        two checkpoints that contradict each other).

        Raises
        ------
        LedgerError
            If the blocks no longer hold that checkpoint's log (blocks were
            removed or rewritten since it was signed).
        """
        frontier = self._frontier
        if (
            frontier is not None
            and head is not None
            and frontier.size == head.height + 1
            and self._frontier_head == head.hash
        ):
            return frontier  # what this process signed, extended block by block
        hashes = [] if head is None else self.block_hashes()
        signed = self._signed_before(origin)
        if signed is not None:
            try:
                check_against_ledger(signed, origin, hashes)
            except CheckpointMismatch as exc:
                raise LedgerError(
                    f"refusing to sign a checkpoint of {self.path}: it would "
                    f"contradict the size-{signed.size} checkpoint this key "
                    f"signed before ({exc}); restore the ledger"
                ) from None
        return LogFrontier(hashes)

    def _write_checkpoint(self, block: Block, frontier: LogFrontier) -> None:
        """Add the block just committed to the log, sign a checkpoint of it with
        the ledger's key and put it at ``checkpoint_path`` atomically (fsynced
        if ``durable``).

        Raises
        ------
        CheckpointNotWritten
            If the file cannot be written (the block is committed).
        """
        origin = self.origin
        frontier.append(block.hash)
        self._frontier, self._frontier_head = frontier, block.hash
        checkpoint = Checkpoint(origin, frontier.size, frontier.root())
        note = sign_checkpoint(checkpoint, [SignerKey(origin, self.signing_key)])
        self._last_signed = checkpoint
        try:
            write_checkpoint(self.checkpoint_path, note, durable=self.durable)
        except OSError as exc:
            raise CheckpointNotWritten(
                f"block {block.height} IS committed, but its checkpoint could not "
                f"be written to {self.checkpoint_path}: {exc.strerror or exc} "
                "(the next append writes one)"
            ) from None

    def _check_head(self, head: Block, key: BlockSigner) -> None:
        """``LedgerError`` unless ``head``, the block about to be extended, is
        intact and signed by whom it must be: the ledger's key (or this
        append's signer) outside PoV and for the genesis block, a member of the
        verifier pool on a PoV chain. Only the head is checked (cheap): a
        block below it that was changed fails the checkpoint instead."""
        own = {
            self.signing_key.verify_key.encode(HexEncoder).decode(),
            key.verify_key.encode(HexEncoder).decode(),
        }
        header = head.header
        problem = None
        if sha256_hex(HEADER_TAG, head.header_bytes) != head.hash:
            problem = "its hash does not match its header"
        elif header.get("height") != head.height:
            problem = f"its header says height {header.get('height')!r}"
        elif header.get("chain_id") != self.chain_id:
            problem = "its header belongs to another chain"
        elif header.get("format") != f"flchain-block/{self.format_version}":
            problem = f"its format is {str(header.get('format'))[:40]!r}"
        elif not _is_hex(head.signature, 128) or not _signature_ok(
            str(header.get("leader")), HEADER_TAG + head.header_bytes, head.signature
        ):
            problem = "its signature is invalid"
        else:
            pool = None if head.height == 0 else self._verifier_pool(own)
            allowed = own if pool is None else pool
            if header.get("leader") not in allowed:
                problem = f"it is signed by {str(header.get('leader'))[:64]}, " + (
                    "not a member of the verifier pool"
                    if pool is not None
                    else "not by this ledger's key"
                )
        if problem is not None:
            raise LedgerError(
                f"refusing to extend block {head.height} of {self.path}: "
                f"{problem}; run `flchain ledger verify` on it"
            )

    def _verifier_pool(self, own: set[str]) -> frozenset[str] | None:
        """A PoV chain's verifier pool (``None`` outside PoV), from the genesis
        block, which must be intact and signed by the ledger's key (checked
        once per process)."""
        if not self._genesis_checked:
            genesis = self.block(0)
            if sha256_hex(
                HEADER_TAG, genesis.header_bytes
            ) != genesis.hash or not _signature_ok(
                str(genesis.header.get("leader")),
                HEADER_TAG + genesis.header_bytes,
                genesis.signature,
            ):
                raise LedgerError(
                    f"refusing to extend {self.path}: its genesis block is not "
                    "intact; run `flchain ledger verify` on it"
                )
            if genesis.header.get("leader") not in own:
                raise LedgerError(
                    f"refusing to extend {self.path}: its genesis block is not "
                    "signed by this ledger's key"
                )
            if "pov" in genesis.body:
                try:
                    pool = PoVRules.from_json(genesis.body["pov"]).pool
                except (KeyError, TypeError, ValueError) as exc:
                    raise LedgerError(
                        f"{self.path}: its genesis declares unusable PoV rules: {exc}"
                    ) from None
                self._pool = frozenset(pool)
            self._genesis_checked = True
        return self._pool

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
            parsed_header, parsed_body = _parse_block(header, body)
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
                if (
                    isinstance(config, dict)
                    and _digest_of(config, earlier.format_version) == digest
                ):
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
        payloads: Sequence[RecordDict] | None = None,
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
        docstring). ``wall_time`` goes only into format-1 headers. ``payloads``,
        one per included entry, are the replies as received: each is stored
        beside the model and its blob's hash becomes the entry's ``payload``
        (what ``verify --replay`` replays). After the block is committed, a
        signed checkpoint of the log is written to ``checkpoint_path``.

        Raises
        ------
        ValueError
            If a value has no encoding that reads back (nothing is committed).
        LedgerError
            Before committing anything, if the head block is not intact or not
            signed by whom it must be, if the blocks no longer hold the last
            checkpoint the ledger's key signed, or if no checkpoint can be
            written at ``checkpoint_path``.
        CheckpointNotWritten
            If the block is committed but writing its checkpoint failed.
        """
        if config is not None and self.config_digest(config) != config_digest:
            raise ValueError("config does not hash to config_digest")
        if payloads is not None and len(payloads) != len(included):
            raise ValueError(f"{len(payloads)} payloads for {len(included)} updates")
        origin = self._checkpoint_origin()
        if origin is not None:
            self._check_checkpoint_location()
        model_hash = self.blobs.put_model(model)
        version = self.format_version
        entries = ids_as_text if version >= 2 else (lambda e: [dict(x) for x in e])
        included_entries = entries(included)
        for entry, content in zip(included_entries, payloads or (), strict=False):
            node_id = int(entry["node_id"])
            entry[PAYLOAD_FIELD] = self.blobs.put_update(node_id, content)
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
            body[SERVER_STATE_FIELD] = self._put_server_state(server_state)
        body_bytes = encode_round_trip(version, body)
        key = signer or self.signing_key
        self.db.execute("BEGIN IMMEDIATE")
        try:
            head = self.head()
            if head is not None:
                self._check_head(head, key)
            log_before = None if origin is None else self._log_up_to(head, origin)
            height = 0 if head is None else head.height + 1
            header = {
                "format": f"flchain-block/{version}",
                "chain_id": self.chain_id,
                "height": height,
                "prev_hash": ZERO_HASH if head is None else head.hash,
                "sim_time": sim_time,
                "model_version": model_version,
                "base_version": base_version,
                "config_digest": config_digest,
                "model_hash": model_hash,
                "updates_root": merkle_root([str(u["digest"]) for u in included]),
                "body_hash": sha256_hex(BODY_TAG, body_bytes),
                "leader": key.verify_key.encode(HexEncoder).decode(),
            }
            if version == 1:
                header["wall_time"] = time.time() if wall_time is None else wall_time
            header_bytes = encode_round_trip(version, header)
            block_hash = sha256_hex(HEADER_TAG, header_bytes)
            signature = key.sign(HEADER_TAG + header_bytes).signature.hex()
            quorum = None
            if isinstance(key, HeaderCosigner):  # the committee signs it too
                pending = Block(
                    height,
                    block_hash,
                    header_bytes,
                    body_bytes,
                    signature,
                    header,
                    body,
                )
                quorum = key.cosign(self, pending)
                store_signatures(self.db, height, quorum)
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
        block = Block(
            height,
            block_hash,
            header_bytes,
            body_bytes,
            signature,
            header,
            body,
            quorum,
        )
        if log_before is not None:
            self._write_checkpoint(block, log_before)
        return block

    def header_signatures(self, height: int) -> list[Any] | None:
        """The committee's signatures over block ``height``'s header (``None``
        if none are stored: not a quorum-signed chain, or stripped)."""
        with self._reading():
            try:
                return load_signatures(self.db, height)
            except ValueError as exc:
                raise LedgerError(
                    f"block {height}'s header signatures are corrupt ({exc})"
                ) from None

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
    def trusted_verifier(self, key: str) -> VerifierKey:
        """A trusted key given as text: a signed-note vkey, or the hex Ed25519
        public key of the ledger's signer (named after :attr:`origin`).

        Raises
        ------
        LedgerError
            If ``key`` is neither.
        """
        return parse_trusted_key(key, self.origin)

    def verify(
        self,
        *,
        trusted_key: str | None = None,
        checkpoint: str | Path | None = None,
        check_models: bool = True,
    ) -> VerifyReport:
        """Check every block; report the first one that fails and why.

        Checks: canonical encodings, header hash, height sequence, chain id,
        previous-hash links, body hash, Merkle root of included updates, leader
        signature (against the genesis leader, or ``trusted_key``), every vote's
        signature, that no update digest is included twice and contributions
        credit only included nodes, that a recorded ``config`` hashes to the
        header's ``config_digest``, that a ``server_state`` record is well
        formed, and (``check_models``) that each model blob, each server-state
        blob and each stored update payload hashes to its name. Blocks without
        the optional fields (older ledgers) are checked as before;
        :func:`~flchain_flwr.ledger.replay.replay` recomputes the models.

        Without ``trusted_key`` or ``checkpoint`` this proves only that the
        ledger is self-consistent. ``trusted_key`` (hex Ed25519 key or vkey,
        see :meth:`trusted_verifier`) must have signed the genesis block (and,
        outside PoV, every block) and the checkpoint used. ``checkpoint`` (a
        signed checkpoint file held outside the ledger; with ``trusted_key``,
        the one at ``checkpoint_path`` if none is given) must be signed by the
        trusted key (else by the genesis leader: then the file itself is the
        anchor) and the ledger's first ``size`` blocks must have its root.
        On a PoV chain (the genesis body declares a verifier pool) every later
        block must be signed by the leader of the committee drawn from the
        previous block's hash, include updates only with a quorum of that
        committee's votes, and record the deposit changes its votes imply (see
        :mod:`flchain_flwr.ledger.consensus`).
        """
        count = 0
        try:
            origin: str | None = self.origin
        except CheckpointError:  # a format-1 ledger made before checkpoints
            origin = None
        anchor_key = None
        if trusted_key is not None:
            anchor_key = parse_trusted_key(trusted_key, origin or ORIGIN_PREFIX + "-")
        beside = False
        if checkpoint is None and anchor_key and self.checkpoint_path.is_file():
            checkpoint, beside = self.checkpoint_path, True
        try:
            leader = (
                anchor_key.public_key.hex()
                if anchor_key is not None
                else self._meta("leader_key")
            )
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
            hashes = self.block_hashes() if checkpoint is not None else []
        except Exception as exc:  # an unreadable database is a finding, not a crash
            return VerifyReport(False, count, None, f"database unreadable: {exc!r}")
        anchor = ""
        if anchor_key is not None and origin is None:
            anchor = f"trusted key {leader} signed the genesis block" + (
                "" if chain.pov is not None else " and every block"
            )
        elif anchor_key is not None:
            anchor = f"trusted key {anchor_key.encode()} signed the genesis block"
            anchor += "" if chain.pov is not None else " and every block"
        if anchor_key is not None and count == 0:
            anchor = (
                f"trusted key {leader} given, but the ledger has no blocks: it "
                "signed nothing here"
            )
        if checkpoint is not None and origin is None:
            return VerifyReport(
                False,
                count,
                None,
                f"checkpoint {checkpoint}: this ledger's chain id "
                f"{self.chain_id!r} cannot be a checkpoint origin (a format-1 "
                "ledger made before checkpoints), so no checkpoint is of it",
                leader or "",
            )
        if checkpoint is not None:
            try:
                signer = anchor_key or VerifierKey(
                    self.origin, bytes.fromhex(leader or "")
                )
            except ValueError:
                return VerifyReport(
                    False, count, None, "no key to check the checkpoint's signature"
                )
            try:
                size = self._check_checkpoint(Path(checkpoint), signer, hashes)
            except CheckpointMismatch as exc:
                return VerifyReport(
                    False, count, None, f"checkpoint {checkpoint}: {exc}"
                )
            trust = (
                "the trusted key"
                if anchor_key is not None
                else "the genesis leader (the file itself is the anchor)"
            )
            if beside:
                trust += (
                    " (the one beside the ledger, among the ledger's own files: "
                    "an older genuine checkpoint put back with the ledger cut "
                    "short to match would pass, so this cannot detect a "
                    "rollback; keep a checkpoint apart and give --checkpoint)"
                )
            anchor = "; ".join(
                filter(
                    None,
                    (
                        anchor,
                        f"checkpoint {checkpoint} signed by {trust} covers the "
                        f"first {size} of the {count} blocks",
                    ),
                )
            )
        elif anchor_key is not None and origin is None:
            anchor += (
                f"; no checkpoint exists for this ledger (its chain id "
                f"{self.chain_id!r} cannot be a checkpoint origin), so a ledger "
                "cut short would not be noticed"
            )
        elif anchor_key is not None:
            anchor += "; no checkpoint, so a ledger cut short would not be noticed"
        return VerifyReport(
            True,
            count,
            leader=leader or "",
            pov=chain.pov is not None,
            head=prev_hash if count else "",
            anchor=anchor,
            committee_kind=chain.committee_kind,
            headers=_headers_line(chain, count),
            equivocations=tuple(chain.evidence),
        )

    def _check_checkpoint(
        self, path: Path, signer: VerifierKey, hashes: Sequence[str]
    ) -> int:
        """Check the signed checkpoint at ``path`` against ``signer`` and the
        ledger's block hashes; its size, or ``CheckpointMismatch`` saying why not."""
        try:
            note = path.read_bytes()
        except OSError as exc:
            raise CheckpointMismatch(f"cannot be read: {exc.strerror or exc}") from None
        try:
            found, _ = open_checkpoint(note, [signer])
        except NoteError as exc:
            raise CheckpointMismatch(
                f"not signed by {signer.encode()}: {exc}"
            ) from None
        except CheckpointError as exc:
            raise CheckpointMismatch(f"not a checkpoint: {exc}") from None
        check_against_ledger(found, self.origin, hashes)
        return found.size

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
            header, body = _parse_block(header_raw, body_raw)
        except NotCanonical as exc:
            return f"stored header or body is corrupt: {exc}"
        if not isinstance(header, dict) or not isinstance(body, dict):
            return "header or body is not a JSON object"
        if sha256_hex(HEADER_TAG, header_raw) != stored_hash:
            return "block hash does not match the header"
        if height == 0:
            chain.format = header["format"]
        try:
            checks = [
                (
                    header["format"] == chain.format,
                    f"block format {header['format']!r} is not the genesis "
                    f"block's {chain.format!r}",
                ),
                (
                    header["format"] == "flchain-block/1" or "wall_time" not in header,
                    "a format-2 header must not hold a wall_time",
                ),
                (header["height"] == height, f"header says height {header['height']}"),
                (
                    header["chain_id"] == self.chain_id,
                    "header belongs to another chain",
                ),
                (header["prev_hash"] == prev_hash, "previous-hash link is broken"),
                (
                    _is_hex(header["model_hash"], 64),
                    "model_hash is not lower-case SHA-256 hex",
                ),
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
        problem = _check_entries(body)
        if problem is not None:
            return problem
        context = chain.vote_context(self.chain_id, height, prev_hash, body)
        for index, vote in enumerate(body.get("votes", [])):
            problem = check_vote(context, vote)
            if problem is not None:
                return f"vote {index}: {problem}"
        if CONFIG_FIELD in body and (
            not isinstance(body[CONFIG_FIELD], dict)
            or _digest_of(body[CONFIG_FIELD], BLOCK_FORMATS[header["format"]])
            != header["config_digest"]
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
            kind = body.get(COMMITTEE_KIND_FIELD)
            chain.committee_kind = kind if kind in _COMMITTEES else None
            try:
                chain.pov.signed_headers = headers_declared(body["pov"])
            except ValueError as exc:
                return f"genesis declares unusable PoV rules: {exc}"
        elif chain.pov is not None:
            if chain.pov.signed_headers:
                problem = self._check_quorum(
                    chain, height, prev_hash, stored_hash, body
                )
                if problem is not None:
                    return problem
            problem = chain.pov.check_block(prev_hash, header, body)
            if problem is not None:
                return f"PoV: {problem}"
            chain.evidence += settled_evidence(height, body)
        if check_models:
            problem = self.blobs.check(str(header["model_hash"]))
            if problem is not None:
                return problem
            for part, digest in state_blobs.items():
                problem = self.blobs.check(digest)
                if problem is not None:
                    return f"server_state {part}: {problem}"
            for index, entry in enumerate(body["included"]):
                if isinstance(entry, dict) and PAYLOAD_FIELD in entry:
                    payload = entry[PAYLOAD_FIELD]
                    problem = (
                        self.blobs.check(payload, "update payload")
                        if _is_hex(payload, 64)
                        else "payload is not a SHA-256 hex digest"
                    )
                    if problem is not None:
                        return f"included update {index}: {problem}"
        chain.model = str(header["model_hash"])
        return None

    # pylint: disable=too-many-arguments
    def _check_quorum(
        self,
        chain: _ChainRules,
        height: int,
        prev_hash: str,
        block_hash: str,
        body: Mapping[str, Any],
    ) -> str | None:
        """A quorum-signed chain's block: its view changes and header
        signatures, against the committee the genesis pool draws."""
        assert chain.pov is not None
        view = block_view(body)
        committee = chain.pov.committee(prev_hash, view or 0)
        problem, replayed = check_signed_block(
            committee,
            self.chain_id,
            height,
            prev_hash,
            block_hash,
            body,
            self.header_signatures(height),
        )
        if problem is not None:
            return f"PoV: {problem}"
        chain.replayed += replayed
        return None

    # ------------------------------------------------------------------- proofs
    def find_update(self, digest: str) -> tuple[Block, int]:
        """The block including an update digest, and its index in that block."""
        for block in self.blocks():
            for index, update in enumerate(block.body["included"]):
                if update["digest"] == digest:
                    return block, index
        raise LedgerError(f"update digest {digest} is not in any block")

    def prove_update(self, digest: str, size: int | None = None) -> dict[str, Any]:
        """Proof that an update is in a block, and that the block is in the log.

        Self-contained: the block header (whose hash the checker recomputes and
        whose ``updates_root`` anchors the update proof) and its signature, an
        inclusion proof of the block hash in the Merkle log of the block
        hashes, and the signed checkpoint of that log (the one at
        ``checkpoint_path``, when it covers the block; the log is then of its
        size, else of every block and there is no checkpoint). ``size`` asks
        for the log of the first ``size`` blocks instead (to check against a
        checkpoint of that size one holds; the stored one is included if it
        has that size).
        """
        block, index = self.find_update(digest)
        leaves = [str(u["digest"]) for u in block.body["included"]]
        hashes = self.block_hashes()
        note, stored = self._stored_checkpoint(len(hashes))
        if size is not None and not block.height < size <= len(hashes):
            raise LedgerError(
                f"block {block.height} is not in the first {size} blocks "
                f"(the ledger has {len(hashes)})"
            )
        if size is None:
            size = stored if stored > block.height else len(hashes)
        if stored != size:
            note = None
        _check_log_leaves(hashes[:size])
        proof = {
            "type": "update-in-block",
            "chain_id": self.chain_id,
            "height": block.height,
            "header": block.header_bytes.decode("utf-8"),
            "signature": block.signature,
            "update": inclusion_proof(leaves, index),
            "block": inclusion_proof(hashes[:size], block.height),
            **quorum_proof_part(self, block, hashes[:size]),
        }
        return proof if note is None else {**proof, "checkpoint": note}

    def _stored_checkpoint(self, blocks: int) -> tuple[str | None, int]:
        """The note text and size of the checkpoint at ``checkpoint_path`` if it
        is a checkpoint of at most ``blocks`` blocks, else ``(None, 0)`` (its
        signature and root are for the proof's checker to check)."""
        try:
            text = self.checkpoint_path.read_text(encoding="utf-8")
            found = parse_checkpoint(parse_note(text).text)
        except (OSError, ValueError):  # missing, unreadable, not a checkpoint
            return None, 0
        return (text, found.size) if found.size <= blocks else (None, 0)

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
        note, size = self._stored_checkpoint(len(hashes))
        if note is not None and size == later:
            return {"chain_id": self.chain_id, **proof, "checkpoint": note}
        return {"chain_id": self.chain_id, **proof}


def _headers_line(chain: _ChainRules, count: int) -> str:
    """How a PoV chain's headers were signed, for :class:`VerifyReport`."""
    if chain.pov is None:
        return ""
    if not chain.pov.signed_headers:
        return (
            "signed by each block's leader alone (the genesis declares no "
            "quorum-signed headers), so its model "
            "hashes, included sets and contributions rest on one key per block"
        )
    later = max(0, count - 1)
    return (
        f"all {later} blocks after the genesis block signed by more than 2/3 "
        f"of their committee (checked against the genesis pool keys); in "
        f"{chain.replayed} of them a quorum of signers recomputed the model by "
        "replay, in the rest they checked continuity, the votes and the "
        "included set only"
    )


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


def _check_entries(body: Mapping[str, Any]) -> str | None:
    """Why a body's included set, rejections or contributions are inconsistent,
    or ``None``: a digest that is not lower-case SHA-256 hex, an update digest
    included twice, or contributions :func:`contribution_problem` refuses."""
    seen: set[str] = set()
    for update in body["included"]:
        digest = update["digest"]
        if not _is_hex(digest, 64):
            return f"included digest {str(digest)[:70]!r} is not lower-case SHA-256 hex"
        if digest in seen:
            return f"update {digest} is included twice"
        seen.add(digest)
    for entry in body["rejected"]:
        if "digest" in entry and not _is_hex(entry["digest"], 64):
            return (
                f"rejected digest {str(entry['digest'])[:70]!r} is not lower-case "
                "SHA-256 hex"
            )
    included = {node_key(u.get("node_id")) for u in body["included"]}
    for contribution in body["contributions"]:
        node = node_key(contribution.get("node_id"))
        if node is None or node not in included:
            return (
                f"a contribution credits node {contribution.get('node_id')!r}, "
                "which is not in the block's included set"
            )
    problem = contribution_problem(body)
    return None if problem is None else f"contributions: {problem}"


def _digest_of(config: Mapping[str, Any], version: int) -> str:
    """SHA-256 of settings in canonical JSON of encoding ``version``: what a
    block of that format holds as its ``config_digest``."""
    return sha256_hex(encode(version, dict(config)))


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


def parse_trusted_key(text: str, origin: str) -> VerifierKey:
    """A trusted key given as text: a signed-note vkey, or the hex Ed25519 public
    key of a ledger's signer (then named ``origin``, the checkpoint key's name).

    Raises
    ------
    LedgerError
        If ``text`` is neither.
    """
    key = text.strip()
    try:
        if len(key) == 64 and all(c in "0123456789abcdefABCDEF" for c in key):
            return VerifierKey(origin, bytes.fromhex(key))
        return parse_verifier_key(key)
    except NoteError as exc:
        raise LedgerError(
            f"invalid trusted key {key[:70]!r}: not a vkey nor 64 hex digits ({exc})"
        ) from None


@dataclass(frozen=True)
class _ProofAnchor:
    """What a proof is checked against: its chain, and the trust given."""

    chain_id: str
    origin: str
    key: VerifierKey | None
    checkpoint: bytes | None
    chain_fixed_by: str
    """What says the proof is about this chain (for the statement)."""

    @classmethod
    def of(
        cls,
        proof: Mapping[str, Any],
        trusted_key: str | None,
        checkpoint: bytes | None,
        chain_id: str | None,
    ) -> _ProofAnchor:
        """The anchor of ``proof``; ``InvalidProof`` if it is about a chain
        other than ``chain_id`` or the trusted vkey's."""
        proof_chain = proof_field(proof, "chain_id", str)
        try:
            origin = ledger_origin(proof_chain)
        except CheckpointError as exc:
            raise MalformedProof(str(exc)) from None
        if chain_id is not None and proof_chain != chain_id:
            raise InvalidProof(
                f"the proof is about chain {proof_chain!r}, not {chain_id!r}"
            )
        key = None if trusted_key is None else parse_trusted_key(trusted_key, origin)
        if key is not None and key.name != origin:
            raise InvalidProof(
                f"the proof is about {origin!r}; the trusted key is {key.name!r}"
            )
        if chain_id is not None:
            fixed = "the chain id asked for"
        elif trusted_key is not None and "+" in trusted_key:
            fixed = "the trusted vkey's name"
        elif checkpoint is not None:
            fixed = "the checkpoint given"
        else:
            fixed = (
                "the proof alone: a hex key signs every chain of its holder; "
                "give --chain-id to say which one you mean"
            )
        return cls(proof_chain, origin, key, checkpoint, fixed)

    def check(self, proof: Mapping[str, Any], size: int, root: str, own: bool) -> str:
        """Check that the log of ``size`` blocks with ``root`` is the one a
        trusted checkpoint describes: the caller's (its signature checked if a
        key is given), or with ``own`` the proof's own checkpoint, which the
        trusted key must have signed. Returns how; raises ``InvalidProof``."""
        if own or self.checkpoint is None:
            if self.key is None:
                raise ValueError("checking a proof needs a trusted key or a checkpoint")
            if "checkpoint" not in proof:
                raise InvalidProof(
                    "the proof has no 'checkpoint' signed by the trusted key to "
                    "anchor it"
                )
            try:
                note = proof_field(proof, "checkpoint", str).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MalformedProof(
                    f"the proof's checkpoint is not text: {exc}"
                ) from None
            how = "the proof's checkpoint, signed by the trusted key"
        else:
            note = self.checkpoint
            how = "the checkpoint given" + (
                ", signed by the trusted key" if self.key else ""
            )
        try:
            found = (
                open_checkpoint(note, [self.key])[0]
                if self.key is not None
                else parse_checkpoint(parse_note(note).text)
            )
        except (NoteError, CheckpointError) as exc:
            raise InvalidProof(f"checkpoint rejected: {exc}") from None
        if found.origin != self.origin:
            raise InvalidProof(
                f"the checkpoint is of {found.origin!r}, the proof of {self.origin!r}"
            )
        if (found.size, found.root.hex()) != (size, root):
            raise InvalidProof(
                f"the proof's log ({size} blocks, root {root}) is not the "
                f"checkpoint's ({found.size} blocks, root {found.root.hex()})"
            )
        return how


# pylint: disable=too-many-locals
def check_proof(
    proof: Mapping[str, Any],
    *,
    trusted_key: str | None = None,
    checkpoint: bytes | None = None,
    chain_id: str | None = None,
    pov: bool = False,
) -> str:
    """Verify a proof from :meth:`Ledger.prove_update` or
    :meth:`Ledger.prove_consistency` offline; return what it proves.

    A proof's own roots prove nothing about whose ledger it came from, so the
    log it is about must match a trusted checkpoint: ``checkpoint`` (a signed
    checkpoint's bytes, held by the caller), or the proof's own checkpoint
    signed by ``trusted_key`` (a vkey, or the hex Ed25519 key of the ledger's
    signer). ``chain_id`` requires the proof to be about that chain (a hex key
    does not fix it; a vkey's name does). An update proof's header signature
    must verify under the header's leader key, which must be the trusted key
    unless ``pov`` (a PoV chain's blocks are signed by rotating leaders: then
    only the checkpoint vouches for the block). A consistency proof checked
    against an older ``checkpoint`` anchors only its prior end: with
    ``trusted_key`` its later end must then be the proof's own checkpoint,
    signed by that key; without, the statement says the later end is not
    anchored.

    Raises ``ValueError`` if neither anchor is given, ``LedgerError`` if the
    trusted key is malformed, ``InvalidProof`` if the proof does not hold, and
    its subclass ``MalformedProof`` if it is not a well-formed proof at all
    (read a proof's JSON text with
    :func:`~flchain_flwr.ledger.merkle.parse_proof`).
    """
    if trusted_key is None and checkpoint is None:
        raise ValueError("checking a proof needs a trusted key or a checkpoint")
    if not isinstance(proof, Mapping):
        raise MalformedProof("a proof is a JSON object")
    kind = proof_field(proof, "type", str)
    if kind not in ("consistency", "update-in-block"):
        raise MalformedProof(f"unknown proof type {kind[:40]!r}")
    anchor = _ProofAnchor.of(proof, trusted_key, checkpoint, chain_id)
    chain = (
        f"the chain is {anchor.chain_id!r} (origin {anchor.origin}; "
        f"fixed by {anchor.chain_fixed_by})"
    )
    if kind == "consistency":
        return f"{_check_consistency(proof, anchor)}; {chain}"
    header_text = proof_field(proof, "header", str)
    signature = proof_field(proof, "signature", str)
    update = proof_field(proof, "update", dict)
    block = proof_field(proof, "block", dict)
    try:
        header_bytes = header_text.encode("utf-8")
        header, _ = _parse_block(header_bytes, b"{}")
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
        leader = str(header["leader"])
    except KeyError as exc:
        raise MalformedProof(f"malformed proof: {exc!r} is missing") from None
    if not _is_hex(signature, 128) or not _signature_ok(
        leader, HEADER_TAG + header_bytes, signature
    ):
        raise InvalidProof(f"the header's signature by leader {leader} is invalid")
    if anchor.key is None:
        signed = f"signed by leader {leader}, a key not compared with any trusted key"
    elif leader == anchor.key.public_key.hex():
        signed = f"signed by the trusted key {leader}"
    elif pov:
        signed = (
            f"signed by PoV leader {leader}, whose place in the verifier pool and "
            "whose committee's votes were not checked here (the trusted key's "
            "checkpoint vouches for the block)"
        )
    else:
        raise InvalidProof(
            f"block {header['height']} is signed by {leader}, not by the trusted "
            "key (a PoV chain's blocks are signed by rotating leaders: say --pov)"
        )
    verify_proof(update, "inclusion")
    verify_proof(block, "inclusion")
    how = anchor.check(proof, block["size"], block["root"], own=False)
    quorum_line = check_proof_quorum(proof, header, block_hash)
    if quorum_line is not None:
        signed = f"signed by leader {leader}, the first of its committee; {quorum_line}"
    return (
        f"update {update['leaf']} is in block {header['height']} "
        f"({block_hash}, {signed}), which is block "
        f"{block['index']} of a {block['size']}-block log with root "
        f"{block['root']}; anchored by {how}; {chain}"
    )


def _check_consistency(proof: Mapping[str, Any], anchor: _ProofAnchor) -> str:
    """Check a consistency proof against ``anchor``; say which end is anchored
    by what."""
    verify_proof(dict(proof), "consistency")
    prior = (proof["prior_size"], proof["prior_root"])
    later = (proof["later_size"], proof["later_root"])
    claim = (
        f"the ledger of {later[0]} blocks (root {later[1]}) extends the ledger "
        f"of {prior[0]} blocks (root {prior[1]})"
    )
    try:
        how = anchor.check(proof, *later, own=False)
        return f"{claim}; the later end is anchored by {how}"
    except InvalidProof as later_failed:
        if anchor.checkpoint is None:
            raise
        try:
            held = anchor.check(proof, *prior, own=False)
        except InvalidProof:
            raise later_failed from None
    if anchor.key is None:
        return (
            f"{claim}; only the prior end is anchored, by {held}: the later "
            "ledger is the proof's word (give --trusted-key to check its "
            "checkpoint)"
        )
    how = anchor.check(proof, *later, own=True)
    return f"{claim}; the prior end is anchored by {held}, the later end by {how}"

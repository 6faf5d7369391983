"""A ledger block: its stored form, its encodings and its body's node ids.

A block is stored as its canonical header and body bytes, its hash
(``sha256(HEADER_TAG + header)``) and the leader's Ed25519 signature over the
same bytes. The header's ``format`` names the encoding of both
(:func:`~flchain_flwr.ledger.canonical.encode`): ``flchain-block/2`` is RFC
8785 JSON without a ``wall_time``, ``flchain-block/1`` version-1 JSON with
one. Format 2 stores node ids as decimal strings (RFC 8785 numbers are
doubles; Flower's node ids are 64-bit): :func:`ids_as_text` writes them,
:func:`node_key` reads either form. What every block's values are, whoever
signed it, is here too (:func:`header_problem`, :func:`entries_problem`,
:func:`included_problem`): the writer refuses and ``verify`` fails anything
else. :class:`LedgerError` is what the ledger modules raise for a ledger that
cannot be opened or used as asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
from nacl.signing import VerifyKey

from ..quoting import clip
from .canonical import (
    HEADER_TAG,
    NotCanonical,
    encode,
    parse_canonical,
    parse_json,
    sha256_hex,
)
from .statements import signature_ok

LEDGER_FORMATS: Final = {"flchain-ledger/1": 1, "flchain-ledger/2": 2}
"""The ledger file's ``format`` (in ``meta``) by encoding version."""
BLOCK_FORMATS: Final = {"flchain-block/1": 1, "flchain-block/2": 2}
"""A header's ``format``, by the encoding version of its header and body."""
COMMITTEE_KIND_FIELD: Final = "committee_kind"
"""Genesis body field: ``"in-process"`` when the server process holds every
verifier key (a simulation), ``"remote"`` when none, ``"mixed"`` otherwise."""
CONFIG_FIELD: Final = "config"
"""Body field: the settings behind the header's ``config_digest``."""
ENTRY_LISTS: Final = ("included", "rejected", "votes", "contributions")
"""The body fields of every block: JSON arrays of JSON objects."""

COMMITTEES: Final = {
    "in-process": "PoV committees whose every key the server process held "
    "(an in-process simulation: the votes show what that one process decided, "
    "not that independent verifiers agreed)",
    "mixed": "PoV committees some of whose keys the server process held",
    "remote": "their PoV committees (the genesis block records remote verifiers)",
}
"""What a genesis block's ``committee_kind`` says of the later blocks' signers
(:class:`~.verify.VerifyReport`); another value is not recorded."""


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
    quorum: list[dict[str, Any]] | None = field(default=None, compare=False)
    """The committee's header signatures, when this block was read with them
    (see :meth:`Ledger.header_signatures`)."""

    @property
    def format_version(self) -> int:
        """The encoding version of the header and body (see :func:`encode`)."""
        return BLOCK_FORMATS[str(self.header["format"])]


def parse_block(header_raw: bytes, body_raw: bytes) -> tuple[Any, Any]:
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


def digest_of(config: Mapping[str, Any], version: int) -> str:
    """SHA-256 of settings in canonical JSON of encoding ``version``: what a
    block of that format holds as its ``config_digest``."""
    return sha256_hex(encode(version, dict(config)))


def leader_signed(
    header: Mapping[str, Any], header_bytes: bytes, signature: Any
) -> bool:
    """Whether ``signature`` (128 lower-case hex digits) is the header's
    ``leader``'s Ed25519 signature over ``header_bytes``: ``verify``'s check
    of every block, which committee members apply before they sign one."""
    return signature_ok(str(header.get("leader")), HEADER_TAG + header_bytes, signature)


def header_problem(header: Mapping[str, Any]) -> str | None:
    """Why a header's own values are not what every block's are, or ``None``:
    ``model_version`` and ``base_version`` are non-negative integers,
    ``sim_time`` a finite number and ``config_digest`` text (what the block's
    readers rely on; :meth:`~.chain.Ledger.append` writes nothing else)."""
    for name in ("model_version", "base_version"):
        value = header.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return _wrong(header, name, "a non-negative integer")
    sim_time = header.get("sim_time")
    if (
        isinstance(sim_time, bool)
        or not isinstance(sim_time, int | float)
        or not math.isfinite(sim_time)
    ):
        return _wrong(header, "sim_time", "a finite number")
    if not isinstance(header.get("config_digest"), str):
        return _wrong(header, "config_digest", "text")
    return None


def entries_problem(
    body: Mapping[str, Any], names: Sequence[str] = ENTRY_LISTS
) -> str | None:
    """Why the body fields ``names`` (default: all of :data:`ENTRY_LISTS`)
    are not each a JSON array of JSON objects, or ``None``."""
    for name in names:
        if name not in body:
            return f"{name}: missing"
        if not isinstance(body[name], list):
            return f"{name}: not a JSON array"
        if not all(isinstance(entry, Mapping) for entry in body[name]):
            return f"{name}: an entry is not a JSON object"
    return None


def included_problem(included: Sequence[Mapping[str, Any]]) -> str | None:
    """Why an included update's recorded values are not what every writer
    records, or ``None``: of its fields present, ``node_id`` is a node id
    (:func:`node_key`), ``trained_on`` and ``staleness`` are non-negative
    integers, ``weight`` and ``num_examples`` finite non-negative numbers
    (what replay, PoV's shares and rewards compute with; a text ``"10"``
    would read as 10 in one reader and fail in another)."""
    for index, update in enumerate(included):
        problem = None
        if "node_id" in update and node_key(update["node_id"]) is None:
            problem = _wrong(update, "node_id", "a node id")
        for name in ("trained_on", "staleness"):
            value = update.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problem = problem or _wrong(update, name, "a non-negative integer")
        for name in ("weight", "num_examples"):
            value = update.get(name, 0)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < math.inf  # False for NaN
            ):
                problem = problem or _wrong(update, name, "a finite number >= 0")
        if problem is not None:
            return f"included update {index}: {problem}"
    return None


def _wrong(fields: Mapping[str, Any], name: str, expected: str) -> str:
    """That field ``name`` is missing, or its value (quoted short) is not
    ``expected``."""
    if name not in fields:
        return f"{name} is missing"
    return f"{name} {clip(repr(fields[name]), 40)} is not {expected}"

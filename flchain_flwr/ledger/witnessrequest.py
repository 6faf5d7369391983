"""A witness's ``add-checkpoint`` request and answer, in C2SP tlog-witness's
text shape, and the growth check.

A request body is, each line ending in ``\\n``::

    old <size the client believes the witness cosigned>
    <base64 hash>            (0 to 63 lines: RFC 9162 PROOF(old, new))
                             (an empty line)
    <the signed checkpoint note>

The answer is the spec's HTTP response without HTTP (it travels in a Flower
message or a file): status 200 with the cosignature line(s) as body; 409 with
the size last cosigned, ``<size>\\n``; any other refusal with the spec's
status and a one-line reason. The log key a trust-on-first-use witness needs
is no part of the body: it travels beside it (:attr:`CosignRequest.log_key`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final

from ..quoting import clip
from .checkpoint import EMPTY_ROOT, Checkpoint, CheckpointError, parse_checkpoint
from .notes import NoteError, NoteSignature, canonical_b64decode, parse_note
from .rfc6962 import HASH_SIZE, MAX_PROOF_HASHES, ConsistencyError, verify_consistency

MAX_REQUEST_BYTES: Final = 1 << 17
"""A request's bound: a checkpoint with 100 signatures and 63 proof lines fit
many times over."""
MAX_SIZE: Final = 2**63 - 1
_OLD_LINE: Final = re.compile(r"old (0|[1-9][0-9]{0,18})")


class WitnessRefused(Exception):
    """The witness does not cosign; ``status`` is tlog-witness's HTTP code."""

    def __init__(self, status: int, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.size = size
        """With 409: the size of the last checkpoint cosigned for the origin."""


def _bad(reason: str) -> WitnessRefused:
    return WitnessRefused(400, f"malformed request: {reason}")


@dataclass(frozen=True)
class CosignRequest:
    """An ``add-checkpoint`` request: old size, consistency proof, checkpoint.

    Parameters
    ----------
    old : int
        The size of the last checkpoint the witness cosigned for the origin (0
        if none).
    checkpoint : str
        The new signed checkpoint (a note; may carry other signatures).
    consistency : tuple[bytes, ...]
        RFC 9162 ``PROOF(old, new)``: empty when ``old`` is 0 or the new size.
    log_key : str, optional
        The log's vkey, beside the body: read only by a trust-on-first-use
        witness that does not know the origin yet.
    """

    old: int
    checkpoint: str
    consistency: tuple[bytes, ...] = ()
    log_key: str | None = None

    def encode(self) -> bytes:
        """The request body."""
        proof = "".join(_b64(digest) + "\n" for digest in self.consistency)
        return f"old {self.old}\n{proof}\n{self.checkpoint}".encode()

    @classmethod
    def decode(cls, data: bytes, log_key: str | None = None) -> CosignRequest:
        """Parse a request body strictly; ``WitnessRefused(400)`` with the
        reason if it is not exactly :meth:`encode`'s form."""
        if len(data) > MAX_REQUEST_BYTES:
            raise _bad(f"larger than {MAX_REQUEST_BYTES} bytes")
        if b"\r" in data:
            raise _bad("a carriage return (lines end in LF only)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        first, newline, rest = text.partition("\n")
        found = _OLD_LINE.fullmatch(first)
        if not newline or found is None:
            raise _bad(f"the first line must be 'old <size>', not {first[:40]!r}")
        old = int(found.group(1))
        if old > MAX_SIZE:
            raise _bad(f"old size {old} is above 2**63 - 1")
        proof: list[bytes] = []
        while True:
            line, newline, rest = rest.partition("\n")
            if not newline:
                raise _bad("no empty line after the consistency proof")
            if not line:
                break
            if len(proof) == MAX_PROOF_HASHES:
                raise _bad(f"more than {MAX_PROOF_HASHES} consistency proof lines")
            proof.append(_hash_line(line, len(proof) + 2))
        try:
            note = parse_note(rest)
            parse_checkpoint(note.text)
        except (NoteError, CheckpointError) as exc:
            raise _bad(f"not a signed checkpoint after the empty line: {exc}") from None
        return cls(old, rest, tuple(proof), log_key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hash_line(line: str, number: int) -> bytes:
    try:
        raw = canonical_b64decode(line)
    except ValueError:
        raw = None
    if raw is None or len(raw) != HASH_SIZE:
        raise _bad(f"line {number} is not one base64 SHA-256 hash: {line[:48]!r}")
    return raw


@dataclass(frozen=True)
class WitnessAnswer:
    """The spec's HTTP response, without HTTP: ``status``, ``body`` and, for
    a refusal, a ``reason`` (for 409 the body is only the size)."""

    status: int
    body: bytes
    reason: str = ""

    @classmethod
    def of(cls, result: NoteSignature | WitnessRefused) -> WitnessAnswer:
        """The answer to a cosignature line or a refusal."""
        if isinstance(result, NoteSignature):
            return cls(200, result.line().encode())
        if result.status == 409 and result.size is not None:
            return cls(409, f"{result.size}\n".encode(), result.reason)
        return cls(result.status, f"{result.reason}\n".encode(), result.reason)

    def cosignatures(self, checkpoint: str) -> tuple[NoteSignature, ...]:
        """The signature lines of a 200 answer to a request for ``checkpoint``
        (not verified); the refusal it carries otherwise.

        Raises
        ------
        WitnessRefused
            The witness's refusal (409 with its size), or 502 for an answer
            that is not one.
        """
        if self.status != 200:
            size = None
            if self.status == 409:
                found = re.fullmatch(rb"(0|[1-9][0-9]{0,18})\n", self.body)
                if found is None:
                    raise WitnessRefused(502, "a 409 answer without its size line")
                size = int(found.group(1))
            raise WitnessRefused(self.status, clip(self.reason or None), size)
        try:
            text = parse_note(checkpoint).text
            return parse_note(text.encode() + b"\n" + self.body).signatures
        except NoteError as exc:
            raise WitnessRefused(
                502, f"the answer holds no signature lines: {clip(str(exc))}"
            ) from None


def check_growth(request: CosignRequest, last: Checkpoint, new: Checkpoint) -> None:
    """tlog-witness's checks of a new checkpoint against the last one cosigned
    for its origin (its signature is checked before); ``WitnessRefused`` with
    the status and reason of the first that fails."""
    origin = new.origin
    if new.size < last.size:
        raise WitnessRefused(
            409,
            f"{origin}: truncation: size {new.size} is below size {last.size}, "
            "which this witness cosigned",
            last.size,
        )
    if request.old > new.size:
        raise WitnessRefused(
            400, f"old size {request.old} is above the checkpoint's {new.size}"
        )
    if request.old != last.size:
        raise WitnessRefused(
            409,
            f"{origin}: old size {request.old}, but this witness cosigned {last.size}",
            last.size,
        )
    if new.size == 0 and new.root != EMPTY_ROOT:
        raise WitnessRefused(422, f"{origin}: an empty tree's root must be SHA-256('')")
    if new.size == last.size and new.root != last.root:
        raise WitnessRefused(
            409,
            f"{origin}: fork or rewrite: size {new.size} with root {new.root.hex()}, "
            f"but this witness cosigned root {last.root.hex()}",
            last.size,
        )
    try:
        verify_consistency(
            last.size, new.size, last.root, new.root, request.consistency
        )
    except ConsistencyError as exc:
        raise WitnessRefused(
            422,
            f"{origin}: fork or rewrite: size {new.size} does not extend size "
            f"{last.size}, which this witness cosigned ({exc})",
        ) from None

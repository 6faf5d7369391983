"""A witness's ``add-checkpoint`` request, its refusals, and the growth check.

The request mirrors C2SP tlog-witness's ``add-checkpoint``: the size of the
last checkpoint the client believes the witness cosigned (``old``), a
consistency proof from that size, and the new signed checkpoint. The proof is
this project's JSON proof (``Ledger.prove_consistency``,
:func:`~.checkpoint.check_consistency`), not the spec's RFC 6962 hash lines.
Refusals carry the spec's HTTP status as :attr:`WitnessRefused.status`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .checkpoint import EMPTY_ROOT, Checkpoint, CheckpointMismatch, check_consistency


class WitnessRefused(Exception):
    """The witness does not cosign; ``status`` is tlog-witness's HTTP code."""

    def __init__(self, status: int, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.size = size
        """With 409: the size of the last checkpoint cosigned for the origin."""


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
    consistency : Mapping, optional
        A consistency proof from ``old`` to the new size (none when ``old`` is
        0 or equal to it).
    log_key : str, optional
        The log's vkey: read only by a trust-on-first-use witness that does
        not know the origin yet.
    """

    old: int
    checkpoint: str
    consistency: Mapping[str, Any] | None = None
    log_key: str | None = None

    def encode(self) -> bytes:
        """The request as JSON bytes."""
        body = {
            "old": self.old,
            "checkpoint": self.checkpoint,
            "consistency": None if self.consistency is None else dict(self.consistency),
            "log_key": self.log_key,
        }
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> CosignRequest:
        """Parse :meth:`encode`'s form; ``WitnessRefused(400)`` if malformed."""
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise WitnessRefused(400, f"the request is not JSON: {exc}") from None
        fields = {"old", "checkpoint", "consistency", "log_key"}
        if (
            not isinstance(body, dict)
            or not {"old", "checkpoint"} <= set(body) <= fields
        ):
            raise WitnessRefused(
                400, "a request is {'old', 'checkpoint'[, 'consistency', 'log_key']}"
            )
        old, note = body["old"], body["checkpoint"]
        proof, log_key = body.get("consistency"), body.get("log_key")
        if isinstance(old, bool) or not isinstance(old, int) or old < 0:
            raise WitnessRefused(400, f"old size {old!r} is not a natural number")
        if not isinstance(note, str) or not (proof is None or isinstance(proof, dict)):
            raise WitnessRefused(400, "checkpoint must be text, consistency an object")
        if not (log_key is None or isinstance(log_key, str)):
            raise WitnessRefused(400, "log_key must be a vkey")
        return cls(old, note, proof, log_key)


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
            422,
            f"{origin}: fork or rewrite: size {new.size} with root {new.root.hex()}, "
            f"but this witness cosigned root {last.root.hex()}",
        )
    if last.size == 0 and request.consistency:
        raise WitnessRefused(
            422, f"{origin}: a proof from the empty tree must be empty"
        )
    try:
        check_consistency(last, new, request.consistency)
    except CheckpointMismatch as exc:
        raise WitnessRefused(
            422,
            f"{origin}: fork or rewrite: size {new.size} does not extend size "
            f"{last.size}, which this witness cosigned ({exc})",
        ) from None

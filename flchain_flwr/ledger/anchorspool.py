"""Anchor requests in a spool folder: anchoring without the main chain's key.

A ServerApp that holds only its own subchain key gets the witness quorum's
cosignatures on its ledger's checkpoint (:func:`~.anchoring.cosigned_checkpoint`)
and writes an *anchor request* to a spool folder; the main chain's operator,
who alone holds the main key, appends it with ``flchain main ingest SPOOL``
(:mod:`~flchain_flwr.ledger.mainingest`). A request is RFC 8785 JSON::

    {"format": "flchain-anchor-request/1", "origin": <subchain origin>,
     "log_key": <subchain's checkpoint vkey>,
     "checkpoint": <signed note: the subchain's signature + cosignatures>,
     "consistency": {"<size>": <consistency proof from that size>, ...}}

``consistency`` holds a proof from every size the ingester may hold as the
origin's last anchor: the one the main chain held when the request was
written and each size this writer spooled since (the operator may not have
ingested them yet). Nothing in a request is trusted: ingesting checks all
that :meth:`MainChain.anchor` checks.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any, Final

from flwr.supercore import log

from .anchorblock import ENCODING
from .anchoring import WitnessClient, cosigned_checkpoint, ledger_size, log_key_of
from .blocks import LedgerError
from .canonical import encode
from .chain import Ledger
from .checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from .logprover import LogProver
from .mainchain import MainChain
from .maindb import AnchorRefused, MainChainError
from .notes import (
    NoteError,
    SignedNote,
    VerifierKey,
    parse_note,
    parse_verifier_key,
    write_file_atomically,
)

REQUEST_FORMAT: Final = "flchain-anchor-request/1"
MAX_REQUEST_BYTES: Final = 1 << 20
SUFFIX: Final = ".anchor.json"


@dataclass(frozen=True)
class AnchorRequest:
    """A parsed anchor request (its signatures not checked here)."""

    note: SignedNote
    checkpoint: Checkpoint
    log_key: VerifierKey
    consistency: dict[int, dict[str, Any]]

    def encode(self) -> bytes:
        """The request's canonical bytes."""
        return encode(
            ENCODING,
            {
                "format": REQUEST_FORMAT,
                "origin": self.checkpoint.origin,
                "log_key": self.log_key.encode(),
                "checkpoint": str(self.note),
                "consistency": {str(k): v for k, v in self.consistency.items()},
            },
        )

    @property
    def file_name(self) -> str:
        """``<origin, filename-safe>-<size, 12 digits>.anchor.json``: one
        origin's requests sort by size."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.checkpoint.origin)
        return f"{safe}-{self.checkpoint.size:012d}{SUFFIX}"


def parse_request(data: bytes) -> AnchorRequest:
    """Parse a request file's bytes; ``ValueError`` saying what is wrong."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(
            f"{len(data)} bytes: a request has at most {MAX_REQUEST_BYTES}"
        )
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {str(exc)[:80]}") from None
    fields = {"format", "origin", "log_key", "checkpoint", "consistency"}
    if not isinstance(body, dict) or set(body) != fields:
        raise ValueError(f"not a request: its fields are {', '.join(sorted(fields))}")
    if body["format"] != REQUEST_FORMAT:
        raise ValueError(f"its format is not {REQUEST_FORMAT}")
    proofs = body["consistency"]
    if not isinstance(proofs, dict) or not all(
        k.isascii() and k.isdigit() and isinstance(v, dict) for k, v in proofs.items()
    ):
        raise ValueError("consistency is an object of size -> proof")
    if not all(isinstance(body[k], str) for k in ("origin", "log_key", "checkpoint")):
        raise ValueError("origin, log_key and checkpoint are text")
    try:
        note = parse_note(body["checkpoint"])
        checkpoint = parse_checkpoint(note.text)
        key = parse_verifier_key(body["log_key"])
    except (NoteError, CheckpointError) as exc:
        raise ValueError(str(exc)) from None
    if checkpoint.origin != body["origin"]:
        raise ValueError(f"it names origin {body['origin'][:80]!r}, its checkpoint not")
    return AnchorRequest(note, checkpoint, key, {int(k): v for k, v in proofs.items()})


class SpoolAnchorer:
    """Write a ledger's cosigned checkpoint to a spool folder every
    ``every_blocks`` blocks and/or ``every_seconds`` of run time, and at the end
    (the stage interface of :class:`~.anchoring.Anchorer`).

    Parameters
    ----------
    main : MainChain
        The main chain, opened without its key: read for its witness policy
        and the origin's last anchored size, never written.
    spool : str | Path
        The spool folder (created if missing).
    witnesses : Sequence[WitnessClient]
        The witnesses to ask.
    """

    def __init__(
        self,
        main: MainChain,
        spool: str | Path,
        witnesses: Sequence[WitnessClient],
        *,
        every_blocks: int | None = None,
        every_seconds: float | None = None,
    ) -> None:
        blocks_on = every_blocks is not None and every_blocks >= 1
        if not blocks_on and not (every_seconds is not None and every_seconds > 0):
            raise ValueError("spooling needs every_blocks >= 1 or every_seconds > 0")
        self.main = main
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.witnesses = list(witnesses)
        self.every_blocks = every_blocks
        self.every_seconds = every_seconds
        self.spooled: list[Path] = []
        self.failures: list[str] = []
        self._last = (0, 0.0)  # size and time of the last request
        self._sizes: list[int] = []
        self._prover = LogProver()
        self._witness_sizes: dict[int, int] = {}

    def after_block(self, ledger: Ledger, time: float) -> Path | None:
        """Spool a request if due (a failure is logged and kept in
        :attr:`failures`; the next block tries again)."""
        grown = ledger_size(ledger) - self._last[0]
        if (self.every_blocks is not None and grown >= self.every_blocks) or (
            self.every_seconds is not None
            and time - self._last[1] >= self.every_seconds
        ):
            return self.anchor_now(ledger, time)
        return None

    def anchor_now(self, ledger: Ledger, time: float) -> Path | None:
        """Spool the ledger's current cosigned checkpoint (unless spooled
        already at this size); the request file."""
        size = ledger_size(ledger)
        if size == self._last[0] and self.spooled:
            return None
        try:
            note, refusals = cosigned_checkpoint(
                ledger,
                self.witnesses,
                self.main.policy.quorum,
                self._prover,
                self._witness_sizes,
            )
            last = self.main.last_anchor(ledger.origin)
            base = {last.checkpoint.size} if last is not None else set()
            request = AnchorRequest(
                note,
                parse_checkpoint(note.text),
                log_key_of(ledger),
                {
                    old: self._prover.prove(old, size)
                    for old in sorted(base | set(self._sizes))
                    if 0 < old < size and (last is None or old >= last.checkpoint.size)
                },
            )
            path = self.spool / request.file_name
            write_file_atomically(path, request.encode(), mode=0o644, overwrite=True)
        except (
            AnchorRefused,
            MainChainError,
            LedgerError,
            CheckpointError,
            OSError,
            sqlite3.Error,
        ) as exc:
            log(
                WARNING, "Spooling %s at %d blocks failed: %s", ledger.origin, size, exc
            )
            self.failures.append(str(exc))
            return None
        for refusal in refusals:
            log(WARNING, "Spooling %s: %s", ledger.origin, refusal)
        self._last = (size, time)
        self._sizes.append(size)
        self.spooled.append(path)
        return path

"""``flchain main ingest SPOOL``: the main-chain operator appends spooled anchor
requests (:mod:`~flchain_flwr.ledger.anchorspool`).

Every request goes through :meth:`MainChain.anchor`, which checks all an
anchor needs (the subchain key's signature, the witness quorum, the origin's
first key, consistency with its last anchor); a request is trusted for
nothing. Requests are taken in order of origin and size. Each file ends in
``SPOOL/ingested/`` (anchored, or already anchored at that size with that
root) or ``SPOOL/rejected/`` beside a ``<name>.reason`` file; so a second
ingest of the same spool does nothing, and an ingest killed between the
append and the move finds the request anchored already. Junk (not a file,
not JSON, not a request, over 1 MiB) is rejected with its reason, never a
crash. Dot files (writers' temporary files) are left alone. One ingest runs
at a time per spool (an exclusive lock on ``SPOOL/.ingest.lock``).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .anchorblock import AnchorError
from .anchorspool import MAX_REQUEST_BYTES, AnchorRequest, parse_request
from .mainchain import MainChain
from .maindb import AnchorRefused, MainChainError
from .notes import write_file_atomically

INGESTED: Final = "ingested"
REJECTED: Final = "rejected"


@dataclass(frozen=True)
class Ingested:
    """What became of one spool entry: ``anchored``, ``present`` (anchored
    already) or ``rejected``, and why."""

    name: str
    outcome: str
    detail: str

    def __str__(self) -> str:
        return f"{self.outcome.upper()} {self.name}: {self.detail}"


def ingest_spool(main: MainChain, spool: str | Path) -> list[Ingested]:
    """Anchor every request in ``spool`` into ``main`` (opened with its key).

    Raises
    ------
    MainChainError
        If ``spool`` is not a folder or ``main`` has no key.
    """
    folder = Path(spool)
    if not folder.is_dir():
        raise MainChainError(f"no spool folder at {folder}")
    if not main.has_key:
        raise MainChainError("ingesting needs the main chain's signing key")
    for sub in (INGESTED, REJECTED):
        (folder / sub).mkdir(exist_ok=True)
    with open(folder / ".ingest.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _ingest(main, folder)


def _ingest(main: MainChain, folder: Path) -> list[Ingested]:
    results: list[Ingested] = []
    requests: list[tuple[Path, AnchorRequest]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in (INGESTED, REJECTED):
            continue
        try:
            requests.append((path, _read(path)))
        except (OSError, ValueError) as exc:
            results.append(_move(path, REJECTED, str(exc)))
    requests.sort(key=lambda item: (item[1].checkpoint.origin, item[1].checkpoint.size))
    for path, request in requests:
        try:
            outcome, detail = _anchor(main, request)
            results.append(_move(path, INGESTED, detail, outcome))
        except (AnchorRefused, AnchorError, ValueError) as exc:
            results.append(_move(path, REJECTED, str(exc)))
    return results


def _read(path: Path) -> AnchorRequest:
    if path.is_symlink() or not path.is_file():
        raise ValueError("not a regular file")
    with open(path, "rb") as file:
        data = file.read(MAX_REQUEST_BYTES + 1)
    return parse_request(data)


def _anchor(main: MainChain, request: AnchorRequest) -> tuple[str, str]:
    """Anchor one request: ``("anchored" | "present", detail)``;
    ``AnchorRefused`` if refused."""
    checkpoint = request.checkpoint
    last = main.last_anchor(checkpoint.origin)
    if last is not None and last.log_key != request.log_key:
        raise AnchorRefused(
            f"{checkpoint.origin} was anchored with key {last.log_key}, not "
            f"{request.log_key}"
        )
    if last is not None and last.checkpoint.size >= checkpoint.size:
        for block in main.anchors_for(checkpoint.origin):
            if block.checkpoint == checkpoint:
                return "present", (
                    f"{checkpoint.origin} size {checkpoint.size} is anchored "
                    f"already, at height {block.height}"
                )
    if last is not None and last.checkpoint.size > checkpoint.size:
        raise AnchorRefused(
            f"superseded: {checkpoint.origin} is anchored at size "
            f"{last.checkpoint.size} (height {last.height}), above this "
            f"{checkpoint.size}"
        )
    old = 0 if last is None else last.checkpoint.size
    proof = request.consistency.get(old) if 0 < old < checkpoint.size else None
    if 0 < old < checkpoint.size and proof is None:
        raise AnchorRefused(
            f"{checkpoint.origin}: no consistency proof from its anchored size "
            f"{old} (the request has {sorted(request.consistency) or 'none'})"
        )
    block = main.anchor(request.note, request.log_key, proof)
    return "anchored", (
        f"{checkpoint.origin} size {checkpoint.size} anchored at height {block.height}"
    )


def _move(path: Path, where: str, detail: str, outcome: str = REJECTED) -> Ingested:
    """Move a spool entry to ``where`` (a rejected one beside its reason)."""
    target = path.parent / where / path.name
    if where == REJECTED:
        reason = (detail + "\n").encode("utf-8", "replace")
        write_file_atomically(
            target.with_name(target.name + ".reason"),
            reason,
            mode=0o644,
            overwrite=True,
        )
    try:
        os.replace(path, target)
    except OSError as exc:  # e.g. a folder onto an existing name: left in place
        detail += f" (left in the spool: {exc.strerror})"
    return Ingested(path.name, outcome, detail)

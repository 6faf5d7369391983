"""Records a server keeps beside its ledger between runs, sealed with its key.

What a restarted server must resume from besides the chain (the block its
committee was asked to sign, :mod:`.pending`; the view-change certificates it
completed at the next height, :mod:`.viewchanges`) is written next to the
ledger, atomically and, for a durable ledger, fsynced, as canonical JSON with
a ``sealed`` field: the ledger key's signature over the rest, under a tag of
the record's own. A record without a valid seal is refused, so whoever can
write only the ledger's folder cannot make the server act on a record of
theirs. The seal says only that this server wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomicfile import write_file_atomically
from .canonical import LATEST_FORMAT, encode, parse_canonical
from .inputfile import open_input
from .statements import sign_statement, signature_ok

if TYPE_CHECKING:
    from .chain import Ledger


def write_sealed(
    ledger: Ledger, path: Path, tag: bytes, record: dict[str, Any]
) -> None:
    """Write ``record`` to ``path`` with the ledger key's seal under ``tag``."""
    seal = sign_statement(ledger.signing_key, sealed_bytes(tag, record))
    sealed = {**record, "sealed": seal}
    write_file_atomically(
        path,
        encode(LATEST_FORMAT, sealed),
        mode=0o644,
        overwrite=True,
        durable=ledger.durable,
    )


def read_sealed(
    ledger: Ledger,
    path: Path,
    tag: bytes,
    fields: frozenset[str],
    error: type[ValueError],
) -> dict[str, Any] | None:
    """The record at ``path`` (``None``: there is none), which must have
    exactly ``fields`` (``sealed`` among them) and the ledger key's seal
    under ``tag``; ``error`` otherwise."""
    try:  # a regular file only: a FIFO would wait for a writer for ever
        with open_input(path) as file:
            data = file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    try:
        record = parse_canonical(data, LATEST_FORMAT)
    except (ValueError, RecursionError) as exc:
        raise error(f"{path.name} is not canonical JSON ({exc})") from None
    if not isinstance(record, dict) or set(record) != fields:
        raise error(f"{path.name} must have the fields {sorted(fields)}")
    own = ledger.signing_key.verify_key.encode().hex()
    if not signature_ok(own, sealed_bytes(tag, record), str(record["sealed"])):
        raise error(f"{path.name} is not sealed by this ledger's key")
    return record


def sealed_bytes(tag: bytes, record: dict[str, Any]) -> bytes:
    """What the seal signs: ``tag`` and the record without its seal."""
    return tag + encode(
        LATEST_FORMAT, {k: v for k, v in record.items() if k != "sealed"}
    )

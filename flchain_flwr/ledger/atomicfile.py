"""Files written whole or not at all, and durably: :func:`write_file_atomically`.

Keys, checkpoints, pending-block records, witness state and the other files
kept beside a ledger must never be left half-written by a killed process,
nor lost to a power loss once written: each is written to a new temporary
file beside its path, fsynced, renamed (or, where an existing file must
never be replaced, linked) into place, and the folder fsynced so that the
new name survives. Readers then see the old file or the new one, never a
mix.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_file_atomically(
    path: str | Path, data: bytes, *, mode: int, overwrite: bool, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` whole or not at all, and make it durable.

    The bytes go to a new temporary file beside ``path`` (created with
    ``mode``), are fsynced, and the file is renamed into place (or, without
    ``overwrite``, linked, which fails if ``path`` exists); then the folder is
    fsynced so the new name survives a power loss. Without ``durable`` neither
    fsync happens (the rename is still atomic: a killed process leaves the old
    file or the new one).

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # exactly ``mode``, whatever the umask
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)

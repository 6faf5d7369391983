"""Reading an input file: a regular file only, and never more than its format
may hold.

A file given on the command line, or kept beside a chain, may be a FIFO or a
device: opening a FIFO waits for a writer that may never come, and a device
such as ``/dev/zero`` never ends. Only a regular file is read: the others
are refused (:class:`NotAFile`) before anything reads them, and SQLite files
before SQLite opens them (:func:`irregular_problem`). Standard input, which a
command reads when given ``-``, is read as it is: the user piped it there.

A regular file may still be far larger than anything its format allows:
:func:`read_head` reads at most one byte more than the format's limit, so
that the format's parser, which refuses anything longer than its limit,
refuses it, and nothing reads further.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Final

_KINDS: Final = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


def _refusal(kind: str) -> str:
    return f"not a regular file but {kind}"


class NotAFile(OSError):
    """An input path that is there but is not a regular file."""

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(errno.EINVAL, _refusal(kind), str(path))

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def _kind(mode: int) -> str | None:
    """What a file of ``mode`` is, unless it is a regular file (``None``)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "another kind of file")


def _not_regular(path: str | Path) -> str | None:
    """What is at ``path`` (``"a FIFO"``, ``"a directory"``, ...) if it is
    there but is not a regular file (a link is followed); ``None`` for a
    regular file, or for nothing there (opening it then says so)."""
    try:
        return _kind(os.stat(path).st_mode)
    except OSError as exc:
        return "a loop of symbolic links" if exc.errno == errno.ELOOP else None
    except ValueError:
        return None


def resolved(path: str | Path) -> Path:
    """``path`` made absolute, its symbolic links followed as far as they lead:
    a loop of them is left for :func:`irregular_problem` to name, where
    :meth:`Path.resolve` raises ``RuntimeError``."""
    return Path(os.path.realpath(path))


def irregular_problem(path: str | Path) -> str | None:
    """``"PATH is not a regular file but a FIFO"`` (a directory, ...) if
    ``path`` is there but is not a regular file (a link is followed);
    ``None`` for a regular file, or for nothing there. What a caller that
    hands the path to SQLite, which would wait forever on a FIFO, refuses
    with, in its own error type."""
    kind = _not_regular(path)
    return None if kind is None else f"{path} is {_refusal(kind)}"


def open_input(path: str | Path) -> BinaryIO:
    """The regular file at ``path``, open for reading in binary.

    Raises
    ------
    NotAFile
        If ``path`` is something else (checked before it is opened, and again
        on what was opened: a FIFO is opened without waiting for a writer).
    OSError
        If it cannot be opened.
    """
    kind = _not_regular(path)
    if kind is not None:
        raise NotAFile(path, kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = _kind(os.fstat(fd).st_mode)  # replaced since the check?
        if kind is not None:
            raise NotAFile(path, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_head(source: str | Path | BinaryIO, limit: int) -> bytes:
    """The bytes of ``source`` (a regular file's path, or an open binary
    stream such as stdin), or, if it holds more than ``limit``, its first
    ``limit + 1``. :class:`NotAFile` if the path is not a regular file,
    ``OSError`` if it cannot be read."""
    if isinstance(source, str | Path):
        with open_input(source) as file:
            return file.read(limit + 1)
    return source.read(limit + 1)

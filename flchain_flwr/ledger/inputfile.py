"""Reading an input file whole, but never more than its format may hold.

A file given on the command line, or kept beside a chain, may be a device or
a pipe that never ends (``/dev/zero``) or far larger than anything its format
allows: :func:`read_head` reads at most one byte more than the format's
limit, so that the format's parser, which refuses anything longer than its
limit, refuses it, and nothing reads further.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO


def read_head(source: str | Path | BinaryIO, limit: int) -> bytes:
    """The bytes of ``source`` (a file's path, or an open binary stream such as
    stdin), or, if it holds more than ``limit``, its first ``limit + 1``.
    ``OSError`` if the file cannot be read."""
    if isinstance(source, str | Path):
        with open(source, "rb") as file:
            return file.read(limit + 1)
    return source.read(limit + 1)

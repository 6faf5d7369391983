"""What every ``flchain`` command shares: exit codes, the one-line error, the
error guard of the anchoring commands, and the types of their arguments.

Exit codes as :mod:`flchain_flwr.cli` documents them: 0 success, 1 a check
failed, 2 bad input (one line on stderr, never a traceback), 3 ``ledger verify
--replay`` could not replay every block.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import sys
from collections.abc import Callable
from typing import Final, TextIO

from .ledger import Ledger, LedgerError
from .ledger.anchorblock import AnchorError
from .ledger.checkpoint import CheckpointError
from .ledger.cosignature import parse_cosigner_key
from .ledger.inputfile import read_head
from .ledger.maindb import MainChainError
from .ledger.notes import NoteError, VerifierKey, parse_verifier_key
from .ledger.witness import WitnessError
from .numbertext import decimal_integer
from .quoting import clip

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
MAX_HEIGHT: Final = 2**63 - 1
"""The largest height or block count an argument may name (SQLite's integers)."""

Command = Callable[[argparse.Namespace, TextIO], int]
"""A command's handler: its parsed arguments and stdout to the exit code."""


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error(message: str) -> int:
    """Write ``flchain: error: <message>`` as one line on stderr; exit code 2."""
    sys.stderr.write(f"flchain: error: {one_line(message)}\n")
    return EXIT_USAGE


def guarded(command: Command) -> Command:
    """Bad input of any kind the anchoring commands know: exit 2 with one line."""

    @functools.wraps(command)
    def run(args: argparse.Namespace, out: TextIO) -> int:
        try:
            return command(args, out)
        except (
            MainChainError,
            WitnessError,
            NoteError,
            AnchorError,
            CheckpointError,
            LedgerError,
            sqlite3.Error,
        ) as exc:
            return error(str(exc))
        except OSError as exc:
            return error(f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "))

    return run


def open_ledger(path: str) -> Ledger:
    """The ledger at ``path``, which must exist, open read-only: a command
    that reads a ledger never changes it."""
    return Ledger(path, read_only=True)


def read_input(path: str, limit: int) -> bytes:
    """A file's bytes, or stdin's for ``-``: at most ``limit + 1`` of them
    (:func:`~flchain_flwr.ledger.inputfile.read_head`; the input's parser
    refuses more than ``limit``)."""
    return read_head(sys.stdin.buffer if path == "-" else path, limit)


def _shown(text: str) -> str:
    """An argument as quoted in a message, cut short if long."""
    return repr(clip(text, 40))


def height(text: str) -> int:
    """A height or block count: an integer from 0 to :data:`MAX_HEIGHT`."""
    try:
        value = decimal_integer(text)
    except ValueError:  # not an integer, or one too long for int() to convert
        if not text.lstrip("+-").isascii() or not text.lstrip("+-").isdigit():
            raise argparse.ArgumentTypeError(
                f"not an integer: {_shown(text)}"
            ) from None
        value = -1
    if not 0 <= value <= MAX_HEIGHT:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not between 0 and 2**63 - 1"
        )
    return value


def natural(text: str) -> int:
    """An integer from 0 to 2**63 - 1 (the anchoring commands' wording)."""
    try:
        value = decimal_integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {_shown(text)}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 2**63 - 1")
    return value


def public_key(text: str) -> str:
    """A trusted key: an Ed25519 public key in hex (64 digits), as blocks store
    it, or a signed-note verifier key (``<name>+<key id>+<base64>``; checked in
    full once the ledger's origin is known)."""
    key = text.strip()
    hex_key = len(key) == 64 and all(c in "0123456789abcdef" for c in key.lower())
    if not hex_key and key.count("+") != 2:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not an Ed25519 public key (64 hex digits) "
            "nor a signed-note verifier key (name+id+key)"
        )
    return key.lower() if hex_key else key


def vkey(text: str) -> VerifierKey:
    """A signed-note verifier key (``<name>+<key id>+<base64>``)."""
    try:
        return parse_verifier_key(text.strip())
    except NoteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cosigner(text: str) -> str:
    """A witness's cosignature verifier key, in its canonical text."""
    try:
        return parse_cosigner_key(text.strip()).encode()
    except NoteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

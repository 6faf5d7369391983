"""The ``flchain`` command line: its parser and its entry point.

The groups' commands are in their own modules: ``ledger`` in
:mod:`~flchain_flwr.cli_ledger`, ``witness`` in :mod:`~flchain_flwr.cli_witness`,
``main`` in :mod:`~flchain_flwr.cli_mainchain` (``ingest`` and ``cosign`` in
:mod:`~flchain_flwr.cli_mainwit`), ``anchor`` and ``ledger verify
--anchored-in`` in :mod:`~flchain_flwr.cli_anchor`, ``model`` in
:mod:`~flchain_flwr.cli_model`; what they share in :mod:`~flchain_flwr.cli_common`.

Exit codes: 0 success, 1 a check failed (verify, check-proof), 2 bad input
(missing file, not a ledger, a damaged ledger file, unknown block or digest, a
malformed proof, bad arguments), 3 ``verify --replay`` found no fault but could
not replay every block (it says which, and why; of ``PoVStrategy``'s blocks it
checks the stored payloads and signatures, but does not recompute the model,
which the wrapped strategy aggregated). Errors are one line on stderr,
never a traceback; set ``FLCHAIN_DEBUG=1`` to see the traceback of an error
nobody foresaw.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Final, NoReturn, TextIO

from .cli_anchor import add_anchor_commands
from .cli_common import EXIT_USAGE, error, one_line
from .cli_ledger import add_ledger_commands
from .cli_mainchain import add_main_commands
from .cli_model import add_model_commands
from .cli_witness import add_witness_commands
from .ledger import LedgerError
from .quoting import clip

MESSAGE_CHARS: Final = 400
"""The most characters of argparse's message shown: it may quote an argument."""
DEBUG_ENV: Final = "FLCHAIN_DEBUG"
"""Set (to anything but ``0`` or nothing) to see tracebacks of unforeseen errors."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {clip(one_line(message), MESSAGE_CHARS)} "
            f"(see {self.prog} --help)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``flchain`` parser; its groups in the order ``--help`` lists them."""
    parser = _Parser(prog="flchain", description="flchain-flwr tools")
    groups = parser.add_subparsers(dest="group", required=True)
    verify = add_ledger_commands(groups)
    add_witness_commands(groups)
    add_main_commands(groups)
    add_anchor_commands(groups, verify)
    add_model_commands(groups)
    return parser


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of
    what is still buffered cannot fail a second time (Python's SIGPIPE recipe)."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (a capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``flchain`` console script: the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    stream = out if out is not None else sys.stdout
    if getattr(args, "consistency", None) is not None and len(args.consistency) > 2:
        return error("--consistency takes PRIOR [LATER]")
    try:
        code = int(args.func(args, stream))
        stream.flush()  # a closed pipe or a full disk shows here, not at exit
        return code
    except LedgerError as exc:
        return error(str(exc))
    except (KeyError, TypeError, ValueError) as exc:  # stored data of the wrong shape
        if _debugging():
            raise
        return error(
            f"the ledger's data is malformed ({exc!r}); "
            "run `flchain ledger verify` to find the bad block"
        )
    except OSError as exc:  # writing the output failed: a full disk, a closed pipe
        if stream is sys.stdout:
            _discard_stdout()
        if isinstance(exc, BrokenPipeError):  # the reader left (`... | head`)
            return EXIT_USAGE
        return error(f"cannot write the output: {exc}")
    except Exception as exc:  # a bug, or a failure nobody foresaw: still one line
        if _debugging():
            raise
        return error(
            f"unexpected {type(exc).__name__}: {exc} "
            f"(set {DEBUG_ENV}=1 to see the traceback)"
        )


if __name__ == "__main__":
    sys.exit(main())

"""``flchain anchor`` and ``flchain ledger verify --anchored-in``: anchoring a
ledger's checkpoint in a main chain, and checking a ledger against its anchors.

Exit codes as in :mod:`flchain_flwr.cli`: 0 success, 1 a check failed or the
anchor was refused, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, TextIO

from nacl.signing import SigningKey

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    error,
    guarded,
    open_ledger,
    vkey,
)
from .cli_mainchain import kept_checkpoint
from .cli_mainwit import add_witness_rule_options, witness_rule
from .ledger import LedgerError
from .ledger.anchorcheck import check_anchored
from .ledger.anchoring import anchor_ledger
from .ledger.checkpoint import CheckpointError
from .ledger.keys import load_or_create_key
from .ledger.mainchain import MainChain
from .ledger.maindb import AnchorRefused, MainChainError
from .ledger.notes import NoteError
from .ledger.witness import Witness


@guarded
def cmd_anchor(args: argparse.Namespace, out: TextIO) -> int:
    if not Path(args.main_key_file).is_file():
        return error(f"no main-chain key at {args.main_key_file}")
    key: SigningKey = load_or_create_key(Path(args.main_key_file))
    witnesses = [Witness(folder) for folder in args.witness]
    with (
        open_ledger(args.ledger) as ledger,
        MainChain(args.main, signing_key=key, witnesses=witnesses) as main,
    ):
        try:
            block = anchor_ledger(ledger, main, witnesses)
        except AnchorRefused as exc:
            out.write(f"REFUSED: {exc}\n")
            return EXIT_FAILED
        c = block.checkpoint
        out.write(f"anchored {c.origin} size {c.size} at height {block.height}\n")
    return EXIT_OK


def cmd_verify_anchored(base: Command, args: argparse.Namespace, out: TextIO) -> int:
    """``ledger verify``, then with ``--anchored-in`` the ledger against its anchors."""
    kept = None
    if args.anchored_in is not None:
        try:
            MainChain(args.anchored_in, read_only=True).close()
            kept = kept_checkpoint(args.main_checkpoint)
        except MainChainError as exc:
            return error(str(exc))
        except (OSError, NoteError) as exc:
            return error(f"--main-checkpoint {args.main_checkpoint}: {exc}")
    code = base(args, out)
    if code != EXIT_OK or args.anchored_in is None:
        return code
    try:
        with open_ledger(args.ledger) as ledger:
            trusted = args.trusted_key and ledger.trusted_verifier(args.trusted_key)
            report = check_anchored(
                ledger,
                args.anchored_in,
                trusted or None,
                main_key=args.main_key,
                main_checkpoint=kept,
                witnessed=witness_rule(args),
            )
    except (LedgerError, CheckpointError) as exc:
        return error(str(exc))
    out.write(f"{report}\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def add_anchor_commands(
    groups: argparse._SubParsersAction[Any], verify: argparse.ArgumentParser
) -> None:
    """Register ``anchor``, and ``--anchored-in`` on ``ledger verify``."""
    verify.add_argument(
        "--anchored-in",
        metavar="MAIN",
        help="a main chain: the ledger must hold every checkpoint anchored there "
        "for its origin, each cosigned by the policy's witness quorum",
    )
    verify.add_argument(
        "--main-key",
        type=vkey,
        help="with --anchored-in: the main chain's vkey, got out of band",
    )
    verify.add_argument(
        "--main-checkpoint",
        metavar="FILE",
        help="with --anchored-in: a main-chain checkpoint you kept; the main "
        "chain must hold it (else a rollback of the main chain goes unseen)",
    )
    add_witness_rule_options(verify)
    verify.set_defaults(
        func=functools.partial(cmd_verify_anchored, verify.get_default("func"))
    )

    anchor = groups.add_parser("anchor", help="anchor a ledger in a main chain")
    anchor.add_argument("ledger")
    anchor.add_argument("--main", required=True)
    anchor.add_argument("--main-key-file", required=True)
    anchor.add_argument("--witness", action="append", required=True, metavar="DIR")
    anchor.set_defaults(func=cmd_anchor)

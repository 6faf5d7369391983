"""``flchain main ingest|cosign`` and the ``--witnessed``/``--max-age`` options
that demand a witness quorum on the main chain's own checkpoint.

``ingest SPOOL`` appends the anchor requests ServerApps spooled
(:mod:`~flchain_flwr.ledger.mainingest`); ``cosign`` asks the witnesses to
cosign the main chain's current checkpoint again (after refusals, or to see a
truncated main chain refused). Exit codes as in :mod:`flchain_flwr.cli`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, TextIO

from .cli_common import EXIT_FAILED, EXIT_OK
from .ledger.anchorblock import AnchorError
from .ledger.keys import load_or_create_key
from .ledger.mainchain import MainChain
from .ledger.mainingest import ingest_spool
from .ledger.mainverify import WitnessRule
from .ledger.mainwitness import main_witnessing
from .ledger.witness import Witness
from .numbertext import decimal_number


def add_witness_rule_options(parser: argparse.ArgumentParser) -> None:
    """``--witnessed`` and ``--max-age`` on a verify command."""
    parser.add_argument(
        "--witnessed",
        action="store_true",
        help="demand a quorum of the policy's witnesses on the main chain's own "
        "checkpoint (so a forked or truncated main chain fails)",
    )
    parser.add_argument(
        "--max-age",
        type=_seconds,
        metavar="SECONDS",
        help="implies --witnessed: a quorum of those cosignatures is at most "
        "this old (so an old cosigned checkpoint of a rolled-back main chain fails)",
    )


def witness_rule(args: argparse.Namespace) -> WitnessRule | None:
    """The demand ``--witnessed``/``--max-age`` make (now: this machine's clock)."""
    if args.max_age is not None:
        return WitnessRule(args.max_age, time.time())
    return WitnessRule() if args.witnessed else None


def _seconds(text: str) -> float:
    try:
        value = decimal_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text[:40]} is not seconds > 0")
    return value


def _open(args: argparse.Namespace) -> MainChain:
    if not Path(args.key).is_file():
        raise OSError(2, "no main-chain key file", args.key)
    witnesses = [Witness(folder) for folder in args.witness]
    return MainChain(
        args.main, signing_key=load_or_create_key(Path(args.key)), witnesses=witnesses
    )


def cmd_main_ingest(args: argparse.Namespace, out: TextIO) -> int:
    """Append a spool's anchor requests; exit 1 if one was rejected."""
    with _open(args) as main:
        results = ingest_spool(main, args.spool)
        for result in results:
            out.write(f"{result}\n")
        for refusal in main.witness_refusals:
            out.write(f"witness refused the main checkpoint: {refusal}\n")
        rejected = sum(r.outcome == "rejected" for r in results)
        out.write(
            f"{len(results) - rejected} ingested, {rejected} rejected; main chain "
            f"{main.chain_id} has {len(main)} blocks\n"
        )
    return EXIT_FAILED if rejected else EXIT_OK


def cmd_main_cosign(args: argparse.Namespace, out: TextIO) -> int:
    """Have the witnesses cosign the main checkpoint; exit 1 below the quorum."""
    with _open(args) as main:
        note = main.cosign_checkpoint()
        for refusal in main.witness_refusals:
            out.write(f"REFUSED {refusal}\n")
        try:
            out.write(f"OK: {main_witnessing(note, main.policy).require()}\n")
        except AnchorError as exc:
            out.write(f"FAILED: {exc}\n")
            return EXIT_FAILED
    return EXIT_OK


def add_main_witness_commands(main: argparse._SubParsersAction[Any], wrap: Any) -> None:
    """Register ``main ingest`` and ``main cosign`` (``wrap``: the error guard)."""
    for name, func, text in (
        ("ingest", cmd_main_ingest, "append the anchor requests of a spool folder"),
        ("cosign", cmd_main_cosign, "have the witnesses cosign the main checkpoint"),
    ):
        parser = main.add_parser(name, help=text)
        if name == "ingest":
            parser.add_argument("spool")
            parser.add_argument("--main", required=True)
        else:
            parser.add_argument("main")
        parser.add_argument("--key", required=True, help="the main chain's key file")
        parser.add_argument(
            "--witness",
            action="append",
            default=[],
            metavar="DIR",
            help="a witness folder, to cosign the main chain's checkpoint",
        )
        parser.set_defaults(func=wrap(func))

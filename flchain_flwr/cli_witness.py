"""``flchain witness init|add-log|request|cosign``: a checkpoint witness kept
in a folder, and the tlog-witness requests it answers.

``request`` writes a ledger's add-checkpoint body; ``cosign`` answers one from
the witness's folder. Exit codes as in :mod:`flchain_flwr.cli`: 0 success, 1
the witness refused, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    error,
    guarded,
    natural,
    open_ledger,
    read_input,
    vkey,
)
from .ledger.checkpoint import CheckpointError, parse_checkpoint
from .ledger.notes import read_note
from .ledger.rfc6962 import HashTree
from .ledger.witness import CosignRequest, Witness
from .ledger.witnessrequest import MAX_REQUEST_BYTES


@guarded
def cmd_witness_init(args: argparse.Namespace, out: TextIO) -> int:
    witness = Witness.init(
        args.folder, args.name, logs=args.log, trust_on_first_use=args.tofu
    )
    out.write(f"{witness.key}\n")
    return EXIT_OK


@guarded
def cmd_witness_add_log(args: argparse.Namespace, out: TextIO) -> int:
    Witness(args.folder).add_log(args.vkey)
    out.write(f"trusting {args.vkey} for {args.vkey.name}\n")
    return EXIT_OK


@guarded
def cmd_witness_request(args: argparse.Namespace, out: TextIO) -> int:
    with open_ledger(args.ledger) as ledger:
        path = ledger.checkpoint_path
        signed = read_note(path)
        try:
            size = parse_checkpoint(signed.text).size
        except CheckpointError as exc:
            return error(f"{path}: {exc}")
        # Read after the checkpoint: a live writer may have committed more.
        hashes = ledger.block_hashes()
        if size > len(hashes):
            return error(
                f"the checkpoint {path} covers {size} blocks, the ledger holds "
                f"{len(hashes)}"
            )
        if not args.old <= size:
            return error(f"--old {args.old} is above the checkpoint's {size} blocks")
        tree = HashTree(bytes.fromhex(digest) for digest in hashes[:size])
        proof = tuple(tree.consistency(args.old, size))
    note = signed.encode().decode("utf-8")
    out.write(CosignRequest(args.old, note, proof).encode().decode())
    return EXIT_OK


@guarded
def cmd_witness_cosign(args: argparse.Namespace, out: TextIO) -> int:
    witness = Witness(args.folder)
    log_key = None if args.log_key is None else args.log_key.encode()
    found = witness.answer(read_input(args.request, MAX_REQUEST_BYTES), log_key)
    if found.status == 400:
        return error(found.reason)
    if found.status != 200:
        out.write(f"REFUSED ({found.status}): {found.reason}\n")
        return EXIT_FAILED
    out.write(found.body.decode())
    return EXIT_OK


def add_witness_commands(groups: argparse._SubParsersAction[Any]) -> None:
    """Register ``flchain witness`` and its commands."""
    witness = groups.add_parser("witness", help="a checkpoint witness over files")
    sub = witness.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a witness folder and key")
    init.add_argument("folder")
    init.add_argument("--name", required=True, help="the witness's key name")
    init.add_argument(
        "--log", type=vkey, action="append", default=[], help="a log vkey to trust"
    )
    init.add_argument(
        "--trust-on-first-use",
        dest="tofu",
        action="store_true",
        help="learn an unknown origin's key from its first request",
    )
    init.set_defaults(func=cmd_witness_init)
    add = sub.add_parser("add-log", help="trust a log's vkey for its origin")
    add.add_argument("folder")
    add.add_argument("vkey", type=vkey)
    add.set_defaults(func=cmd_witness_add_log)
    request = sub.add_parser(
        "request", help="a tlog-witness add-checkpoint body for a ledger"
    )
    request.add_argument("ledger")
    request.add_argument("--old", type=natural, default=0, help="the witness's size")
    request.set_defaults(func=cmd_witness_request)
    cosign = sub.add_parser("cosign", help="answer a request ('-' = stdin)")
    cosign.add_argument("folder")
    cosign.add_argument("request")
    cosign.add_argument(
        "--log-key",
        type=vkey,
        help="the log's vkey, for a trust-on-first-use witness new to the origin",
    )
    cosign.set_defaults(func=cmd_witness_cosign)

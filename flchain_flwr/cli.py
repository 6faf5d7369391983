"""The ``flchain`` command line.

``flchain ledger show|verify|proof|check-proof|export|rewards``. Exit codes:
0 success, 1 a check failed (verify, check-proof), 2 bad input (missing file,
not a ledger, unknown block or digest, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .ledger import (
    Block,
    InvalidProof,
    Ledger,
    LedgerError,
    check_proof,
    reward_shares,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _open(path: str) -> Ledger:
    return Ledger(path, create=False)


def _block_summary(block: Any) -> dict[str, Any]:
    header, body = block.header, block.body
    return {
        "height": block.height,
        "hash": block.hash,
        "model_version": header["model_version"],
        "base_version": header["base_version"],
        "sim_time": header["sim_time"],
        "wall_time": header["wall_time"],
        "model_hash": header["model_hash"],
        "updates_root": header["updates_root"],
        "included": len(body["included"]),
        "rejected": len(body["rejected"]),
        "votes": len(body["votes"]),
    }


def _block_record(block: Block) -> dict[str, Any]:
    """A stored block as JSON-ready data: what `show --height` and `export` print."""
    return {
        "height": block.height,
        "hash": block.hash,
        "signature": block.signature,
        "header": block.header,
        "body": block.body,
    }


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        if args.height is not None:
            record = _block_record(ledger.block(args.height))
            out.write(json.dumps(record, indent=2) + "\n")
            return EXIT_OK
        out.write(f"chain {ledger.chain_id}: {len(ledger)} blocks\n")
        out.write(
            f"{'height':>6} {'version':>7} {'upd':>4} {'rej':>4} {'votes':>5}  hash\n"
        )
        for block in ledger.blocks():
            s = _block_summary(block)
            out.write(
                f"{s['height']:>6} {s['model_version']:>7} {s['included']:>4} "
                f"{s['rejected']:>4} {s['votes']:>5}  {s['hash'][:16]}…\n"
            )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        report = ledger.verify(
            trusted_key=args.trusted_key, check_models=not args.no_models
        )
    out.write(f"{report}\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_proof(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        if args.update is not None:
            proof = ledger.prove_update(args.update)
        else:
            prior, *later = args.consistency
            proof = ledger.prove_consistency(prior, later[0] if later else None)
    out.write(json.dumps(proof, indent=2) + "\n")
    return EXIT_OK


def cmd_check_proof(args: argparse.Namespace, out: TextIO) -> int:
    try:
        text = sys.stdin.read() if args.proof == "-" else Path(args.proof).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read proof: {exc}") from None
    try:
        proof = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"proof is not JSON: {exc}") from None
    if not isinstance(proof, dict):
        raise LedgerError("proof must be a JSON object")
    try:
        statement = check_proof(proof)
    except InvalidProof as exc:
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid: {statement}\n")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        for block in ledger.blocks():
            out.write(json.dumps(_block_record(block), sort_keys=True) + "\n")
    return EXIT_OK


def cmd_rewards(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        shares = reward_shares(
            block.body["contributions"]
            for block in ledger.blocks()
            if args.start <= block.height
            and (args.end is None or block.height <= args.end)
        )
    if args.json:
        out.write(json.dumps([vars(s) for s in shares], indent=2) + "\n")
        return EXIT_OK
    out.write(f"{'node':>20} {'blocks':>6} {'relevance':>9} {'share':>7}\n")
    for s in shares:
        out.write(
            f"{s.node_id:>20} {s.blocks:>6} {s.mean_relevance:>9.3f} {s.share:>7.2%}\n"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flchain", description="flchain-flwr tools")
    groups = parser.add_subparsers(dest="group", required=True)
    ledger = groups.add_parser("ledger", help="inspect and verify a ledger")
    sub = ledger.add_subparsers(dest="command", required=True)

    show = sub.add_parser("show", help="list blocks, or print one block")
    show.add_argument("ledger")
    show.add_argument("--height", type=int)
    show.set_defaults(func=cmd_show)

    verify = sub.add_parser(
        "verify", help="verify links, hashes, roots, signatures, models"
    )
    verify.add_argument("ledger")
    verify.add_argument("--trusted-key", help="hex Ed25519 key the leader must have")
    verify.add_argument(
        "--no-models", action="store_true", help="skip model blob hashes"
    )
    verify.set_defaults(func=cmd_verify)

    proof = sub.add_parser("proof", help="inclusion or consistency proof, as JSON")
    proof.add_argument("ledger")
    which = proof.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--update", metavar="DIGEST", help="prove an update is in a block"
    )
    which.add_argument(
        "--consistency",
        type=int,
        nargs="+",
        metavar=("PRIOR", "LATER"),
        help="prove the first PRIOR blocks are a prefix of the first LATER",
    )
    proof.set_defaults(func=cmd_proof)

    check = sub.add_parser("check-proof", help="check a proof offline ('-' = stdin)")
    check.add_argument("proof")
    check.set_defaults(func=cmd_check_proof)

    export = sub.add_parser("export", help="every block as JSON lines")
    export.add_argument("ledger")
    export.set_defaults(func=cmd_export)

    rewards = sub.add_parser(
        "rewards", help="reward shares from recorded contributions"
    )
    rewards.add_argument("ledger")
    rewards.add_argument("--from", dest="start", type=int, default=0)
    rewards.add_argument("--to", dest="end", type=int)
    rewards.add_argument("--json", action="store_true")
    rewards.set_defaults(func=cmd_rewards)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``flchain`` console script."""
    args = build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if getattr(args, "consistency", None) is not None and len(args.consistency) > 2:
        sys.stderr.write("flchain: --consistency takes PRIOR [LATER]\n")
        return EXIT_USAGE
    try:
        return int(args.func(args, stream))
    except LedgerError as exc:
        sys.stderr.write(f"flchain: {exc}\n")
        return EXIT_USAGE
    except (KeyError, TypeError, ValueError) as exc:  # stored data of the wrong shape
        sys.stderr.write(
            f"flchain: the ledger's data is malformed ({exc!r}); "
            "run `flchain ledger verify` to find the bad block\n"
        )
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

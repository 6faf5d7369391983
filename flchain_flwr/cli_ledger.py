"""``flchain ledger show|verify|proof|check-proof|export|rewards``: a ledger's
blocks, checks, proofs and rewards on the command line.

Exit codes as :mod:`flchain_flwr.cli` documents them: 0 success, 1 a check
failed (verify, check-proof), 2 bad input, 3 ``verify --replay`` could not
replay every block.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from .cli_common import (
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_OK,
    error,
    height,
    open_ledger,
    public_key,
    read_input,
)
from .ledger import (
    Block,
    InvalidProof,
    Ledger,
    check_proof,
    reward_shares,
)
from .ledger.inputfile import irregular_problem, read_head
from .ledger.merkle import MAX_PROOF_BYTES, MalformedProof, parse_proof
from .ledger.notes import MAX_NOTE_BYTES
from .ledger.replay import replay
from .ledger.rewards import credited


def _block_summary(block: Any) -> dict[str, Any]:
    header, body = block.header, block.body
    return {
        "height": block.height,
        "hash": block.hash,
        "model_version": header["model_version"],
        "base_version": header["base_version"],
        "sim_time": header["sim_time"],
        "wall_time": header.get("wall_time"),  # format 1 only
        "model_hash": header["model_hash"],
        "updates_root": header["updates_root"],
        "included": len(body["included"]),
        "rejected": len(body["rejected"]),
        "votes": len(body["votes"]),
    }


def _block_record(block: Block, ledger: Ledger) -> dict[str, Any]:
    """A stored block as JSON-ready data: what `show --height` and `export`
    print; with its committee's header signatures when it has any (its
    view-change certificates and evidence are in its body)."""
    record = {
        "height": block.height,
        "hash": block.hash,
        "signature": block.signature,
        "header": block.header,
        "body": block.body,
    }
    signatures = ledger.header_signatures(block.height)
    return record if signatures is None else {**record, "header_signatures": signatures}


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    with open_ledger(args.ledger) as ledger:
        if args.height is not None:
            record = _block_record(ledger.block(args.height), ledger)
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
    # Bad input, exit 2: Ledger.verify would report the file unread, a FAILED check.
    if args.checkpoint is not None:
        problem = irregular_problem(args.checkpoint)
        if problem is not None:
            return error(f"checkpoint {problem}")
        if not Path(args.checkpoint).is_file():
            return error(f"no checkpoint file at {args.checkpoint}")
    with open_ledger(args.ledger) as ledger:
        report = ledger.verify(
            trusted_key=args.trusted_key,
            checkpoint=args.checkpoint,
            check_models=not args.no_models,
        )
        out.write(f"{report}\n")
        if not report.ok:
            return EXIT_FAILED
        if args.replay:
            replayed = replay(ledger)
            out.write(f"{replayed}\n")
            if not replayed.ok:
                return EXIT_FAILED
            if not replayed.complete:
                return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_proof(args: argparse.Namespace, out: TextIO) -> int:
    with open_ledger(args.ledger) as ledger:
        if args.update is not None:
            proof = ledger.prove_update(args.update, args.size)
        else:
            prior, *later = args.consistency
            proof = ledger.prove_consistency(prior, later[0] if later else None)
    out.write(json.dumps(proof, indent=2) + "\n")
    return EXIT_OK


def cmd_check_proof(args: argparse.Namespace, out: TextIO) -> int:
    if args.trusted_key is None and args.checkpoint is None:
        return error(
            "check-proof needs --trusted-key or --checkpoint: a proof's own roots "
            "do not say whose ledger it came from"
        )
    checkpoint = None
    if args.checkpoint is not None:
        try:
            checkpoint = read_head(args.checkpoint, MAX_NOTE_BYTES)
        except OSError as exc:
            why = exc.strerror or exc
            return error(f"cannot read checkpoint {args.checkpoint}: {why}")
    name = "from stdin" if args.proof == "-" else args.proof
    try:
        text = read_input(args.proof, MAX_PROOF_BYTES)
    except OSError as exc:
        return error(f"cannot read proof {name}: {exc.strerror or exc}")
    try:
        statement = check_proof(
            parse_proof(text),
            trusted_key=args.trusted_key,
            checkpoint=checkpoint,
            chain_id=args.chain_id,
            pov=args.pov,
        )
    except MalformedProof as exc:  # not a proof at all: bad input, exit 2
        return error(f"malformed proof {name}: {exc}")
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        return error(f"malformed proof {name}: {exc!r}")
    except InvalidProof as exc:  # a proof that does not hold: a failed check
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid: {statement}\n")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with open_ledger(args.ledger) as ledger:
        for block in ledger.blocks():
            out.write(json.dumps(_block_record(block, ledger), sort_keys=True) + "\n")
    return EXIT_OK


def cmd_rewards(args: argparse.Namespace, out: TextIO) -> int:
    with open_ledger(args.ledger) as ledger:
        shares = reward_shares(
            credited(block.body)
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


def add_ledger_commands(
    groups: argparse._SubParsersAction[Any],
) -> argparse.ArgumentParser:
    """Register ``flchain ledger``'s commands; the ``verify`` parser, which the
    anchoring commands extend with ``--anchored-in``."""
    ledger = groups.add_parser("ledger", help="inspect and verify a ledger")
    sub = ledger.add_subparsers(dest="command", required=True)

    show = sub.add_parser("show", help="list blocks, or print one block")
    show.add_argument("ledger")
    show.add_argument("--height", type=height)
    show.set_defaults(func=cmd_show)

    verify: argparse.ArgumentParser = sub.add_parser(
        "verify", help="verify links, hashes, roots, signatures, models"
    )
    verify.add_argument("ledger")
    verify.add_argument(
        "--trusted-key",
        type=public_key,
        help="the ledger signer's key, got out of band (hex Ed25519 or a "
        "signed-note vkey): it must have signed the genesis block (every block "
        "outside PoV) and the checkpoint",
    )
    verify.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a signed checkpoint kept apart from the ledger: the ledger's first "
        "SIZE blocks must have its root (default with --trusted-key: the one "
        "beside the ledger, if any)",
    )
    verify.add_argument(
        "--no-models", action="store_true", help="skip model blob hashes"
    )
    verify.add_argument(
        "--replay",
        action="store_true",
        help="recompute every model from its parent and stored updates "
        "(PoVStrategy's: check the updates, not the model)",
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
        type=height,
        nargs="+",
        metavar=("PRIOR", "LATER"),
        help="prove the first PRIOR blocks are a prefix of the first LATER",
    )
    proof.add_argument(
        "--size",
        type=height,
        help="with --update: prove against the log of the first SIZE blocks "
        "(to check with a checkpoint of that size)",
    )
    proof.set_defaults(func=cmd_proof)

    check = sub.add_parser(
        "check-proof",
        help="check a proof offline ('-' = stdin) against a trusted key or checkpoint",
    )
    check.add_argument("proof")
    check.add_argument(
        "--trusted-key",
        type=public_key,
        help="the ledger signer's key: the proof's checkpoint must be signed by it",
    )
    check.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a checkpoint you hold: the proof's log must be exactly its tree "
        "(its signature is checked too if --trusted-key is given)",
    )
    check.add_argument(
        "--chain-id",
        help="the chain the proof must be about (a hex --trusted-key signs every "
        "chain of its holder; a vkey's name fixes the chain already)",
    )
    check.add_argument(
        "--pov",
        action="store_true",
        help="the chain is a PoV chain: its blocks are signed by rotating leaders, "
        "not the trusted key (the trusted checkpoint vouches for them, and a "
        "quorum-signed chain's committee signatures when the proof carries them)",
    )
    check.set_defaults(func=cmd_check_proof)

    export = sub.add_parser("export", help="every block as JSON lines")
    export.add_argument("ledger")
    export.set_defaults(func=cmd_export)

    rewards = sub.add_parser(
        "rewards", help="reward shares from recorded contributions"
    )
    rewards.add_argument("ledger")
    rewards.add_argument("--from", dest="start", type=height, default=0)
    rewards.add_argument("--to", dest="end", type=height)
    rewards.add_argument("--json", action="store_true")
    rewards.set_defaults(func=cmd_rewards)
    return verify

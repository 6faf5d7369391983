"""``flchain main init|show|verify|prove|check-proof``: a main chain of
anchored checkpoints, its checks and its anchor proofs on the command line.

``main ingest|cosign`` are registered here too, from
:mod:`flchain_flwr.cli_mainwit`. Exit codes as in :mod:`flchain_flwr.cli`: 0
success, 1 a check failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    cosigner,
    error,
    guarded,
    natural,
    read_input,
    vkey,
)
from .cli_mainwit import (
    add_main_witness_commands,
    add_witness_rule_options,
    witness_rule,
)
from .ledger.anchorblock import AnchorError, AnchorPolicy
from .ledger.anchorproof import check_anchor_proof
from .ledger.cosignature import parse_cosigner_key
from .ledger.keys import load_or_create_key
from .ledger.mainchain import MainChain
from .ledger.maindb import AnchorRefused
from .ledger.merkle import MAX_PROOF_BYTES, InvalidProof, MalformedProof, parse_proof
from .ledger.notes import MAX_NOTE_BYTES, NoteError, SignedNote, parse_note


def kept_checkpoint(path: str | None) -> SignedNote | None:
    """The main-chain checkpoint a verifier kept (``--main-checkpoint``)."""
    return None if path is None else parse_note(read_input(path, MAX_NOTE_BYTES))


@guarded
def cmd_main_init(args: argparse.Namespace, out: TextIO) -> int:
    policy = AnchorPolicy(
        tuple(parse_cosigner_key(k) for k in args.witness), args.quorum
    )
    if Path(args.main).exists():
        return error(f"{args.main} exists already")
    key = load_or_create_key(Path(args.key))
    main = MainChain.create(
        args.main, chain_id=args.chain_id, policy=policy, signing_key=key
    )
    with main:
        out.write(f"{main.public_key}\n")
    return EXIT_OK


@guarded
def cmd_main_show(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main, read_only=True) as main:
        out.write(
            f"main chain {main.chain_id} ({main.public_key}): {len(main)} blocks, "
            f"quorum {main.policy.quorum} of {len(main.policy.witnesses)}\n"
        )
        for block in main.blocks():
            if block.kind == "genesis":
                continue
            c = block.checkpoint
            out.write(f"{block.height:>6}  {c.origin}  size {c.size}  {c.root.hex()}\n")
    return EXIT_OK


@guarded
def cmd_main_verify(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main, read_only=True) as main:
        if args.main_key is not None and args.main_key != main.public_key:
            out.write(f"FAILED: the main chain's key is {main.public_key}\n")
            return EXIT_FAILED
        try:
            pinned = kept_checkpoint(args.main_checkpoint)
        except NoteError as exc:
            return error(f"--main-checkpoint {args.main_checkpoint}: {exc}")
        try:
            out.write(
                f"OK: {main.verify(pinned=pinned, witnessed=witness_rule(args))}\n"
            )
        except AnchorRefused as exc:
            out.write(f"FAILED: {exc}\n")
            return EXIT_FAILED
    return EXIT_OK


@guarded
def cmd_main_prove(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main, read_only=True) as main:
        proof = main.prove_anchor(args.height)
    out.write(json.dumps(proof, indent=2) + "\n")
    return EXIT_OK


@guarded
def cmd_main_check_proof(args: argparse.Namespace, out: TextIO) -> int:
    try:
        proof: dict[str, Any] = parse_proof(read_input(args.proof, MAX_PROOF_BYTES))
    except InvalidProof as exc:
        return error(f"malformed proof {args.proof}: {exc}")
    try:
        found = check_anchor_proof(proof, args.main_key, args.log_key)
        rule = witness_rule(args)
        if rule is not None:
            cosigned = found.main_witnessing.require(rule.max_age, rule.now)
            found_text = f"{found}; main chain witnessing: {cosigned}"
        else:
            found_text = str(found)
    except MalformedProof as exc:
        return error(f"malformed proof {args.proof}: {exc}")
    except AnchorError as exc:
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid: {found_text}\n")
    return EXIT_OK


def add_main_commands(groups: argparse._SubParsersAction[Any]) -> None:
    """Register ``flchain main`` and its commands, ``ingest`` and ``cosign`` too."""
    main = groups.add_parser("main", help="a main chain of anchored checkpoints")
    msub = main.add_subparsers(dest="command", required=True)
    minit = msub.add_parser("init", help="create a main chain with its policy")
    minit.add_argument("main")
    minit.add_argument("--chain-id", required=True)
    minit.add_argument("--key", required=True, help="its key file (created if new)")
    minit.add_argument("--witness", type=cosigner, action="append", required=True)
    minit.add_argument("--quorum", type=natural, required=True)
    minit.set_defaults(func=cmd_main_init)
    show = msub.add_parser("show", help="list anchored checkpoints")
    show.add_argument("main")
    show.set_defaults(func=cmd_main_show)
    mverify = msub.add_parser("verify", help="check links, anchors, checkpoint")
    mverify.add_argument("main")
    mverify.add_argument("--main-key", type=vkey)
    mverify.add_argument(
        "--main-checkpoint",
        metavar="FILE",
        help="a main-chain checkpoint you kept: the chain must hold it",
    )
    add_witness_rule_options(mverify)
    mverify.set_defaults(func=cmd_main_verify)
    prove = msub.add_parser("prove", help="proof of one anchor block, as JSON")
    prove.add_argument("main")
    prove.add_argument("height", type=natural)
    prove.set_defaults(func=cmd_main_prove)
    check = msub.add_parser("check-proof", help="check an anchor proof offline")
    check.add_argument("proof")
    check.add_argument("--main-key", type=vkey, required=True)
    check.add_argument("--log-key", type=vkey)
    add_witness_rule_options(check)
    check.set_defaults(func=cmd_main_check_proof)
    add_main_witness_commands(msub, guarded)

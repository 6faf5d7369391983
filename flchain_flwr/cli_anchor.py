"""The ``flchain`` commands of witnesses, main chains and anchoring.

``flchain witness init|add-log|request|cosign``, ``flchain main
init|show|verify|prove|check-proof``, ``flchain anchor`` and ``flchain ledger
verify --anchored-in``. Exit codes as in :mod:`flchain_flwr.cli`: 0 success, 1
a check failed or a witness refused, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nacl.signing import SigningKey

from .cli import EXIT_FAILED, EXIT_OK, _error
from .cli_mainwit import (
    add_main_witness_commands,
    add_witness_rule_options,
    witness_rule,
)
from .ledger import Ledger, LedgerError
from .ledger.anchorblock import AnchorError, AnchorPolicy
from .ledger.anchorcheck import AnchoredReport, check_anchored
from .ledger.anchoring import anchor_ledger
from .ledger.anchorproof import check_anchor_proof
from .ledger.checkpoint import CheckpointError
from .ledger.cosignature import parse_cosigner_key
from .ledger.keys import load_or_create_key
from .ledger.mainchain import MainChain
from .ledger.maindb import AnchorRefused, MainChainError
from .ledger.mainwitness import main_witnessing
from .ledger.merkle import InvalidProof, MalformedProof, parse_proof
from .ledger.notes import (
    NoteError,
    SignedNote,
    VerifierKey,
    parse_note,
    parse_verifier_key,
)
from .ledger.rfc6962 import HashTree
from .ledger.witness import CosignRequest, Witness, WitnessError

Command = Callable[[argparse.Namespace, TextIO], int]


def _guarded(command: Command) -> Command:
    """Bad input of any kind this module knows: exit 2 with one line."""

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
            return _error(str(exc))
        except OSError as exc:
            return _error(f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "))

    return run


def _read(path: str) -> bytes:
    """A file's bytes, or stdin's for ``-``."""
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _vkey(text: str) -> VerifierKey:
    try:
        return parse_verifier_key(text.strip())
    except NoteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cosigner(text: str) -> str:
    try:
        return parse_cosigner_key(text.strip()).encode()
    except NoteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 2**63 - 1")
    return value


def _open_ledger(path: str) -> Ledger:
    return Ledger(path, create=False)


# ------------------------------------------------------------------ witness
@_guarded
def cmd_witness_init(args: argparse.Namespace, out: TextIO) -> int:
    witness = Witness.init(
        args.folder, args.name, logs=args.log, trust_on_first_use=args.tofu
    )
    out.write(f"{witness.key}\n")
    return EXIT_OK


@_guarded
def cmd_witness_add_log(args: argparse.Namespace, out: TextIO) -> int:
    Witness(args.folder).add_log(args.vkey)
    out.write(f"trusting {args.vkey} for {args.vkey.name}\n")
    return EXIT_OK


@_guarded
def cmd_witness_request(args: argparse.Namespace, out: TextIO) -> int:
    with _open_ledger(args.ledger) as ledger:
        note = ledger.checkpoint_path.read_text(encoding="utf-8")
        hashes = ledger.block_hashes()
        if not args.old <= len(hashes):
            return _error(
                f"--old {args.old} is above the ledger's {len(hashes)} blocks"
            )
        tree = HashTree(bytes.fromhex(digest) for digest in hashes)
        proof = tuple(tree.consistency(args.old, len(hashes)))
    out.write(CosignRequest(args.old, note, proof).encode().decode())
    return EXIT_OK


@_guarded
def cmd_witness_cosign(args: argparse.Namespace, out: TextIO) -> int:
    witness = Witness(args.folder)
    log_key = None if args.log_key is None else args.log_key.encode()
    found = witness.answer(_read(args.request), log_key)
    if found.status == 400:
        return _error(found.reason)
    if found.status != 200:
        out.write(f"REFUSED ({found.status}): {found.reason}\n")
        return EXIT_FAILED
    out.write(found.body.decode())
    return EXIT_OK


def _kept_checkpoint(path: str | None) -> SignedNote | None:
    """The main-chain checkpoint a verifier kept (``--main-checkpoint``)."""
    return None if path is None else parse_note(_read(path))


# --------------------------------------------------------------- main chain
@_guarded
def cmd_main_init(args: argparse.Namespace, out: TextIO) -> int:
    policy = AnchorPolicy(
        tuple(parse_cosigner_key(k) for k in args.witness), args.quorum
    )
    if Path(args.main).exists():
        return _error(f"{args.main} exists already")
    key = load_or_create_key(Path(args.key))
    main = MainChain.create(
        args.main, chain_id=args.chain_id, policy=policy, signing_key=key
    )
    with main:
        out.write(f"{main.public_key}\n")
    return EXIT_OK


@_guarded
def cmd_main_show(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main) as main:
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


@_guarded
def cmd_main_verify(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main) as main:
        if args.main_key is not None and args.main_key != main.public_key:
            out.write(f"FAILED: the main chain's key is {main.public_key}\n")
            return EXIT_FAILED
        try:
            pinned = _kept_checkpoint(args.main_checkpoint)
        except NoteError as exc:
            return _error(f"--main-checkpoint {args.main_checkpoint}: {exc}")
        try:
            out.write(
                f"OK: {main.verify(pinned=pinned, witnessed=witness_rule(args))}\n"
            )
        except AnchorRefused as exc:
            out.write(f"FAILED: {exc}\n")
            return EXIT_FAILED
    return EXIT_OK


@_guarded
def cmd_main_prove(args: argparse.Namespace, out: TextIO) -> int:
    with MainChain(args.main) as main:
        proof = main.prove_anchor(args.height)
    out.write(json.dumps(proof, indent=2) + "\n")
    return EXIT_OK


@_guarded
def cmd_main_check_proof(args: argparse.Namespace, out: TextIO) -> int:
    try:
        text = _read(args.proof).decode("utf-8")
        proof: dict[str, Any] = parse_proof(text)
    except (UnicodeDecodeError, InvalidProof) as exc:
        return _error(f"malformed proof {args.proof}: {exc}")
    try:
        found = check_anchor_proof(proof, args.main_key, args.log_key)
        rule = witness_rule(args)
        if rule is not None:
            cosigned = found.main_witnessing.require(rule.max_age, rule.now)
            found_text = f"{found}; main chain witnessing: {cosigned}"
        else:
            found_text = str(found)
    except MalformedProof as exc:
        return _error(f"malformed proof {args.proof}: {exc}")
    except AnchorError as exc:
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid: {found_text}\n")
    return EXIT_OK


# ---------------------------------------------------------------- anchoring
@_guarded
def cmd_anchor(args: argparse.Namespace, out: TextIO) -> int:
    if not Path(args.main_key_file).is_file():
        return _error(f"no main-chain key at {args.main_key_file}")
    key: SigningKey = load_or_create_key(Path(args.main_key_file))
    witnesses = [Witness(folder) for folder in args.witness]
    with (
        _open_ledger(args.ledger) as ledger,
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
            MainChain(args.anchored_in).close()
            kept = _kept_checkpoint(args.main_checkpoint)
        except MainChainError as exc:
            return _error(str(exc))
        except (OSError, NoteError) as exc:
            return _error(f"--main-checkpoint {args.main_checkpoint}: {exc}")
    code = base(args, out)
    if code != EXIT_OK or args.anchored_in is None:
        return code
    try:
        with _open_ledger(args.ledger) as ledger:
            trusted = args.trusted_key and ledger.trusted_verifier(args.trusted_key)
            report = check_anchored(
                ledger,
                args.anchored_in,
                trusted or None,
                main_key=args.main_key,
                main_checkpoint=kept,
            )
    except (LedgerError, CheckpointError) as exc:
        return _error(str(exc))
    rule = witness_rule(args)
    if report.ok and rule is not None:
        with MainChain(args.anchored_in) as main:
            try:
                main.verify(pinned=kept, witnessed=rule)
            except AnchorRefused as exc:
                out.write(f"FAILED: main chain {args.anchored_in}: {exc}\n")
                return EXIT_FAILED
            witnessed = main_witnessing(
                parse_note(main.checkpoint_path.read_bytes()), main.policy
            ).require(rule.max_age, rule.now)
        report = AnchoredReport(
            True, report.checked, f"{report.statement}; {witnessed}"
        )
    out.write(f"{report}\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def add_anchor_commands(
    groups: argparse._SubParsersAction[Any], verify: argparse.ArgumentParser
) -> None:
    """Register ``witness``, ``main`` and ``anchor``, and ``verify --anchored-in``."""
    verify.add_argument(
        "--anchored-in",
        metavar="MAIN",
        help="a main chain: the ledger must hold every checkpoint anchored there "
        "for its origin, each cosigned by the policy's witness quorum",
    )
    verify.add_argument(
        "--main-key",
        type=_vkey,
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

    witness = groups.add_parser("witness", help="a checkpoint witness over files")
    sub = witness.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a witness folder and key")
    init.add_argument("folder")
    init.add_argument("--name", required=True, help="the witness's key name")
    init.add_argument(
        "--log", type=_vkey, action="append", default=[], help="a log vkey to trust"
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
    add.add_argument("vkey", type=_vkey)
    add.set_defaults(func=cmd_witness_add_log)
    request = sub.add_parser(
        "request", help="a tlog-witness add-checkpoint body for a ledger"
    )
    request.add_argument("ledger")
    request.add_argument("--old", type=_natural, default=0, help="the witness's size")
    request.set_defaults(func=cmd_witness_request)
    cosign = sub.add_parser("cosign", help="answer a request ('-' = stdin)")
    cosign.add_argument("folder")
    cosign.add_argument("request")
    cosign.add_argument(
        "--log-key",
        type=_vkey,
        help="the log's vkey, for a trust-on-first-use witness new to the origin",
    )
    cosign.set_defaults(func=cmd_witness_cosign)

    main = groups.add_parser("main", help="a main chain of anchored checkpoints")
    msub = main.add_subparsers(dest="command", required=True)
    minit = msub.add_parser("init", help="create a main chain with its policy")
    minit.add_argument("main")
    minit.add_argument("--chain-id", required=True)
    minit.add_argument("--key", required=True, help="its key file (created if new)")
    minit.add_argument("--witness", type=_cosigner, action="append", required=True)
    minit.add_argument("--quorum", type=_natural, required=True)
    minit.set_defaults(func=cmd_main_init)
    show = msub.add_parser("show", help="list anchored checkpoints")
    show.add_argument("main")
    show.set_defaults(func=cmd_main_show)
    mverify = msub.add_parser("verify", help="check links, anchors, checkpoint")
    mverify.add_argument("main")
    mverify.add_argument("--main-key", type=_vkey)
    mverify.add_argument(
        "--main-checkpoint",
        metavar="FILE",
        help="a main-chain checkpoint you kept: the chain must hold it",
    )
    add_witness_rule_options(mverify)
    mverify.set_defaults(func=cmd_main_verify)
    prove = msub.add_parser("prove", help="proof of one anchor block, as JSON")
    prove.add_argument("main")
    prove.add_argument("height", type=_natural)
    prove.set_defaults(func=cmd_main_prove)
    check = msub.add_parser("check-proof", help="check an anchor proof offline")
    check.add_argument("proof")
    check.add_argument("--main-key", type=_vkey, required=True)
    check.add_argument("--log-key", type=_vkey)
    add_witness_rule_options(check)
    check.set_defaults(func=cmd_main_check_proof)
    add_main_witness_commands(msub, _guarded)

    anchor = groups.add_parser("anchor", help="anchor a ledger in a main chain")
    anchor.add_argument("ledger")
    anchor.add_argument("--main", required=True)
    anchor.add_argument("--main-key-file", required=True)
    anchor.add_argument("--witness", action="append", required=True, metavar="DIR")
    anchor.set_defaults(func=cmd_anchor)

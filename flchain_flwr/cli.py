"""The ``flchain`` command line.

``flchain ledger show|verify|proof|check-proof|export|rewards``. Exit codes:
0 success, 1 a check failed (verify, check-proof), 2 bad input (missing file,
not a ledger, a damaged ledger file, unknown block or digest, a malformed
proof, bad arguments), 3 ``verify --replay`` found no fault but could not
replay every block (it says which, and why). Errors are one line on stderr,
never a traceback; set ``FLCHAIN_DEBUG=1`` to see the traceback of an error
nobody foresaw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from .cli_model import add_model_commands
from .ledger import (
    Block,
    InvalidProof,
    Ledger,
    LedgerError,
    check_proof,
    reward_shares,
)
from .ledger.merkle import MalformedProof, parse_proof
from .ledger.replay import replay
from .ledger.rewards import credited

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
MAX_HEIGHT: Final = 2**63 - 1
"""The largest height or block count an argument may name (SQLite's integers)."""
DEBUG_ENV: Final = "FLCHAIN_DEBUG"
"""Set (to anything but ``0`` or nothing) to see tracebacks of unforeseen errors."""


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
    with _open(args.ledger) as ledger:
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
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        return _error(f"no checkpoint file at {args.checkpoint}")
    with _open(args.ledger) as ledger:
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
    with _open(args.ledger) as ledger:
        if args.update is not None:
            proof = ledger.prove_update(args.update, args.size)
        else:
            prior, *later = args.consistency
            proof = ledger.prove_consistency(prior, later[0] if later else None)
    out.write(json.dumps(proof, indent=2) + "\n")
    return EXIT_OK


def cmd_check_proof(args: argparse.Namespace, out: TextIO) -> int:
    if args.trusted_key is None and args.checkpoint is None:
        return _error(
            "check-proof needs --trusted-key or --checkpoint: a proof's own roots "
            "do not say whose ledger it came from"
        )
    checkpoint = None
    if args.checkpoint is not None:
        try:
            checkpoint = Path(args.checkpoint).read_bytes()
        except OSError as exc:
            return _error(f"cannot read checkpoint {args.checkpoint}: {exc}")
    name = "from stdin" if args.proof == "-" else args.proof
    try:
        text = sys.stdin.read() if args.proof == "-" else Path(args.proof).read_text()
    except UnicodeDecodeError as exc:
        return _error(f"malformed proof {name}: not UTF-8 text ({exc})")
    except OSError as exc:
        return _error(f"cannot read proof {name}: {exc}")
    try:
        statement = check_proof(
            parse_proof(text),
            trusted_key=args.trusted_key,
            checkpoint=checkpoint,
            chain_id=args.chain_id,
            pov=args.pov,
        )
    except MalformedProof as exc:  # not a proof at all: bad input, exit 2
        return _error(f"malformed proof {name}: {exc}")
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        return _error(f"malformed proof {name}: {exc!r}")
    except InvalidProof as exc:  # a proof that does not hold: a failed check
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid: {statement}\n")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
        for block in ledger.blocks():
            out.write(json.dumps(_block_record(block, ledger), sort_keys=True) + "\n")
    return EXIT_OK


def cmd_rewards(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args.ledger) as ledger:
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


def _one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _error(message: str) -> int:
    """Write ``flchain: error: <message>`` as one line on stderr; exit code 2."""
    sys.stderr.write(f"flchain: error: {_one_line(message)}\n")
    return EXIT_USAGE


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of
    what is still buffered cannot fail a second time (Python's SIGPIPE recipe)."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (a capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _shown(text: str) -> str:
    """An argument as quoted in a message, cut short if long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _height(text: str) -> int:
    """A height or block count: an integer from 0 to :data:`MAX_HEIGHT`."""
    try:
        value = int(text)
    except ValueError:  # not an integer, or one too long for int() to convert
        if not text.strip().lstrip("+-").isdigit():
            raise argparse.ArgumentTypeError(
                f"not an integer: {_shown(text)}"
            ) from None
        value = -1
    if not 0 <= value <= MAX_HEIGHT:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not between 0 and 2**63 - 1"
        )
    return value


def _public_key(text: str) -> str:
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flchain", description="flchain-flwr tools")
    groups = parser.add_subparsers(dest="group", required=True)
    ledger = groups.add_parser("ledger", help="inspect and verify a ledger")
    sub = ledger.add_subparsers(dest="command", required=True)

    show = sub.add_parser("show", help="list blocks, or print one block")
    show.add_argument("ledger")
    show.add_argument("--height", type=_height)
    show.set_defaults(func=cmd_show)

    verify = sub.add_parser(
        "verify", help="verify links, hashes, roots, signatures, models"
    )
    verify.add_argument("ledger")
    verify.add_argument(
        "--trusted-key",
        type=_public_key,
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
        help="recompute every model from its parent and stored updates",
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
        type=_height,
        nargs="+",
        metavar=("PRIOR", "LATER"),
        help="prove the first PRIOR blocks are a prefix of the first LATER",
    )
    proof.add_argument(
        "--size",
        type=_height,
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
        type=_public_key,
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
    rewards.add_argument("--from", dest="start", type=_height, default=0)
    rewards.add_argument("--to", dest="end", type=_height)
    rewards.add_argument("--json", action="store_true")
    rewards.set_defaults(func=cmd_rewards)
    from .cli_anchor import add_anchor_commands  # here: cli_anchor imports cli

    add_anchor_commands(groups, verify)
    add_model_commands(groups)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``flchain`` console script: the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    stream = out if out is not None else sys.stdout
    if getattr(args, "consistency", None) is not None and len(args.consistency) > 2:
        return _error("--consistency takes PRIOR [LATER]")
    try:
        code = int(args.func(args, stream))
        stream.flush()  # a closed pipe or a full disk shows here, not at exit
        return code
    except LedgerError as exc:
        return _error(str(exc))
    except (KeyError, TypeError, ValueError) as exc:  # stored data of the wrong shape
        if _debugging():
            raise
        return _error(
            f"the ledger's data is malformed ({exc!r}); "
            "run `flchain ledger verify` to find the bad block"
        )
    except OSError as exc:  # writing the output failed: a full disk, a closed pipe
        if stream is sys.stdout:
            _discard_stdout()
        if isinstance(exc, BrokenPipeError):  # the reader left (`... | head`)
            return EXIT_USAGE
        return _error(f"cannot write the output: {exc}")
    except Exception as exc:  # a bug, or a failure nobody foresaw: still one line
        if _debugging():
            raise
        return _error(
            f"unexpected {type(exc).__name__}: {exc} "
            f"(set {DEBUG_ENV}=1 to see the traceback)"
        )


if __name__ == "__main__":
    sys.exit(main())

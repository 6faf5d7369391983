"""``flchain model prove|verify|market|anchor-market``: provenance bundles
and trading subchains on the command line.

``prove`` writes the bundle tying a model to the training block that made it
(:func:`~flchain_flwr.ledger.provenance_build.build_bundle`); ``verify``
checks one offline against keys the buyer holds and prints the run, block and
committee, what it checked under which keys, and what it did not check;
``market`` checks every record of a model-trading subchain and its checkpoint;
``anchor-market`` anchors one in a main chain through witness folders. Exit
codes as for ``flchain ledger``: 0 valid, 1 a check failed or an anchor was
refused, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Final, TextIO

from .cli_common import EXIT_FAILED, EXIT_OK, error, open_ledger
from .cli_mainwit import add_witness_rule_options, witness_rule
from .ledger.blocks import LedgerError
from .ledger.inputfile import irregular_problem, open_input, read_head
from .ledger.keys import load_or_create_key
from .ledger.mainchain import MainChain
from .ledger.maindb import AnchorRefused, MainChainError
from .ledger.notes import NoteError, parse_verifier_key, write_file_atomically
from .ledger.provenance import (
    MAX_BUNDLE_BYTES,
    TRUST_ROLES,
    BundleMalformed,
    ProvenanceError,
    parse_trust,
    verify_bundle,
)
from .ledger.provenance_build import build_bundle
from .ledger.trade_anchor import anchor_trading_chain
from .ledger.trade_records import TradeRefused
from .ledger.trading import TradingChain
from .ledger.witness import Witness, WitnessError

MAX_MODEL_BYTES: Final = 1 << 31
"""Largest model file hashed (2 GiB, read in chunks)."""
MAX_TRUST_BYTES: Final = 1 << 20
"""Largest trust file read (1 MiB of ``role=key`` lines)."""
_CHUNK: Final = 1 << 20


def _read(path: str, what: str, limit: int) -> bytes:
    """A file's bytes; ``OSError`` naming it if it cannot be read,
    ``ValueError`` if it holds more than ``limit`` (no more is read)."""
    try:
        data = read_head(path, limit)
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit} bytes")
    return data


def _file_hash(path: str) -> str:
    """The SHA-256 (hex) of the model file at ``path``, read in chunks;
    ``OSError`` naming it if it cannot be read, ``ValueError`` if it holds
    more than :data:`MAX_MODEL_BYTES` (no more is read)."""
    hasher, size = hashlib.sha256(), 0
    try:
        with open_input(path) as file:
            while size <= MAX_MODEL_BYTES and (chunk := file.read(_CHUNK)):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise OSError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if size > MAX_MODEL_BYTES:
        raise ValueError(f"model file {path} is larger than {MAX_MODEL_BYTES} bytes")
    return hasher.hexdigest()


def _model_hash(args: argparse.Namespace) -> str:
    if args.hash is not None:
        digest = str(args.hash).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"--hash {args.hash[:70]!r} is not a SHA-256 hex digest")
        return digest
    return _file_hash(args.model)


def _output_problem(args: argparse.Namespace) -> str | None:
    """Why ``-o`` must not be written over: it is not a regular file (a FIFO, a
    device, which the bundle's rename would replace), or it is the ledger or
    the main chain the bundle is read from."""
    problem = irregular_problem(args.output)
    if problem is not None:
        return f"-o {problem}"
    for source in (args.ledger, args.main):
        with contextlib.suppress(OSError):
            if os.path.samefile(args.output, source):
                return f"-o {args.output} is the chain {source} itself"
    return None


def cmd_prove(args: argparse.Namespace, out: TextIO) -> int:
    """Write the provenance bundle of a model."""
    problem = _output_problem(args)
    if problem is not None:
        return error(problem)
    try:
        digest = _model_hash(args)
        main = MainChain(args.main, read_only=True)
    except (OSError, ValueError, MainChainError) as exc:
        return error(str(exc))
    try:
        with open_ledger(args.ledger) as ledger:
            bundle = build_bundle(ledger, main, digest)
    except (LedgerError, MainChainError, OSError) as exc:
        return error(str(exc))
    finally:
        main.close()
    try:
        write_file_atomically(args.output, bundle, mode=0o644, overwrite=True)
    except OSError as exc:
        return error(f"cannot write {args.output}: {exc.strerror or exc}")
    out.write(f"wrote {args.output} ({len(bundle)} bytes) for model {digest}\n")
    return EXIT_OK


def _trust_entries(values: list[str]) -> list[str]:
    """``--trusted`` values, each ``role=key`` or ``@FILE`` of such lines."""
    entries: list[str] = []
    for value in values:
        if value.startswith("@"):
            try:
                text = _read(value[1:], "trust file", MAX_TRUST_BYTES).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"trust file {value[1:]} is not UTF-8") from None
            entries.extend(
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            )
        else:
            entries.append(value)
    return entries


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """Check a provenance bundle offline."""
    try:
        trust = parse_trust(_trust_entries(args.trusted))
        data = _read(args.bundle, "bundle", MAX_BUNDLE_BYTES)
        model = None if args.model is None else _file_hash(args.model)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    try:
        report = verify_bundle(data, trust, model, witness_rule(args))
    except BundleMalformed as exc:
        return error(f"malformed bundle {args.bundle}: {exc}")
    except ProvenanceError as exc:
        out.write(f"INVALID: {exc}\n")
        return EXIT_FAILED
    out.write(f"valid provenance bundle {args.bundle}\n{report}\n")
    return EXIT_OK


def cmd_market(args: argparse.Namespace, out: TextIO) -> int:
    """Check a model-trading subchain: every record and its checkpoint."""
    try:
        trusted = (
            None if args.trusted_key is None else parse_verifier_key(args.trusted_key)
        )
        chain = TradingChain(args.trade, read_only=True)
    except (NoteError, LedgerError) as exc:
        return error(str(exc))
    with chain:
        try:
            count, anchor, book = chain.verify(trusted)
        except TradeRefused as exc:
            out.write(f"INVALID: {exc}\n")
            return EXIT_FAILED
        except (sqlite3.Error, ValueError) as exc:
            return error(f"cannot read the trading chain {args.trade}: {exc}")
    trust = (
        "the trusted key"
        if trusted is not None
        else "the key the file records (self-consistent only: give --trusted-key)"
    )
    out.write(
        f"ok: {chain.origin}: {count} records ({len(book.offers)} offers, "
        f"{len(book.purchases)} purchases, {len(book.receipts)} receipts), each "
        f"signed by its party and following the records before it; {anchor} "
        f"({trust})\n"
    )
    return EXIT_OK


def cmd_anchor_market(args: argparse.Namespace, out: TextIO) -> int:
    """Anchor a trading subchain's checkpoint in a main chain, via witnesses."""
    if not Path(args.main_key_file).is_file():
        return error(f"no main-chain key at {args.main_key_file}")
    try:
        key = load_or_create_key(Path(args.main_key_file))
        witnesses = [Witness(folder) for folder in args.witness]
        chain = TradingChain(args.trade, create=False)
    except (LedgerError, WitnessError) as exc:
        return error(str(exc))
    try:
        main = MainChain(args.main, signing_key=key, witnesses=witnesses)
        with chain, main:
            block = anchor_trading_chain(chain, main, witnesses)
    except AnchorRefused as exc:
        out.write(f"REFUSED: {exc}\n")
        return EXIT_FAILED
    except (LedgerError, MainChainError, sqlite3.Error) as exc:
        return error(str(exc))
    checkpoint = block.checkpoint
    out.write(
        f"anchored {checkpoint.origin} size {checkpoint.size} at height "
        f"{block.height}\n"
    )
    return EXIT_OK


def add_model_commands(groups: Any) -> None:
    """Register ``flchain model prove|verify`` on the top-level subparsers."""
    model = groups.add_parser("model", help="provenance bundles of trained models")
    sub = model.add_subparsers(dest="command", required=True)

    prove = sub.add_parser(
        "prove", help="write the bundle tying a model to its training block"
    )
    prove.add_argument("--ledger", required=True, help="the training subchain")
    prove.add_argument("--main", required=True, help="the main chain it is anchored in")
    which = prove.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="FILE", help="the model blob file")
    which.add_argument("--hash", metavar="H", help="the model's SHA-256 (hex)")
    prove.add_argument("-o", "--output", required=True, metavar="BUNDLE")
    prove.set_defaults(func=cmd_prove)

    check = sub.add_parser(
        "verify", help="check a provenance bundle offline against trusted keys"
    )
    check.add_argument("bundle")
    check.add_argument(
        "--model", metavar="FILE", help="the model file: it must hash to the bundle's"
    )
    check.add_argument(
        "--trusted",
        action="append",
        required=True,
        metavar="ROLE=KEY",
        help=f"a key you hold, role one of {', '.join(TRUST_ROLES)}: main=<vkey> "
        "(required, the main chain's checkpoint key), witness=<cosigner vkey>, "
        "pool=<hex verifier key>, publisher=<hex key>; or @FILE of such lines",
    )
    add_witness_rule_options(check)
    check.set_defaults(func=cmd_verify)

    market = sub.add_parser(
        "market", help="check a model-trading subchain's records and checkpoint"
    )
    market.add_argument("trade", help="the trading subchain's SQLite file")
    market.add_argument(
        "--trusted-key", help="the market operator's checkpoint vkey, got out of band"
    )
    market.set_defaults(func=cmd_market)

    anchor = sub.add_parser(
        "anchor-market",
        help="anchor a trading subchain in a main chain through witnesses",
    )
    anchor.add_argument("trade", help="the trading subchain's SQLite file")
    anchor.add_argument("--main", required=True)
    anchor.add_argument("--main-key-file", required=True)
    anchor.add_argument("--witness", action="append", required=True, metavar="DIR")
    anchor.set_defaults(func=cmd_anchor_market)

"""Input files are evidence: the read and verify commands never change them,
never wait on them, and leave none of them open when they refuse one.

A ledger, main chain or trading chain is opened read-only, so a ``-wal`` or
``-journal`` that a writer killed mid-write left beside it is never folded
into it. An input that is not a regular file (a FIFO, a device) is refused
with one line before anything reads it: reading a FIFO waits for a writer
that may never come. Found by fuzzing the CLI's read side.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, LedgerError
from flchain_flwr.ledger.anchorblock import ENCODING, AnchorPolicy, block_hash
from flchain_flwr.ledger.canonical import encode
from flchain_flwr.ledger.cosignature import parse_cosigner_key
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.maindb import MainChainError
from flchain_flwr.ledger.notes import VerifierKey
from flchain_flwr.ledger.trading import TradingChain

from .ledger_helpers import (
    LEADER_KEY,
    TRUSTED,
    build_ledger,
    digest_of,
    flchain,
    init_main,
)

CRASH = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")  # journal mode: the file's own
db.execute("PRAGMA cache_size=1")  # a rollback journal's pages hit the file
db.execute("BEGIN IMMEDIATE")
for i in range(int(sys.argv[2])):
    db.execute("INSERT INTO meta VALUES (?, ?)", (f"crash-{i}", "x" * 200))
if sys.argv[3] == "commit":
    db.execute("COMMIT")
os._exit(0)  # killed: nothing closed, nothing checkpointed, nothing rolled back
"""
"""A writer killed after (``commit``) or during a transaction on a file."""


def crash_writer(path: Path, rows: int, commit: bool) -> None:
    argv = [str(path), str(rows), "commit" if commit else "open"]
    subprocess.run([sys.executable, "-c", CRASH, *argv], check=True, timeout=60)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes; a ``-shm`` file's bytes
    left out: SQLite's shared memory, where every reader marks what it reads
    (a read-only one too)."""
    return {
        str(p.relative_to(folder)): b"" if p.name.endswith("-shm") else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_evidence(folder: Path) -> dict[str, str]:
    """A ledger (with its checkpoint and a proof), a main chain and a trading
    chain in ``folder``: their paths, and the keys to check them with."""
    folder.mkdir()
    ledger = folder / "chain.db"
    build_ledger(ledger, blocks=4).close()
    code, proof = flchain("ledger", "proof", str(ledger), "--update", digest_of(201))
    assert code == 0
    (folder / "proof.json").write_text(proof)
    main, main_key, _ = init_main(folder)
    trade = folder / "trade.db"
    TradingChain(trade, chain_id="market", signing_key=LEADER_KEY).close()
    return {
        "ledger": str(ledger),
        "proof": str(folder / "proof.json"),
        "main": str(main),
        "main_key": main_key,
        "trade": str(trade),
    }


def read_commands(e: dict[str, str]) -> list[list[str]]:
    """Every command that only reads the files of :func:`make_evidence`."""
    ledger, main = e["ledger"], e["main"]
    return [
        ["ledger", "show", ledger],
        ["ledger", "show", ledger, "--height", "1"],
        ["ledger", "export", ledger],
        ["ledger", "rewards", ledger],
        ["ledger", "verify", ledger, "--trusted-key", TRUSTED],
        ["ledger", "verify", ledger, "--replay"],
        ["ledger", "proof", ledger, "--consistency", "1", "3"],
        ["ledger", "check-proof", e["proof"], "--checkpoint", f"{ledger}.checkpoint"],
        ["witness", "request", ledger],
        ["main", "show", main],
        ["main", "verify", main, "--main-key", e["main_key"]],
        ["model", "market", e["trade"]],
    ]


def test_reading_never_folds_a_killed_writers_wal_into_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each file's writer was killed after a commit: its ``-wal`` holds that
    commit, and its ``-shm`` the index. A reader that opened the file
    read-write folded the ``-wal`` into it on closing (the file changed) and
    removed both."""
    folder = tmp_path / "evidence ? #1 %20"  # a path a file: URI must quote
    e = make_evidence(folder)
    for name in ("ledger", "main", "trade"):  # a trading chain has no -wal
        crash_writer(Path(e[name]), rows=3, commit=True)
    for name in ("ledger", "main"):
        assert Path(f"{e[name]}-wal").stat().st_size > 0
    before = files(folder)
    capsys.readouterr()
    for argv in read_commands(e):
        code, _ = flchain(*argv)
        assert code in (0, 3), (argv, capsys.readouterr().err)  # 3: not replayable
        assert files(folder) == before, argv


def test_a_journal_left_mid_transaction_is_refused_not_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger in rollback-journal mode, and a trading chain (always in
    that mode), whose writer was killed mid-transaction: the file holds part
    of it, the ``-journal`` what it overwrote. Only a writer may roll that
    back; a reader refuses the file and leaves both."""
    path, trade = tmp_path / "chain.db", tmp_path / "trade.db"
    build_ledger(path, blocks=3).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    TradingChain(trade, chain_id="market", signing_key=LEADER_KEY).close()
    for crashed in (path, trade):
        crash_writer(crashed, rows=400, commit=False)
        assert Path(f"{crashed}-journal").stat().st_size > 0
    before = files(tmp_path)
    reads = [["ledger", c, str(path)] for c in ("show", "export", "rewards", "verify")]
    for argv in [*reads, ["model", "market", str(trade)]]:
        code, out = flchain(*argv)
        err = capsys.readouterr().err
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert "a writer left unfinished" in err, err
        assert files(tmp_path) == before, argv


def test_reading_a_closed_ledger_changes_nothing_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger closed cleanly: SQLite reads a WAL-mode file (every ledger)
    only through a ``-wal`` and ``-shm`` beside it, and a read-only reader
    creates them where they are missing and leaves them: an empty ``-wal``
    and its index, nothing else. In rollback-journal mode nothing appears."""
    e = make_evidence(tmp_path / "closed")
    before = files(tmp_path)
    for argv in read_commands(e):
        assert flchain(*argv)[0] in (0, 3), (argv, capsys.readouterr().err)
    after = files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    added = set(after) - set(before)
    assert added <= {
        f"closed/{name}.db{suffix}"
        for name in ("chain", "main", "trade")
        for suffix in ("-wal", "-shm")
    }
    assert all(after[k] == b"" for k in added)  # each -wal empty
    rollback = tmp_path / "rollback.db"
    build_ledger(rollback, blocks=3).close()
    with contextlib.closing(sqlite3.connect(rollback)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    before = files(tmp_path)
    for command in ("show", "export", "rewards", "verify"):
        assert flchain("ledger", command, str(rollback))[0] == 0
    assert files(tmp_path) == before


def run_unblocked(argv: list[str], fifo: Path) -> tuple[int, str]:
    """The CLI in a thread; if it still runs after 20 s it waits on ``fifo``:
    a writer then opens and closes it (so the reader reads its end), and the
    test fails instead of hanging."""
    done: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: done.append(flchain(*argv)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
        pytest.fail(f"flchain {' '.join(argv)} waited on the FIFO")
    return done[0]


def test_a_fifo_or_a_device_given_as_an_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    e = make_evidence(tmp_path / "e")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    vkey = VerifierKey("main", bytes(SigningKey(b"\x07" * 32).verify_key)).encode()
    ledger, proof, main, f = e["ledger"], e["proof"], e["main"], str(fifo)
    bundle = ["model", "verify", proof, "--trusted", f"main={vkey}"]
    prove = ["model", "prove", "--ledger", ledger, "--main", main, "--model", f]
    cases = [
        ["ledger", "verify", f],
        ["ledger", "show", f],
        ["ledger", "rewards", f],
        ["witness", "request", f],
        ["ledger", "verify", ledger, "--checkpoint", f],
        ["ledger", "check-proof", f, "--trusted-key", TRUSTED],
        ["ledger", "check-proof", proof, "--checkpoint", f],
        ["main", "check-proof", f, "--main-key", vkey],
        ["main", "verify", f],
        ["main", "show", f],
        ["main", "verify", main, "--main-checkpoint", f],
        ["ledger", "verify", ledger, "--anchored-in", f],
        ["witness", "cosign", str(tmp_path / "e" / "w"), f],
        ["model", "verify", f, "--trusted", f"main={vkey}"],
        [*bundle[:3], "--trusted", f"@{f}"],
        [*bundle, "--model", f],
        [*prove, "-o", str(tmp_path / "bundle")],
        ["model", "market", f],
        ["ledger", "check-proof", "/dev/zero", "--trusted-key", TRUSTED],
        ["ledger", "verify", "/dev/null"],
    ]
    capsys.readouterr()
    for argv in cases:
        code, out = run_unblocked(argv, fifo)
        err = capsys.readouterr().err
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (argv, err)
        assert "not a regular file" in err, (argv, err)
        assert "FIFO" in err or "character device" in err, (argv, err)


def test_a_fifo_beside_a_ledger_is_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint a ledger keeps beside it, a FIFO: ``verify`` says it
    found none, ``witness request`` refuses, ``proof`` leaves it out; none
    waits on it."""
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=3).close()
    fifo = Path(f"{path}.checkpoint")
    fifo.unlink()
    os.mkfifo(fifo)
    capsys.readouterr()
    argv = ["ledger", "verify", str(path), "--trusted-key", TRUSTED]
    code, out = run_unblocked(argv, fifo)
    assert code == 0 and "no checkpoint" in out, out
    code, _ = run_unblocked(["witness", "request", str(path)], fifo)
    assert code == 2 and "not a regular file" in capsys.readouterr().err
    code, out = run_unblocked(
        ["ledger", "proof", str(path), "--update", digest_of(201)], fifo
    )
    assert code == 0 and '"checkpoint"' not in out, out


def descriptors_of(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    target, count = str(path.resolve()), 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == target
    return count


def test_a_file_refused_while_opening_is_left_closed(tmp_path: Path) -> None:
    """Each refusal below raised with the SQLite connection still open: held
    by the error's traceback, the file stayed open until the error was
    dropped (Python 3.13 warns of it: ResourceWarning)."""
    ledger = tmp_path / "chain.db"
    build_ledger(ledger, blocks=2).close()
    nameless = tmp_path / "nameless.db"
    build_ledger(nameless, blocks=2).close()
    with contextlib.closing(sqlite3.connect(nameless)) as db, db:
        db.execute("DELETE FROM meta WHERE key = 'chain_id'")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, " * 512)
    trade = tmp_path / "trade.db"
    TradingChain(trade, chain_id="market", signing_key=LEADER_KEY).close()
    main, _, witness = init_main(tmp_path)
    policy = AnchorPolicy((parse_cosigner_key(witness),), 1)

    def new_main() -> object:
        return MainChain.create(
            tmp_path / "new.db",
            chain_id="new",
            policy=policy,
            signing_key=LEADER_KEY,
            checkpoint_path=tmp_path,
        )

    cases: list[tuple[Path, type[Exception], Callable[[], object]]] = [
        (ledger, LedgerError, lambda: Ledger(ledger, chain_id="other")),
        (ledger, LedgerError, lambda: Ledger(ledger, chain_id="other", create=False)),
        (nameless, LedgerError, lambda: Ledger(nameless, create=False)),
        (garbage, LedgerError, lambda: Ledger(garbage, create=False)),
        (garbage, LedgerError, lambda: Ledger(garbage, read_only=True)),
        (trade, LedgerError, lambda: TradingChain(trade, chain_id="other")),
        (garbage, LedgerError, lambda: TradingChain(garbage, create=False)),
        (garbage, MainChainError, lambda: MainChain(garbage)),
        (main, MainChainError, lambda: MainChain(main, signing_key=LEADER_KEY)),
        (main, MainChainError, lambda: MainChain(main)),  # after the policy edit
        (tmp_path / "new.db", OSError, new_main),  # its checkpoint: a folder
    ]
    with contextlib.closing(sqlite3.connect(main)) as db, db:
        (record,) = db.execute("SELECT record FROM blocks WHERE height = 0").fetchone()
        fields = json.loads(record)
        fields["policy"]["witnesses"] = ["not a cosigner key"]
        forged = encode(ENCODING, fields)
        db.execute(
            "UPDATE blocks SET record = ?, hash = ? WHERE height = 0",
            (forged, block_hash(forged)),
        )
    for path, error, opening in cases:
        with pytest.raises(error) as refused:
            opening()
        assert descriptors_of(path) == 0, refused.value

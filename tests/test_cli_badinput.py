"""Bad input to every ``flchain`` command family: exit 2, one line, no traceback.

One case per class of bad input (a symlink loop, a FIFO, a folder, junk,
another schema, deep JSON, a key file that is no key, a number out of range,
a key text 100,000 characters long, ...) and per command family that reads it
through its own code path: the classes an adversarial sweep of the real
executable over every command and argument found, or checked. Every command
first gets real files, built here by the CLI; a case then replaces one.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from flchain_flwr.ledger.anchoring import log_key_of

from .ledger_helpers import TRUSTED, build_ledger, digest_of, flchain
from .test_trading import market, sale

DEEP = b"[" * 100_000 + b"]" * 100_000
LONG = "k" * 100_000


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger, three witnesses, a 2-of-3 main chain it is anchored in, a
    proof of each, a request, a provenance bundle and its trust file."""
    f = tmp_path_factory.mktemp("real")
    trading = market(f)
    sale(trading)
    trading.close()
    ledger = build_ledger(f / "sub.db", 5)
    log_key = log_key_of(ledger).encode()
    model = str(ledger.block(4).header["model_hash"])
    (f / "model.bin").write_bytes(ledger.blobs.path_of(model).read_bytes())
    ledger.close()
    vkeys = []
    for i in range(3):
        argv = ["init", str(f / f"w{i}"), "--name", f"w{i}.example", "--log", log_key]
        code, out = flchain("witness", *argv)
        assert code == 0
        vkeys.append(out.strip())
    code, main_key = flchain(
        "main", "init", str(f / "main.db"), "--chain-id", "main", "--key",
        str(f / "main.key"), "--quorum", "2", *(f"--witness={v}" for v in vkeys),
    )  # fmt: skip
    assert code == 0
    witnesses = [f"--witness={f / f'w{i}'}" for i in range(3)]
    argv = ["anchor", str(f / "sub.db"), "--main", str(f / "main.db")]
    assert flchain(*argv, "--main-key-file", str(f / "main.key"), *witnesses)[0] == 0
    for name, argv in {
        "mainproof.json": ["main", "prove", str(f / "main.db"), "1"],
        "proof.json": ["ledger", "proof", str(f / "sub.db"), "--update", DIGEST],
        "request.txt": ["witness", "request", str(f / "sub.db"), "--old", "5"],
    }.items():
        code, out = flchain(*argv)
        assert code == 0
        (f / name).write_text(out)
    argv = ["prove", "--ledger", str(f / "sub.db"), "--main", str(f / "main.db")]
    code, _ = flchain("model", *argv, "--hash", model, "-o", str(f / "b.bundle"))
    assert code == 0
    trust = [f"main={main_key.strip()}", *(f"witness={v}" for v in vkeys[:2])]
    (f / "trust.txt").write_text("\n".join(trust) + "\n")
    (f / "values.json").write_text(
        json.dumps({"main": main_key.strip(), "log": log_key})
    )
    return f


DIGEST = digest_of(100)


def values(folder: Path) -> dict[str, str]:
    return dict(json.loads((folder / "values.json").read_text()))


# The commands, each reading the inputs of one family through its own code
# path; names in capitals are the real files a case replaces.
COMMANDS: dict[str, list[str]] = {
    "ledger": ["ledger", "show", "SUB"],
    "ledger-verify": ["ledger", "verify", "SUB", "--trusted-key", TRUSTED,
                      "--checkpoint", "CHECKPOINT"],
    "anchored-in": ["ledger", "verify", "SUB", "--anchored-in", "MAIN", "--main-key",
                    "MAINKEY", "--main-checkpoint", "MAINCHECKPOINT"],
    "check-proof": ["ledger", "check-proof", "PROOF", "--trusted-key", TRUSTED],
    "main": ["main", "verify", "MAIN", "--main-checkpoint", "MAINCHECKPOINT"],
    "main-check-proof": ["main", "check-proof", "MAINPROOF", "--main-key", "MAINKEY"],
    "witness-cosign": ["witness", "cosign", "W0", "REQUEST"],
    "witness-add-log": ["witness", "add-log", "W0", "LOGKEY"],
    "anchor": ["anchor", "SUB", "--main", "MAIN", "--main-key-file", "KEY",
               "--witness", "W0", "--witness", "W1"],
    "main-init": ["main", "init", "NEWMAIN", "--chain-id", "m", "--key", "KEY",
                  "--witness", "WITNESSKEY", "--quorum", "1"],
    "model-prove": ["model", "prove", "--ledger", "SUB", "--main", "MAIN", "--model",
                    "MODEL", "-o", "OUT"],
    "model-verify": ["model", "verify", "BUNDLE", "--trusted", "@TRUST"],
    "market": ["model", "market", "TRADE"],
}  # fmt: skip
FILES = {
    "SUB": "sub.db", "MAIN": "main.db", "CHECKPOINT": "sub.db.checkpoint",
    "MAINCHECKPOINT": "main.db.checkpoint", "PROOF": "proof.json",
    "MAINPROOF": "mainproof.json", "REQUEST": "request.txt", "BUNDLE": "b.bundle",
    "TRUST": "trust.txt", "MODEL": "model.bin", "KEY": "main.key", "W0": "w0",
    "W1": "w1", "OUT": "out.bundle", "NEWMAIN": "new.db", "TRADE": "trade.db",
}  # fmt: skip

Make = Callable[[Path, Path], str]
"""Makes a bad input from the real file (or folder) at the first path, in the
case's folder (the second): the argument that replaces it."""


def _write(data: bytes) -> Make:
    def make(real: Path, folder: Path) -> str:
        (folder / "bad").write_bytes(data)
        return str(folder / "bad")

    return make


def _fifo(real: Path, folder: Path) -> str:
    os.mkfifo(folder / "fifo")
    return str(folder / "fifo")


def _loop(real: Path, folder: Path) -> str:
    os.symlink(folder / "loop", folder / "loop")
    return str(folder / "loop")


def _folder(real: Path, folder: Path) -> str:
    (folder / "dir").mkdir()
    return str(folder / "dir")


def _truncated(real: Path, folder: Path) -> str:
    data = real.read_bytes()
    return _write(data[: len(data) // 2])(real, folder)


def _other_schema(real: Path, folder: Path) -> str:
    db = sqlite3.connect(folder / "other.db")
    db.executescript(
        "CREATE TABLE meta (a, b); CREATE TABLE blocks (x); CREATE TABLE entries (y);"
        "INSERT INTO meta VALUES (1, 2); INSERT INTO blocks VALUES ('z');"
    )
    db.close()
    return str(folder / "other.db")


def _junk_row(real: Path, folder: Path) -> str:
    """The last main-chain record replaced by JSON nested 100,000 deep."""
    db = sqlite3.connect(real)
    db.execute("UPDATE blocks SET record = ? WHERE height = 1", (DEEP,))
    db.commit()
    db.close()
    return str(real)


def _note_line(edit: Callable[[str], str]) -> Make:
    """The note with each signature line edited."""

    def make(real: Path, folder: Path) -> str:
        lines = real.read_text().split("\n")
        text = "\n".join(edit(x) if x.startswith("\u2014") else x for x in lines)
        return _write(text.encode())(real, folder)

    return make


def _in_folder(name: str, data: bytes | None) -> Make:
    """The real folder with its file ``name`` replaced by ``data`` (a FIFO
    for ``None``)."""

    def make(real: Path, folder: Path) -> str:
        (real / name).unlink()
        if data is None:
            os.mkfifo(real / name)
        else:
            (real / name).write_bytes(data)
        return str(real)

    return make


def _text(value: str) -> Make:
    return lambda real, folder: value


def _text_in(name: str) -> Make:
    return lambda real, folder: str(folder / name)


def _crlf(real: Path, folder: Path) -> str:
    return _write(real.read_bytes().replace(b"\n", b"\r\n"))(real, folder)


FILE_CLASSES: dict[str, Make] = {
    "missing": lambda real, folder: str(folder / "no" / "such"),
    "folder": _folder,
    "empty": _write(b""),
    "junk": _write(bytes(range(256)) * 16),
    "not UTF-8": _write(b"caf\xe9\n\xff\xfe"),
    "deep JSON": _write(DEEP),
    "FIFO": _fifo,
    "symlink loop": _loop,
    "truncated": _truncated,
}
UNREAD = ("missing", "folder", "FIFO", "symlink loop")
"""The classes of a file that cannot be read at all."""
CASES: list[tuple[str, str, str, Make]] = [
    (family, token, name, make)
    for family, token in (
        ("ledger", "SUB"),
        ("ledger-verify", "CHECKPOINT"),
        ("anchored-in", "MAIN"),
        ("anchored-in", "MAINCHECKPOINT"),
        ("check-proof", "PROOF"),
        ("main", "MAIN"),
        ("main-check-proof", "MAINPROOF"),
        ("witness-cosign", "REQUEST"),
        ("anchor", "KEY"),
        ("model-prove", "MODEL"),
        ("model-verify", "BUNDLE"),
        ("model-verify", "TRUST"),
        ("market", "TRADE"),
    )
    for name, make in FILE_CLASSES.items()
    if not (token == "MODEL" and name in ("empty", "junk", "not UTF-8", "deep JSON"))
    # a checkpoint there that does not hold is a failed check: exit 1
    and not (token == "CHECKPOINT" and name not in UNREAD)
] + [
    ("ledger", "SUB", "another schema", _other_schema),
    ("main", "MAIN", "another schema", _other_schema),
    ("market", "TRADE", "another schema", _other_schema),
    ("model-prove", "MAIN", "a record of deep JSON", _junk_row),
    ("main-init", "KEY", "FIFO", _fifo),
    ("main-init", "KEY", "not a key", _write(b"not a key\n")),
    ("main-init", "KEY", "a key too short", _write(b"ab" * 31)),
    ("main-init", "KEY", "a folder", _folder),
    ("anchor", "KEY", "another key", _write(b"11" * 32)),
    ("main", "MAINCHECKPOINT", "bad base64", _note_line(lambda x: x + "!!")),
    ("anchored-in", "MAINCHECKPOINT", "CRLF", _crlf),
    ("witness-cosign", "W0", "a missing folder", FILE_CLASSES["missing"]),
    ("witness-cosign", "W0", "a file", _write(b"plain\n")),
    ("witness-cosign", "W0", "a FIFO as its key", _in_folder("witness.key", None)),
    ("witness-cosign", "W0", "a FIFO as its state", _in_folder("state.json", None)),
    ("witness-add-log", "W0", "deep JSON as its state", _in_folder("state.json", DEEP)),
    (
        "witness-add-log",
        "W0",
        "a state of the wrong shape",
        _in_folder("state.json", b'{"format": "flchain-witness/1", "logs": []}'),
    ),
    (
        "anchor",
        "W1",
        "a state without its logs",
        _in_folder(
            "state.json",
            b'{"format": "flchain-witness/1", "trust_on_first_use": false}',
        ),
    ),
    (
        "anchor",
        "W1",
        "a state with a log of the wrong shape",
        _in_folder(
            "state.json",
            b'{"format": "flchain-witness/1", "trust_on_first_use": false, '
            b'"logs": {"flchain-flwr/test-chain": {"size": "x"}}}',
        ),
    ),
    ("model-prove", "OUT", "a FIFO", _fifo),
    ("model-prove", "OUT", "the ledger itself", _text_in("sub.db")),
    ("model-prove", "OUT", "a missing folder", FILE_CLASSES["missing"]),
    ("anchored-in", "MAINKEY", "100,000 characters", _text(LONG)),
    ("main-check-proof", "MAINKEY", "a long name", _text(LONG + "+12345678+AQID")),
    ("witness-add-log", "LOGKEY", "long bad base64", _text("w+12345678+" + "!" * 9999)),
    ("main-init", "WITNESSKEY", "100,000 characters", _text(LONG)),
    (
        "model-verify",
        "TRUST",
        "a line of 900,000 characters",
        _write(b"main=" + b"A" * 900_000 + b"\n"),
    ),
]
NUMBERS: list[list[str]] = [
    ["ledger", "show", "SUB", "--height", value]
    for value in ("1e400", "-1", str(10**40), "NaN", "9" * 5000)
] + [
    ["main", "verify", "MAIN", "--max-age", value]
    for value in ("1e400", "-1", "NaN", "inf", "1e-400", "0")
] + [
    ["main", "prove", "MAIN", str(10**40)],
    ["witness", "request", "SUB", "--old", "-1"],
    ["main", "init", "NEWMAIN", "--chain-id", "m", "--key", "KEY", "--witness",
     "WITNESSKEY", "--quorum", "NaN"],
    ["ledger", "show", "SUB", LONG],  # argparse's own message quotes it
    ["ledger", "proof", "SUB", "--update", LONG],
]  # fmt: skip


def run_guarded(argv: list[str], fifos: list[Path]) -> tuple[int, str]:
    """The CLI in a thread; if it still runs after 20 s it waits on a FIFO:
    a writer then opens each, and the test fails instead of hanging."""
    done: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: done.append(flchain(*argv)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
        pytest.fail(f"flchain {' '.join(a[:60] for a in argv)} waited on a FIFO")
    return done[0]


def argv_of(template: list[str], folder: Path, replaced: dict[str, str]) -> list[str]:
    keys = values(folder)
    known = {
        **{token: str(folder / name) for token, name in FILES.items()},
        "MAINKEY": keys["main"],
        "LOGKEY": keys["log"],
        "WITNESSKEY": (folder / "w0" / "witness.vkey").read_text().strip(),
    }
    known.update(replaced)
    out = []
    for arg in template:
        at = arg.startswith("@")
        value = known.get(arg.lstrip("@"), arg)
        out.append(("@" if at else "") + value)
    return out


def assert_one_line_exit_2(
    argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    capsys.readouterr()
    code, out = run_guarded(
        argv, list(folder.rglob("fifo")) + [p for p in folder.rglob("*") if p.is_fifo()]
    )
    err = capsys.readouterr().err
    assert code == 2, (code, out[:300], err[:300])
    assert out == "" and err.count("\n") == 1, (out[:300], err[:300])
    assert err.startswith("flchain") and "Traceback" not in err, err[:300]
    assert "unexpected" not in err and "ledger's data" not in err, err[:300]
    assert len(err) < 1000, err[:300]
    return err


@pytest.mark.parametrize(
    ("family", "token", "name", "make"),
    CASES,
    ids=[f"{family}-{token}-{name}" for family, token, name, _ in CASES],
)
def test_a_bad_input_exits_2_with_one_line(
    real: Path,
    tmp_path: Path,
    family: str,
    token: str,
    name: str,
    make: Make,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "case"
    shutil.copytree(real, folder)
    real_file = folder / FILES.get(token, "none")
    bad = make(real_file, folder)
    argv = argv_of(COMMANDS[family], folder, {token: bad})
    before = (folder / "sub.db").read_bytes()
    assert_one_line_exit_2(argv, folder, capsys)
    assert (folder / "sub.db").read_bytes() == before  # never written over


@pytest.mark.parametrize(
    "template", NUMBERS, ids=[" ".join(a[:12] for a in t[:4]) for t in NUMBERS]
)
def test_a_bad_number_or_text_exits_2_with_one_line(
    real: Path, tmp_path: Path, template: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "case"
    shutil.copytree(real, folder)
    assert_one_line_exit_2(argv_of(template, folder, {}), folder, capsys)


def test_the_real_inputs_pass(real: Path, tmp_path: Path) -> None:
    """Every command above succeeds on the real files: each case breaks one."""
    folder = tmp_path / "case"
    shutil.copytree(real, folder)
    for family, template in COMMANDS.items():
        code, out = flchain(*argv_of(template, folder, {}))
        assert code == 0, (family, out)

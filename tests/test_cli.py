"""The ``flchain ledger`` command line."""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr import cli_ledger
from flchain_flwr.cli import main
from flchain_flwr.ledger import Ledger, LedgerError

from .ledger_helpers import TRUSTED, build_ledger, digest_of


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    build_ledger(tmp_path / "chain.db", blocks=5).close()
    return tmp_path / "chain.db"


def flchain(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["ledger", *argv], out=out)
    return code, out.getvalue()


def test_show_lists_blocks_and_prints_one(ledger_path: Path) -> None:
    code, text = flchain("show", str(ledger_path))
    assert code == 0 and "chain test-chain: 5 blocks" in text
    assert len(text.strip().splitlines()) == 2 + 5
    code, text = flchain("show", str(ledger_path), "--height", "3")
    assert code == 0 and json.loads(text)["header"]["height"] == 3


def test_verify_ok_and_tampered(ledger_path: Path) -> None:
    code, text = flchain("verify", str(ledger_path))
    assert code == 0 and text.startswith("ok: 5 blocks verified, signed by leader ")
    with sqlite3.connect(ledger_path) as db:
        db.execute(
            "UPDATE blocks SET body = CAST(? AS BLOB) WHERE height = 3", ('{"x":1}',)
        )
    code, text = flchain("verify", str(ledger_path))
    assert code == 1
    assert text.startswith("FAILED at block 3: ")


def test_proofs_round_trip_through_files_and_stdin(
    ledger_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = flchain("proof", str(ledger_path), "--update", digest_of(301))
    assert code == 0
    proof_file = tmp_path / "p.json"
    proof_file.write_text(text)
    code, text = flchain("check-proof", str(proof_file), "--trusted-key", TRUSTED)
    assert code == 0 and text.startswith("valid: update") and "is in block 3" in text

    code, text = flchain("proof", str(ledger_path), "--consistency", "2", "5")
    assert code == 0
    stdin = io.TextIOWrapper(io.BytesIO(text.encode()))  # like sys.stdin: bytes below
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out = flchain("check-proof", "-", "--trusted-key", TRUSTED)
    assert code == 0 and "extends the ledger of 2 blocks" in out

    forged = json.loads(text)
    forged["later_root"] = "00" * 32
    proof_file.write_text(json.dumps(forged))
    code, out = flchain("check-proof", str(proof_file), "--trusted-key", TRUSTED)
    assert code == 1 and out.startswith("INVALID:")


def test_export_is_json_lines(ledger_path: Path) -> None:
    code, text = flchain("export", str(ledger_path))
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and [r["height"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2]["body"]["rejected"][0]["reason"] == "holds NaN or Inf"


def test_rewards_table_and_json(ledger_path: Path) -> None:
    code, text = flchain("rewards", str(ledger_path), "--json")
    shares = json.loads(text)
    assert code == 0 and sum(s["share"] for s in shares) == pytest.approx(1.0)
    assert shares[0]["node_id"] == 10  # included in every non-genesis block but 4
    code, text = flchain("rewards", str(ledger_path), "--from", "1", "--to", "2")
    assert code == 0 and "66.67%" in text and "33.33%" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify", "{tmp}/missing.db"], "no ledger at"),
        (["verify", "{tmp}/junk.db"], "is not a flchain ledger"),
        (["show", "{ledger}", "--height", "42"], "no block at height 42"),
        (["proof", "{ledger}", "--update", "ab" * 32], "is not in any block"),
        (["proof", "{ledger}", "--consistency", "4", "9"], "later (9)"),
        (
            ["check-proof", "{tmp}/nothing.json", "--trusted-key", TRUSTED],
            "cannot read proof",
        ),
        (
            ["check-proof", "{tmp}/junk.db", "--trusted-key", TRUSTED],
            "malformed proof {tmp}/junk.db: not JSON",
        ),
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_code_2(
    ledger_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "junk.db").write_text("not a database, not JSON {")
    filled = [a.format(tmp=tmp_path, ledger=ledger_path) for a in argv]
    code, _ = flchain(*filled)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("flchain: error: ") and len(err.splitlines()) == 1, err
    assert message.format(tmp=tmp_path) in err


def test_console_script_is_installed(ledger_path: Path) -> None:
    exe = Path(sys.executable).with_name("flchain")
    done = subprocess.run(
        [str(exe), "ledger", "verify", str(ledger_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "ok: 5 blocks verified" in done.stdout


def test_commands_on_a_corrupt_ledger_exit_2_with_a_message(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(ledger_path) as db:
        db.execute(
            "UPDATE blocks SET body = CAST(? AS BLOB) WHERE height = 2", ("{bad",)
        )
        db.execute(
            "UPDATE blocks SET header = CAST(? AS BLOB) WHERE height = 3", ('{"a":1}',)
        )
    for command in (
        ["show", str(ledger_path)],
        ["export", str(ledger_path)],
        ["rewards", str(ledger_path)],
        ["proof", str(ledger_path), "--update", digest_of(301)],
    ):
        code, _ = flchain(*command)
        assert code == 2, command
        assert "flchain:" in capsys.readouterr().err


def test_check_proof_of_garbage_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "consistency", "proof": {"metadata": []}}))
    code, text = flchain("check-proof", str(bad), "--trusted-key", TRUSTED)
    assert code == 2 and text == ""
    assert "malformed proof" in capsys.readouterr().err
    bad.write_bytes(b"\xff\xfe not utf-8")
    code, _ = flchain("check-proof", str(bad), "--trusted-key", TRUSTED)
    assert code == 2
    assert "malformed proof" in capsys.readouterr().err


# ------------------------------------------------ bad input never shows a traceback
FLCHAIN = str(Path(sys.executable).with_name("flchain"))


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no FLCHAIN_DEBUG, and a buffered
    stdout (test runs here may set PYTHONUNBUFFERED)."""
    unset = ("FLCHAIN_DEBUG", "PYTHONUNBUFFERED")
    return {k: v for k, v in os.environ.items() if k not in unset}


def run_flchain(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [FLCHAIN, "ledger", *argv],
        capture_output=True,
        text=True,
        check=False,
        env=user_env(),
    )


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], *parts: str, streamed: bool = False
) -> None:
    """Exit 2 and one ``flchain...: error: ...`` line on stderr; nothing on
    stdout unless ``streamed`` (show and export print the blocks they could
    read before the damage)."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert streamed or done.stdout == "", done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flchain") and ": error: " in lines[0], lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])


def foreign_schema(path: Path) -> None:
    """Another program's SQLite file that happens to use the names meta/blocks."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (x)")
        db.execute("CREATE TABLE blocks (y)")
        db.execute("INSERT INTO meta VALUES (1)")


def foreign_blocks(path: Path) -> None:
    """A right ``meta`` table (format, chain id) and a foreign ``blocks``."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('format', 'flchain-ledger/1')")
        db.execute("INSERT INTO meta VALUES ('chain_id', 'x')")
        db.execute("CREATE TABLE blocks (y)")


def non_utf8(path: Path, sql: str) -> None:
    """Store bytes that are not UTF-8 as TEXT in a real ledger."""
    build_ledger(path, blocks=5).close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(sql, (b"test-\xff\xfe-chain",))


def flip_until_malformed(path: Path) -> None:
    """Flip seeded random bits of a real ledger until SQLite calls it malformed."""
    build_ledger(path, blocks=5).close()
    pristine = path.read_bytes()
    rng = random.Random(7)
    for _ in range(5_000):
        data = bytearray(pristine)
        data[rng.randrange(100, len(data))] ^= 1 << rng.randrange(8)
        for leftover in ("-wal", "-shm"):
            path.with_name(path.name + leftover).unlink(missing_ok=True)
        path.write_bytes(bytes(data))
        try:
            with closing(sqlite3.connect(path)) as db:
                db.execute("SELECT * FROM meta").fetchall()
                db.execute("SELECT * FROM blocks").fetchall()
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc):
                return
    raise AssertionError("no flip made SQLite report a malformed file")


def non_utf8_schema(path: Path) -> None:
    """A schema SQLite cannot parse, whose error message (quoting it) is then
    not UTF-8 either: Python's sqlite3 raises UnicodeDecodeError, no sqlite3.Error."""
    build_ledger(path, blocks=5).close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA writable_schema = ON")
        db.execute(
            "UPDATE sqlite_master SET sql = CAST(? AS TEXT) WHERE name = 'blocks'",
            (b"CREATE TABLE blocks (height INTEGER PRIMARY KEY, x TEXT NOT NUL\xcc)",),
        )


DAMAGED_LEDGERS = {
    "foreign-schema": (foreign_schema, "is not a flchain ledger"),
    "foreign-blocks-table": (foreign_blocks, "is not a flchain ledger"),
    "non-utf8-meta": (
        lambda p: non_utf8(
            p, "UPDATE meta SET value = CAST(? AS TEXT) WHERE key = 'chain_id'"
        ),
        "UTF-8",
    ),
    "non-utf8-hash": (
        lambda p: non_utf8(
            p, "UPDATE blocks SET hash = CAST(? AS TEXT) WHERE height = 2"
        ),
        "UTF-8",
    ),
    "flipped-byte": (flip_until_malformed, "malformed"),
    "non-utf8-schema": (
        non_utf8_schema,
        'malformed database schema (blocks) - near "NUL',
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_LEDGERS))
def test_damaged_ledger_files_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    make, message = DAMAGED_LEDGERS[case]
    path = tmp_path / "damaged.db"
    make(path)
    for command in ("show", "export"):
        done = run_flchain(command, str(path))
        assert_one_line_error(done, str(path), message, streamed=True)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("case", sorted(DAMAGED_LEDGERS))
def test_every_ledger_command_on_a_damaged_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, _ = DAMAGED_LEDGERS[case]
    path = tmp_path / "damaged.db"
    make(path)
    for command in (
        ["show", str(path)],
        ["show", str(path), "--height", "2"],
        ["export", str(path)],
        ["verify", str(path)],
        ["rewards", str(path)],
        ["proof", str(path), "--update", digest_of(301)],
        ["proof", str(path), "--consistency", "1", "3"],
    ):
        code, out = flchain(*command)
        err = capsys.readouterr().err
        if code == 1:  # verify found the damage: a report, not an error
            assert command[0] == "verify" and out.startswith("FAILED"), out
            assert err == ""
        else:
            assert code == 2, (command, code, out)
            assert len(err.splitlines()) == 1 and ": error: " in err, (command, err)


def test_a_height_beyond_sqlite_integers_is_a_usage_error(ledger_path: Path) -> None:
    done = run_flchain("show", str(ledger_path), "--height", "1" + "0" * 30)
    assert_one_line_error(done, "--height")
    done = run_flchain("proof", str(ledger_path), "--consistency", "2", "9" * 5000)
    assert_one_line_error(done, "--consistency")


def test_an_invalid_trusted_key_is_reported_as_such(ledger_path: Path) -> None:
    done = run_flchain("verify", str(ledger_path), "--trusted-key", "zz")
    assert_one_line_error(done, "--trusted-key", "Ed25519")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


MALFORMED_PROOFS = {
    "nested-100000-deep": nested(100_000),
    "nested-field": '{"type": "consistency", "proof": ' + nested(100_000) + "}",
    "nested-header-text": json.dumps(
        {
            "type": "update-in-block",
            "chain_id": "test-chain",
            "height": 0,
            "header": nested(100_000),
            "update": {},
            "block": {},
        }
    ),
    "not-json": "this is not JSON {",
    "not-an-object": "[1, 2, 3]",
    "integer-too-long": '{"type": "consistency", "prior_size": ' + "9" * 5000 + "}",
    "wrong-types": json.dumps(
        {
            "type": "consistency",
            "prior_size": "2",
            "later_size": [5],
            "prior_root": 7,
            "later_root": {"x": 1},
            "proof": "nope",
        }
    ),
    "wrong-metadata-type": json.dumps(
        {"type": "consistency", "proof": {"metadata": []}}
    ),
    "lone-surrogate-header": json.dumps(
        {
            "type": "update-in-block",
            "chain_id": "c",
            "height": 0,
            "header": "\ud800",
            "update": {},
            "block": {},
        }
    ),
    "unknown-type": json.dumps({"type": ["inclusion"]}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PROOFS))
def test_a_malformed_proof_exits_2_saying_the_proof_is_malformed(
    tmp_path: Path, case: str
) -> None:
    proof = tmp_path / "proof.json"
    proof.write_text(MALFORMED_PROOFS[case])
    done = run_flchain("check-proof", str(proof), "--trusted-key", TRUSTED)
    assert_one_line_error(done, "malformed proof", str(proof))
    assert "ledger" not in done.stderr


def test_an_unforeseen_error_is_one_line_unless_debugging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signed ledger whose relevance is beyond a float's range (only format
    # 1 can hold it) fails verify, and `rewards` pays nothing for it; an
    # error nobody foresaw in adding up rewards is injected instead.
    path = tmp_path / "huge.db"
    with build_ledger(path, blocks=1, format_version=1) as ledger:
        ledger.append(
            model={"w": np.zeros(2, np.float32)},
            model_version=1,
            base_version=0,
            config_digest="c" * 64,
            included=[{"node_id": 1, "digest": digest_of(1)}],
            contributions=[
                {"node_id": 1, "data_share": 1.0, "relevance": 10**400, "score": 1}
            ],
        )
    capsys.readouterr()
    monkeypatch.delenv("FLCHAIN_DEBUG", raising=False)
    code, out = flchain("verify", str(path))
    assert code == 1 and "relevance" in out and "is not in [0, 1]" in out

    def overflow(*_: object) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(cli_ledger, "reward_shares", overflow)
    code, out = flchain("rewards", str(path))
    err = capsys.readouterr().err
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("flchain: error: unexpected OverflowError: ")
    assert "FLCHAIN_DEBUG=1" in err
    monkeypatch.setenv("FLCHAIN_DEBUG", "1")
    with pytest.raises(OverflowError):
        flchain("rewards", str(path))


def test_a_reader_that_stops_early_ends_the_command_quietly(ledger_path: Path) -> None:
    # With a buffered stdout small outputs are written at the interpreter's
    # exit, which must not fail either.
    for command in ("show", "export", "verify"):
        child = subprocess.Popen(
            [FLCHAIN, "ledger", command, str(ledger_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=user_env(),
        )
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # gone long before the child's first write
        err = child.stderr.read()
        child.stderr.close()
        assert child.wait() == 2 and err == b"", (command, err)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line(ledger_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [FLCHAIN, "ledger", "show", str(ledger_path)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            env=user_env(),
        )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "flchain: error: cannot write the output: [Errno 28] No space left on device"
    ]


def test_the_ledger_refuses_impossible_heights(ledger_path: Path) -> None:
    with Ledger(ledger_path, create=False) as ledger:
        for height in (-1, 2**63, 10**30):
            with pytest.raises(LedgerError, match=f"no block at height {height}"):
                ledger.block(height)


def test_a_proof_from_a_ledger_with_a_corrupt_block_hash_names_it(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with closing(sqlite3.connect(ledger_path)) as db, db:
        db.execute("UPDATE blocks SET hash = 'not hex' WHERE height = 2")
    for argv in (["--consistency", "1", "4"], ["--update", digest_of(301)]):
        code, out = flchain("proof", str(ledger_path), *argv)
        err = capsys.readouterr().err
        assert code == 2 and out == "", argv
        assert err.startswith("flchain: error: block hash 2 "), err
        assert "flchain ledger verify" in err

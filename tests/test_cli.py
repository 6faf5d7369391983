"""The ``flchain ledger`` command line."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flchain_flwr.cli import main

from .ledger_helpers import build_ledger, digest_of


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
    code, text = flchain("check-proof", str(proof_file))
    assert code == 0 and text.startswith("valid: update") and "is in block 3" in text

    code, text = flchain("proof", str(ledger_path), "--consistency", "2", "5")
    assert code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out = flchain("check-proof", "-")
    assert code == 0 and "extends the ledger of 2 blocks" in out

    forged = json.loads(text)
    forged["later_root"] = "00" * 32
    proof_file.write_text(json.dumps(forged))
    code, out = flchain("check-proof", str(proof_file))
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
        (["check-proof", "{tmp}/nothing.json"], "cannot read proof"),
        (["check-proof", "{tmp}/junk.db"], "proof is not JSON"),
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
    assert message in capsys.readouterr().err


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


def test_check_proof_of_garbage_is_invalid_or_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "consistency", "proof": {"metadata": []}}))
    code, text = flchain("check-proof", str(bad))
    assert code == 1 and text.startswith("INVALID")
    bad.write_bytes(b"\xff\xfe not utf-8")
    code, _ = flchain("check-proof", str(bad))
    assert code == 2

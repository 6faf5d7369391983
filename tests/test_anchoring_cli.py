"""The anchoring commands over files: the whole workflow, and bad input.

Every malformed input to every command exits 2 with one line on stderr.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchoring import log_key_of

from .ledger_helpers import LEADER_KEY, build_ledger


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """A ledger, three witness folders and a 2-of-3 main chain, by the CLI."""
    ledger = build_ledger(tmp_path / "sub.db", 5)
    log_key = log_key_of(ledger).encode()
    ledger.close()
    vkeys = []
    for i in range(3):
        code, out, _ = run(
            capsys, "witness", "init", str(tmp_path / f"w{i}"), "--name",
            f"w{i}.example", "--log", log_key,
        )  # fmt: skip
        assert code == 0
        vkeys.append(out.strip())
    witnesses = [arg for v in vkeys for arg in ("--witness", v)]
    code, out, _ = run(
        capsys, "main", "init", str(tmp_path / "main.db"), "--chain-id", "main",
        "--key", str(tmp_path / "main.key"), "--quorum", "2", *witnesses,
    )  # fmt: skip
    assert code == 0
    return {
        "dir": str(tmp_path),
        "sub": str(tmp_path / "sub.db"),
        "main": str(tmp_path / "main.db"),
        "key": str(tmp_path / "main.key"),
        "main_vkey": out.strip(),
        "log_key": log_key,
    }


def test_the_workflow_over_files(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folders = [a for i in range(3) for a in ("--witness", str(tmp_path / f"w{i}"))]
    code, out, _ = run(
        capsys, "anchor", files["sub"], "--main", files["main"],
        "--main-key-file", files["key"], *folders,
    )  # fmt: skip
    assert (code, out) == (0, "anchored flchain-flwr/test-chain size 5 at height 1\n")
    code, out, _ = run(capsys, "main", "show", files["main"])
    assert code == 0 and "flchain-flwr/test-chain  size 5" in out
    code, out, _ = run(
        capsys, "main", "verify", files["main"], "--main-key", files["main_vkey"]
    )
    assert code == 0 and out.startswith("OK: main chain main: 2 blocks")
    code, out, _ = run(capsys, "main", "prove", files["main"], "1")
    assert code == 0
    (tmp_path / "proof.json").write_text(out)
    code, out, _ = run(
        capsys, "main", "check-proof", str(tmp_path / "proof.json"),
        "--main-key", files["main_vkey"], "--log-key", files["log_key"],
    )  # fmt: skip
    assert code == 0 and "cosigned by w0.example, w1.example, w2.example" in out
    code, out, _ = run(
        capsys, "ledger", "verify", files["sub"], "--anchored-in", files["main"],
        "--main-key", files["main_vkey"],
    )  # fmt: skip
    assert code == 0 and "hold all 1 checkpoints anchored" in out
    # A witness asked directly: a request from the wrong size is refused (409),
    # from its size it cosigns.
    (tmp_path / "r0.txt").write_text(run(capsys, "witness", "request", files["sub"])[1])
    code, out, _ = run(
        capsys, "witness", "cosign", str(tmp_path / "w0"), str(tmp_path / "r0.txt")
    )
    assert code == 1 and out.startswith("REFUSED (409)")
    (tmp_path / "r5.txt").write_text(
        run(capsys, "witness", "request", files["sub"], "--old", "5")[1]
    )
    code, out, _ = run(
        capsys, "witness", "cosign", str(tmp_path / "w0"), str(tmp_path / "r5.txt")
    )
    assert code == 0 and out.startswith("\u2014 w0.example ")


def test_a_request_while_the_checkpoint_lags_the_blocks_is_cosigned(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A live server commits a block, then writes its checkpoint: in between,
    # the ledger holds a block more than the checkpoint. The request is for
    # the checkpoint, so its proof must be to the checkpoint's size.
    request, w0 = tmp_path / "r.txt", str(tmp_path / "w0")
    request.write_text(run(capsys, "witness", "request", files["sub"])[1])
    assert run(capsys, "witness", "cosign", w0, str(request))[0] == 0  # size 5
    with Ledger(files["sub"], signing_key=LEADER_KEY) as ledger:
        for version in (5, 6):
            kept = ledger.checkpoint_path.read_bytes()  # of 5, then of 6 blocks
            ledger.append(
                model={"w": np.full(2, version, np.float32)},
                model_version=version,
                base_version=version - 1,
                config_digest="c" * 64,
            )
        ledger.checkpoint_path.write_bytes(kept)  # 7 blocks, checkpoint of 6
    request.write_text(run(capsys, "witness", "request", files["sub"], "--old", "5")[1])
    code, out, _ = run(capsys, "witness", "cosign", w0, str(request))
    assert code == 0 and out.startswith("\u2014 w0.example "), out
    code, _, err = run(capsys, "witness", "request", files["sub"], "--old", "7")
    assert code == 2 and "--old 7 is above the checkpoint's 6 blocks" in err


def test_malformed_inputs_exit_2_with_one_line(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xfe\x00 not anything")
    text = tmp_path / "text.txt"
    text.write_text("hello\n")
    proof = tmp_path / "p.json"
    proof.write_text(json.dumps({"type": "anchor-in-main"}))
    w0, main, sub, key = str(tmp_path / "w0"), files["main"], files["sub"], files["key"]
    vkey, missing = files["main_vkey"], str(tmp_path / "missing")
    cases = [
        ["witness", "init", w0, "--name", "again"],
        ["witness", "init", str(tmp_path / "x"), "--name", "bad name"],
        ["witness", "init", str(tmp_path / "y"), "--name", "n", "--log", "nope"],
        ["witness", "init", str(tmp_path / "z")],
        ["witness", "add-log", missing, files["log_key"]],
        ["witness", "add-log", w0, "not+a+vkey"],
        ["witness", "request", str(junk)],
        ["witness", "request", sub, "--old", "-1"],
        ["witness", "request", sub, "--old", "99"],
        ["witness", "cosign", missing, str(text)],
        ["witness", "cosign", w0, str(junk)],
        ["witness", "cosign", w0, str(text)],
        ["witness", "cosign", w0, missing],
        [
            "main",
            "init",
            main,
            "--chain-id",
            "m",
            "--key",
            key,
            "--witness",
            vkey,
            "--quorum",
            "1",
        ],
        [
            "main",
            "init",
            missing,
            "--chain-id",
            "m",
            "--key",
            key,
            "--witness",
            vkey,
            "--quorum",
            "1",
        ],
        [
            "main",
            "init",
            missing,
            "--chain-id",
            "m",
            "--key",
            key,
            "--witness",
            files["log_key"].replace("+A", "+B"),
            "--quorum",
            "1",
        ],
        [
            "main",
            "init",
            missing,
            "--chain-id",
            "a b",
            "--key",
            key,
            "--witness",
            run(capsys, "witness", "init", str(tmp_path / "v"), "--name", "v")[
                1
            ].strip(),
            "--quorum",
            "1",
        ],
        [
            "main",
            "init",
            str(tmp_path / "q.db"),
            "--chain-id",
            "m",
            "--key",
            key,
            "--witness",
            (tmp_path / "v" / "witness.vkey").read_text().strip(),
            "--quorum",
            "5",
        ],
        ["main", "show", str(junk)],
        ["main", "show", missing],
        ["main", "verify", str(text)],
        ["main", "verify", main, "--main-key", "zz"],
        ["main", "prove", main, "0"],
        ["main", "prove", main, "99"],
        ["main", "prove", main, "x"],
        ["main", "check-proof", str(junk), "--main-key", vkey],
        ["main", "check-proof", str(text), "--main-key", vkey],
        ["main", "check-proof", missing, "--main-key", vkey],
        ["main", "check-proof", str(proof)],
        ["anchor", sub, "--main", main, "--main-key-file", missing, "--witness", w0],
        ["anchor", sub, "--main", main, "--main-key-file", key, "--witness", missing],
        ["anchor", sub, "--main", str(junk), "--main-key-file", key, "--witness", w0],
        ["anchor", str(text), "--main", main, "--main-key-file", key, "--witness", w0],
        ["anchor", sub, "--main", main, "--main-key-file", str(text), "--witness", w0],
        ["ledger", "verify", sub, "--anchored-in", missing],
        ["ledger", "verify", sub, "--anchored-in", str(junk)],
        ["ledger", "verify", sub, "--anchored-in", main, "--main-key", "nope"],
    ]
    for argv in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_a_main_chain_record_whose_type_is_an_object_fails_verify(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Anyone who can write the main chain's file (no key) gives a record a
    # type that is a JSON object: a failed check naming the block, not exit 2.
    code, _, _ = run(
        capsys, "anchor", files["sub"], "--main", files["main"], "--main-key-file",
        files["key"], *(f"--witness={files['dir']}/w{i}" for i in range(3)),
    )  # fmt: skip
    assert code == 0
    db = sqlite3.connect(files["main"])
    (record,) = db.execute("SELECT record FROM blocks WHERE height = 1").fetchone()
    edited = record.replace(b'"type":"anchor"', b'"type":{}')
    db.execute("UPDATE blocks SET record = ? WHERE height = 1", (edited,))
    db.commit()
    db.close()
    code, out, err = run(capsys, "main", "verify", files["main"])
    assert (code, err) == (1, "")
    assert "unknown main-chain block type '{}'" in out

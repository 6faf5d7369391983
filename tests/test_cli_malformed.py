"""Hostile files given to the read and verify commands: each is refused with
one line (or a FAILED verdict naming what is wrong), never a hang, an
unbounded read, an unforeseen error, or an ``ok`` for what was not checked.

Found by fuzzing the CLI with malformed, truncated and crafted inputs; a
ledger a test "re-signs" is what anyone holding its key (or writing a
ledger that only claims to be self-consistent) can produce.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.merkle import MalformedProof, parse_proof
from flchain_flwr.ledger.notes import VerifierKey
from flchain_flwr.ledger.trading import TradingChain

from .ledger_helpers import (
    LEADER_KEY,
    TRUSTED,
    Edit,
    build_ledger,
    checkpoint_at,
    digest_of,
    flchain,
    init_main,
    resign_block,
)

FLCHAIN = str(Path(sys.executable).with_name("flchain"))
ENDLESS_VIEW = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n) "
    "SELECT {columns} FROM n, {table}"
)
"""A view that never ends: reading it once never returns."""


def run_limited(*argv: str, memory: int = 3 << 29) -> subprocess.CompletedProcess[str]:
    """The console script with at most ``memory`` bytes of address space and
    30 s: an unbounded read or a hang fails the test instead of the machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {k: v for k, v in os.environ.items() if k != "FLCHAIN_DEBUG"}
    return subprocess.run(
        [FLCHAIN, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=env,
        preexec_fn=limit,  # the test process starts no threads
    )


def assert_refused(done: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 1 (a check failed) or 2 (bad input), one line saying why."""
    text = done.stdout + done.stderr
    assert done.returncode in (1, 2), (done.returncode, text)
    assert "Traceback" not in text and "unexpected" not in text, text
    assert len(text.splitlines()) == 1, text
    for part in parts:
        assert part in text, (part, text)


def make_endless(path: Path, table: str, columns: list[str]) -> None:
    """Replace ``table`` of the SQLite file at ``path`` by an endless view of it."""
    names = ", ".join(columns)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"ALTER TABLE {table} RENAME TO kept")
        query = ENDLESS_VIEW.format(columns=names, table="kept")
        db.execute(f"CREATE VIEW {table} ({names}) AS {query}")


def test_a_table_that_is_an_endless_view_is_refused_not_run(tmp_path: Path) -> None:
    ledger = tmp_path / "chain.db"
    build_ledger(ledger, blocks=3).close()
    make_endless(ledger, "blocks", ["height", "hash", "header", "body", "signature"])
    for command in ("verify", "show", "export"):
        assert_refused(run_limited("ledger", command, str(ledger)), "view")
    meta = tmp_path / "meta.db"
    build_ledger(meta, blocks=2).close()
    make_endless(meta, "meta", ["key", "value"])
    assert_refused(run_limited("ledger", "verify", str(meta)), "view")
    trade = tmp_path / "trade.db"
    TradingChain(trade, chain_id="market", signing_key=LEADER_KEY).close()
    with closing(sqlite3.connect(trade)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
    make_endless(trade, "entries", columns)
    assert_refused(run_limited("model", "market", str(trade)), "view")


def test_a_main_chain_with_an_endless_view_is_refused(tmp_path: Path) -> None:
    chain, _, _ = init_main(tmp_path)
    with closing(sqlite3.connect(chain)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(blocks)")]
    make_endless(chain, "blocks", columns)
    for argv in (["main", "verify", str(chain)], ["main", "show", str(chain)]):
        assert_refused(run_limited(*argv), "view")


def test_huge_inputs_are_read_only_up_to_their_limit(tmp_path: Path) -> None:
    """A file of 4 GiB: each reader stops past its format's limit (a device
    that never ends, ``/dev/zero``, is not a regular file: refused unread,
    tests/test_cli_inputs.py)."""
    ledger = tmp_path / "chain.db"
    build_ledger(ledger, blocks=3).close()
    proof = tmp_path / "proof.json"
    proof.write_text(
        flchain("ledger", "proof", str(ledger), "--update", digest_of(201))[1]
    )
    vkey = VerifierKey("main", bytes(SigningKey(b"\x07" * 32).verify_key)).encode()
    assert (
        flchain("witness", "init", str(tmp_path / "w"), "--name", "w.example")[0] == 0
    )
    sparse = tmp_path / "huge.checkpoint"  # 4 GiB that take no disk
    with sparse.open("wb") as file:
        file.truncate(4 << 30)
    huge = str(sparse)
    cases = [
        ["ledger", "check-proof", huge, "--trusted-key", TRUSTED],
        ["ledger", "check-proof", str(proof), "--checkpoint", huge],
        ["ledger", "verify", str(ledger), "--checkpoint", huge],
        ["main", "check-proof", huge, "--main-key", vkey],
        ["witness", "cosign", str(tmp_path / "w"), huge],
        ["model", "verify", huge, "--trusted", f"main={vkey}"],
        ["model", "verify", str(proof), "--trusted", f"@{huge}"],
    ]
    for argv in cases:
        assert_refused(run_limited(*argv), "larger than")


def resign(path: Path, height: int, edit: Edit) -> None:
    """:func:`resign_block` on the ledger at ``path``, and its checkpoint
    signed again beside it (what ``--trusted-key`` checks)."""
    with Ledger(path, create=False) as ledger:
        resign_block(ledger, height, edit)
        ledger.checkpoint_path.write_bytes(checkpoint_at(ledger, len(ledger)))


WRONG_HEADERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "model_version null": (lambda h: h.update(model_version=None), "model_version"),
    "model_version text": (lambda h: h.update(model_version="3"), "model_version"),
    "model_version < 0": (lambda h: h.update(model_version=-1), "model_version"),
    "base_version list": (lambda h: h.update(base_version=[2]), "base_version"),
    "no base_version": (lambda h: h.pop("base_version"), "base_version"),
    "sim_time text": (lambda h: h.update(sim_time="soon"), "sim_time"),
    "no sim_time": (lambda h: h.pop("sim_time"), "sim_time"),
    "config_digest number": (lambda h: h.update(config_digest=5), "config_digest"),
}


@pytest.mark.parametrize("case", sorted(WRONG_HEADERS))
def test_verify_refuses_a_signed_header_whose_values_readers_cannot_use(
    tmp_path: Path, case: str
) -> None:
    """``show`` of a header without a version says "run verify to find the
    bad block": verify must find it (it said ``ok``)."""
    change, field = WRONG_HEADERS[case]
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=5).close()
    resign(path, 3, lambda header, _: change(header))
    for trusted in ([], ["--trusted-key", TRUSTED]):
        code, out = flchain("ledger", "verify", str(path), *trusted)
        assert code == 1 and out.startswith("FAILED at block 3: "), out
        assert field in out, out


@pytest.mark.parametrize(
    "field, value", [("votes", {}), ("rejected", [1]), ("included", ["x"])]
)
def test_verify_refuses_body_entries_that_are_not_arrays_of_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=5).close()
    resign(path, 3, lambda _, body: body.update({field: value}))
    code, out = flchain("ledger", "verify", str(path))
    assert code == 1 and out.startswith("FAILED at block 3: "), out
    assert field in out and "block cannot be checked" not in out, out
    # rewards pays nothing for such a block, and says nothing unforeseen
    code, out = flchain("ledger", "rewards", str(path), "--json")
    assert code == 0 and capsys.readouterr().err == ""
    assert all(share["blocks"] <= 3 for share in json.loads(out))


WRONG_INCLUDED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "num_examples text": (lambda u: u.update(num_examples="10"), "num_examples"),
    "num_examples < 0": (lambda u: u.update(num_examples=-5), "num_examples"),
    "weight text": (lambda u: u.update(weight="1.0"), "weight"),
    "weight true": (lambda u: u.update(weight=True), "weight"),
    "weight < 0": (lambda u: u.update(weight=-0.5), "weight"),
    "staleness text": (lambda u: u.update(staleness="0"), "staleness"),
    "staleness 0.5": (lambda u: u.update(staleness=0.5), "staleness"),
    "trained_on text": (lambda u: u.update(trained_on="2"), "trained_on"),
    "node_id not an id": (lambda u: u.update(node_id="node-10"), "node_id"),
}
"""An included update's recorded numbers no writer records: plain ``verify``
said ``ok`` to each (only ``--replay`` looked at them, and a PoV check read
``"10"`` as 10)."""


@pytest.mark.parametrize("case", sorted(WRONG_INCLUDED))
def test_verify_refuses_included_updates_whose_numbers_are_not_numbers(
    tmp_path: Path, case: str
) -> None:
    change, field = WRONG_INCLUDED[case]
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=5).close()
    resign(path, 3, lambda _, body: change(body["included"][1]))
    for trusted in ([], ["--trusted-key", TRUSTED]):
        code, out = flchain("ledger", "verify", str(path), *trusted)
        assert code == 1 and out.startswith("FAILED at block 3: "), out
        assert f"included update 1: {field}" in out, out


@pytest.mark.parametrize("case", sorted(WRONG_INCLUDED))
def test_the_writer_refuses_included_updates_verify_refuses(
    tmp_path: Path, case: str
) -> None:
    change, field = WRONG_INCLUDED[case]
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=2).close()
    update = {
        "node_id": 10,
        "digest": digest_of(900),
        "trained_on": 1,
        "staleness": 0,
        "weight": 1.0,
        "num_examples": 5,
    }
    change(update)
    with Ledger(path, signing_key=LEADER_KEY) as ledger:
        with pytest.raises(ValueError, match=f"included update 0: {field}"):
            ledger.append(
                model={},
                model_version=2,
                base_version=1,
                config_digest="c" * 64,
                included=[update],
                sim_time=2.0,
            )
        assert len(ledger) == 2


def test_the_writer_refuses_what_verify_refuses(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=2).close()
    with Ledger(path, signing_key=LEADER_KEY) as ledger:
        for bad in ({"model_version": -1}, {"sim_time": float("inf")}):
            fields: dict[str, Any] = {"model_version": 2, "sim_time": 2.0, **bad}
            with pytest.raises(ValueError):
                ledger.append(
                    model={}, base_version=1, config_digest="c" * 64, **fields
                )
        assert len(ledger) == 2
    assert flchain("ledger", "verify", str(path))[0] == 0


def test_deep_nesting_in_a_block_is_a_failed_check_not_an_unforeseen_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=3).close()
    deep = b"[" * 100_000 + b"]" * 100_000
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE blocks SET header = ? WHERE height = 0", (deep,))
    code, out = flchain("ledger", "verify", str(path))
    assert code == 1 and out.startswith("FAILED at block 0: "), out
    assert "nested" in out, out
    for command in ("show", "export", "rewards"):
        code, _ = flchain("ledger", command, str(path))
        err = capsys.readouterr().err
        assert code == 2 and "unexpected" not in err and "nested" in err, err


def test_verify_no_models_says_the_models_were_not_checked(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=3).close()
    for blob in Path(f"{path}.models").rglob("*"):
        if blob.is_file():
            blob.write_bytes(b"not the model")
    code, out = flchain("ledger", "verify", str(path), "--no-models")
    assert code == 0 and "model blobs: not checked (--no-models)" in out, out
    code, out = flchain("ledger", "verify", str(path))
    assert code == 1 and "does not hash to its name" in out


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"kind": "inclusion", "kind": "consistency"}', "appears twice"),
        ('{"size": NaN}', "NaN is not a JSON value"),
        ('{"size": [-Infinity]}', "-Infinity is not a JSON value"),
    ],
)
def test_a_proof_other_json_readers_would_read_otherwise_is_malformed(
    text: str, why: str
) -> None:
    with pytest.raises(MalformedProof, match=why):
        parse_proof(text)
    with pytest.raises(MalformedProof, match=why):
        parse_proof(text.encode())

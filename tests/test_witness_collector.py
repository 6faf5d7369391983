"""The one cosigning collector training ledgers and the trading chain share,
and the witness commands over files with the text request.

Real witnesses in folders; a witness that is "down" refuses every request
with 504 (as a node that does not answer does); a recording wrapper shows
which sizes a witness was asked from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger.anchoring import (
    WitnessClient,
    collect_cosignatures,
    log_key_of,
)
from flchain_flwr.ledger.checkpoint import Checkpoint, sign_checkpoint
from flchain_flwr.ledger.cosignature import verify_cosignatures
from flchain_flwr.ledger.maindb import AnchorRefused
from flchain_flwr.ledger.notes import NoteSignature, SignedNote
from flchain_flwr.ledger.rfc6962 import HashTree, verify_consistency
from flchain_flwr.ledger.witness import CosignRequest, Witness, WitnessRefused

from .ledger_helpers import build_ledger
from .test_witness import LOG, ORIGIN

TREE = HashTree(bytes([i]) for i in range(9))


def note_of(size: int) -> SignedNote:
    return sign_checkpoint(Checkpoint(ORIGIN, size, TREE.root(size)), [LOG])


class Down:
    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        raise WitnessRefused(504, "did not answer in 60s")


class Recording:
    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.asked: list[tuple[int, tuple[bytes, ...]]] = []

    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        self.asked.append((request.old, request.consistency))
        return self.witness.add_checkpoint(CosignRequest.decode(request.encode()))


def witnesses(tmp_path: Path, count: int) -> list[Witness]:
    return [
        Witness.init(tmp_path / f"w{i}", f"w{i}.example", logs=[LOG.verifier])
        for i in range(count)
    ]


def collect(
    clients: Sequence[WitnessClient],
    size: int,
    quorum: int,
    sizes: dict[int, int] | None = None,
) -> tuple[SignedNote, list[str]]:
    return collect_cosignatures(
        note_of(size), size, LOG.verifier, clients, quorum, TREE.consistency, sizes
    )


def test_quorum_met_with_one_witness_down(tmp_path: Path) -> None:
    real = witnesses(tmp_path, 2)
    note, refusals = collect([real[0], Down(), real[1]], 5, 2)
    found = verify_cosignatures(note, [w.key for w in real])
    assert sorted(found) == sorted(w.key.encode() for w in real)
    assert refusals == ["witness 1: did not answer in 60s"]


def test_quorum_missed_is_refused_with_every_reason(tmp_path: Path) -> None:
    (real,) = witnesses(tmp_path, 1)
    with pytest.raises(AnchorRefused, match="1 witnesses cosigned, the quorum is 2"):
        collect([Down(), real, Down()], 5, 2)
    assert real.latest(ORIGIN) is not None  # the one that cosigned kept it


def test_a_409_is_retried_from_the_size_the_witness_names(tmp_path: Path) -> None:
    (real,) = witnesses(tmp_path, 1)
    collect([real], 5, 1)  # the witness now holds size 5
    recording = Recording(real)
    sizes: dict[int, int] = {}
    collect([recording], 9, 1, sizes)
    (first, _), (second, proof) = recording.asked
    assert (first, second) == (0, 5) and sizes == {0: 9}
    verify_consistency(5, 9, TREE.root(5), TREE.root(9), proof)
    # The memo makes the next first try right; a wrong memo costs one retry.
    recording.asked.clear()
    collect([recording], 9, 1, sizes)
    assert [old for old, _ in recording.asked] == [9]
    recording.asked.clear()
    collect([recording], 9, 1, {0: 3})
    assert [old for old, _ in recording.asked] == [3, 9]
    # A witness ahead of the log (a truncation) is refused, not retried forever.
    recording.asked.clear()
    with pytest.raises(AnchorRefused, match="truncation"):
        collect([recording], 7, 1)
    assert [old for old, _ in recording.asked] == [0, 9]


def test_witness_commands_speak_the_text_body(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = build_ledger(tmp_path / "sub.db", 6)
    vkey = log_key_of(ledger).encode()
    ledger.close()
    folder = str(tmp_path / "w")
    assert (
        cli(["witness", "init", folder, "--name", "w.example", "--trust-on-first-use"])
        == 0
    )
    capsys.readouterr()
    assert cli(["witness", "request", str(tmp_path / "sub.db")]) == 0
    body = capsys.readouterr().out
    assert body.startswith("old 0\n\nflchain-flwr/test-chain\n6\n")
    (tmp_path / "r.txt").write_text(body)
    # Trust on first use needs the log's key beside the body.
    assert cli(["witness", "cosign", folder, str(tmp_path / "r.txt")]) == 1
    assert "REFUSED (404)" in capsys.readouterr().out
    code = cli(
        ["witness", "cosign", folder, str(tmp_path / "r.txt"), "--log-key", vkey]
    )
    assert code == 0 and capsys.readouterr().out.startswith("\u2014 w.example ")
    assert cli(["witness", "request", str(tmp_path / "sub.db"), "--old", "3"]) == 0
    body = capsys.readouterr().out
    assert body.startswith("old 3\n") and body.count("\n") > 2 + 3
    (tmp_path / "crlf.txt").write_bytes(body.replace("\n", "\r\n").encode())
    assert cli(["witness", "cosign", folder, str(tmp_path / "crlf.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "carriage return" in err

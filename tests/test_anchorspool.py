"""Anchoring without the main key: ServerApps spool cosigned anchor requests,
the main chain's operator ingests them.

Who holds what: each run holds only its subchain key (its run config names
no main-chain key); the operator holds ``MAIN_KEY``; an attacker can write
any file into the spool and holds keys of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorcheck import check_anchored
from flchain_flwr.ledger.anchoring import cosigned_checkpoint, log_key_of
from flchain_flwr.ledger.anchorspool import AnchorRequest, SpoolAnchorer, parse_request
from flchain_flwr.ledger.checkpoint import ledger_origin, parse_checkpoint
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.mainingest import ingest_spool
from flchain_flwr.ledger.mainverify import WitnessRule
from flchain_flwr.ledger.notes import SignedNote, VerifierKey, parse_note
from flchain_flwr.ledger.witness import Witness
from flchain_flwr.strategies.anchor import anchorer_from_run_config

from .ledger_helpers import build_ledger, checkpoint_at
from .test_anchoring import MAIN_KEY, make_witnesses, policy, run_concurrently
from .test_mainwit import grow

RUN_KEYS = {"run-a": SigningKey(b"\x0a" * 32), "run-b": SigningKey(b"\x0b" * 32)}


def main_with_witnesses(folder: Path, logs: list[VerifierKey]) -> list[Witness]:
    MainChain.create(
        folder / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    ).close()
    return make_witnesses(folder, [*logs, MainChain(folder / "main.db").public_key])


def operator(folder: Path, witnesses: list[Witness]) -> MainChain:
    return MainChain(folder / "main.db", signing_key=MAIN_KEY, witnesses=witnesses)


def test_two_runs_spool_and_the_operator_ingests(tmp_path: Path) -> None:
    logs = [
        VerifierKey(ledger_origin(c), bytes(k.verify_key)) for c, k in RUN_KEYS.items()
    ]
    witnesses = main_with_witnesses(tmp_path, logs)
    spool = tmp_path / "spool"
    anchorers = {}
    for chain in RUN_KEYS:
        cfg = {
            "anchor-main": str(tmp_path / "main.db"),
            "anchor-spool": str(spool),
            "anchor-witnesses": ",".join(str(w.folder) for w in witnesses),
            "anchor-every": 2,
        }
        assert not any("key" in name for name in cfg)  # no main key in the run
        anchorers[chain] = anchorer_from_run_config(cfg)
        assert isinstance(anchorers[chain], SpoolAnchorer)
    run_concurrently(tmp_path, RUN_KEYS, anchorers)
    spooled = sorted(p.name for p in spool.iterdir())
    for anchorer in anchorers.values():
        assert isinstance(anchorer, SpoolAnchorer)
        assert not anchorer.failures and len(anchorer.spooled) >= 2
    with MainChain(tmp_path / "main.db") as main:
        assert len(main) == 1  # the runs never wrote to it
    with operator(tmp_path, witnesses) as main:
        results = ingest_spool(main, spool)
        assert [r.outcome for r in results] == ["anchored"] * len(spooled), results
        assert main.witness_refusals == []
        said = main.verify(witnessed=WitnessRule())
        assert f"{len(spooled) + 1} blocks is cosigned by 3 of 3" in said
        for chain in RUN_KEYS:
            with Ledger(tmp_path / f"{chain}.db", create=False) as ledger:
                report = check_anchored(ledger, main.path, main_key=main.public_key)
                assert report.ok, report
                assert main.anchors_for(ledger.origin)[-1].checkpoint.size == len(
                    ledger
                )
        assert sorted(p.name for p in (spool / "ingested").iterdir()) == spooled
        # Ingesting again is a no-op; a request put back is found anchored.
        assert ingest_spool(main, spool) == []
        (spool / "ingested" / spooled[0]).rename(spool / spooled[0])
        again = ingest_spool(main, spool)
        assert [r.outcome for r in again] == ["present"]
        assert len(main) == len(spooled) + 1


@pytest.fixture
def spooled(tmp_path: Path) -> tuple[Ledger, list[Witness], Path]:
    ledger = build_ledger(tmp_path / "sub.db", 5)
    witnesses = main_with_witnesses(tmp_path, [log_key_of(ledger)])
    spool = tmp_path / "spool"
    writer = SpoolAnchorer(
        MainChain(tmp_path / "main.db"), spool, witnesses, every_blocks=1
    )
    assert writer.anchor_now(ledger, 0.0) is not None
    grow(ledger, 2)
    assert writer.anchor_now(ledger, 1.0) is not None  # proof from 5 to 7
    return ledger, witnesses, spool


def test_spooled_requests_ingest_in_order_with_their_proofs(spooled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger, witnesses, spool = spooled
    names = sorted(p.name for p in spool.iterdir())
    assert names == [f"flchain-flwr_test-chain-{s:012d}.anchor.json" for s in (5, 7)]
    later = parse_request((spool / names[1]).read_bytes())
    assert sorted(later.consistency) == [5]
    with operator(tmp_path, witnesses) as main:
        assert [r.outcome for r in ingest_spool(main, spool)] == ["anchored"] * 2
        assert [b.checkpoint.size for b in main.anchors_for(ledger.origin)] == [5, 7]


def request_file(spool: Path, name: str, request: AnchorRequest) -> None:
    (spool / name).write_bytes(request.encode())


def test_junk_and_forged_requests_are_rejected_with_reasons(  # type: ignore[no-untyped-def]
    spooled, tmp_path: Path, capsys
) -> None:
    ledger, witnesses, spool = spooled
    honest = parse_request(sorted(spool.iterdir())[1].read_bytes())  # size 7
    (spool / sorted(p.name for p in spool.iterdir())[1]).unlink()
    grow(ledger, 1)
    note, _ = cosigned_checkpoint(ledger, witnesses, 2)  # size 8, witnessed
    attacker = SigningKey(b"\x66" * 32)
    resigned = parse_note(checkpoint_at(ledger, 8, attacker))
    bare = SignedNote(note.text, note.signatures[:2])  # one cosignature
    entries = {
        "junk.txt": b"hello",
        "big.json": b" " * (2 << 20),
        "list.json": b"[1, 2]",
        "other.json": json.dumps({"format": "flchain-anchor-request/1"}).encode(),
    }
    for name, data in entries.items():
        (spool / name).write_bytes(data)
    (spool / "a-folder").mkdir()
    os.symlink("/etc/passwd", spool / "link.json")
    checkpoint = parse_checkpoint(note.text)
    key = log_key_of(ledger)
    forged = {
        "below-quorum.json": AnchorRequest(bare, checkpoint, key, honest.consistency),
        "attacker-key.json": AnchorRequest(
            resigned,
            checkpoint,
            VerifierKey(ledger.origin, bytes(attacker.verify_key)),
            {},
        ),
        "no-proof.json": AnchorRequest(note, checkpoint, key, {}),
        "wrong-proof.json": AnchorRequest(note, checkpoint, key, honest.consistency),
    }
    for name, request in forged.items():
        request_file(spool, name, request)
    key_file = tmp_path / "main.key"
    key_file.write_bytes(MAIN_KEY.encode().hex().encode())
    folders = [arg for w in witnesses for arg in ("--witness", str(w.folder))]
    command = ["main", "ingest", str(spool), "--main", str(tmp_path / "main.db")]
    capsys.readouterr()
    assert cli([*command, "--key", str(key_file), *folders]) == 1
    out = capsys.readouterr().out
    rejected = spool / "rejected"
    reasons = {
        p.name[: -len(".reason")]: p.read_text()
        for p in rejected.iterdir()
        if p.name.endswith(".reason")
    }
    expected = {
        "junk.txt": "not JSON",
        "big.json": "a request has at most",
        "list.json": "not a request",
        "other.json": "not a request",
        "a-folder": "not a regular file",
        "link.json": "not a regular file",
        "below-quorum.json": "quorum is 2 of 3",
        "attacker-key.json": "was anchored with key",
        "no-proof.json": "no consistency proof from its anchored size 5",
        "wrong-proof.json": "the consistency proof is about other trees",
    }
    assert set(reasons) == set(expected), reasons
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])
        assert f"REJECTED {name}: " in out
    assert "1 ingested, 10 rejected" in out  # the honest size-5 request
    left = sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))
    assert left == ["ingested", "rejected"]
    with MainChain(tmp_path / "main.db") as main:
        assert [b.checkpoint.size for b in main.anchors_for(ledger.origin)] == [5]
    # The honest later request still goes in; a second run is a no-op.
    proof = {5: ledger.prove_consistency(5)}
    request_file(spool, "late.json", AnchorRequest(note, checkpoint, key, proof))
    assert cli([*command, "--key", str(key_file), *folders]) == 0
    assert "anchored at height 2" in capsys.readouterr().out
    assert cli([*command, "--key", str(key_file)]) == 0
    assert "0 ingested, 0 rejected" in capsys.readouterr().out
    assert cli([*command, "--key", str(tmp_path / "nope.key")]) == 2
    assert (
        cli(
            [
                "main",
                "ingest",
                str(tmp_path / "nowhere"),
                "--main",
                str(tmp_path / "main.db"),
                "--key",
                str(key_file),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # NaN passed the isinstance check and failed `seconds > 0`: timed
        # anchoring was silently off
        ("anchor-every-seconds", float("nan")),
        ("anchor-every-seconds", "30"),
        ("anchor-every", 2.5),
        ("anchor-witness-nodes", -1),
        ("anchor-spool", True),
        ("anchor-witnesses", 0),
    ],
)
def test_a_bad_anchor_key_is_refused_naming_it(
    tmp_path: Path, key: str, value: int | float | str | bool
) -> None:
    witnesses = main_with_witnesses(tmp_path, [])
    cfg: dict[str, int | float | str | bool] = {
        "anchor-main": str(tmp_path / "main.db"),
        "anchor-spool": str(tmp_path / "spool"),
        "anchor-witnesses": ",".join(str(w.folder) for w in witnesses),
        "anchor-every": 2,
        key: value,
    }
    with pytest.raises(ValueError, match=f"run config key {key!r}"):
        anchorer_from_run_config(cfg)

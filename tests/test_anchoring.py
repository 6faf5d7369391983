"""The main chain and anchoring: quorum, proofs, and forks caught after anchoring.

Who holds what: the subchain's operator holds ``LEADER_KEY`` (it can sign a
fork, a truncation or a rewrite of its own ledger); each witness holds its
own key; the main chain's operator holds ``MAIN_KEY``; an attacker holds only
keys of its own and can write every file.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Ledger, mainverify
from flchain_flwr.ledger.anchorblock import (
    AnchorError,
    AnchorPolicy,
    anchor_record,
    check_anchor,
    parse_block,
)
from flchain_flwr.ledger.anchorcheck import check_anchored
from flchain_flwr.ledger.anchoring import (
    Anchorer,
    anchor_ledger,
    cosigned_checkpoint,
    log_key_of,
)
from flchain_flwr.ledger.anchorproof import check_anchor_proof
from flchain_flwr.ledger.checkpoint import ledger_origin
from flchain_flwr.ledger.cosignature import add_cosignature, cosign, cosigner_of
from flchain_flwr.ledger.logprover import LogProver
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.maindb import AnchorRefused
from flchain_flwr.ledger.notes import NoteSignature, SignerKey, VerifierKey, parse_note
from flchain_flwr.ledger.witness import Witness
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff

from .ledger_helpers import LEADER_KEY, build_ledger, checkpoint_at
from .toy import constant_work, initial_arrays, toy_client_app

MAIN_KEY = SigningKey(b"\x09" * 32)
WITNESS_KEYS = [
    SignerKey(f"w{i}.example", SigningKey(bytes([50 + i]) * 32)) for i in range(3)
]
STRANGER = SignerKey("w1.example", SigningKey(b"\x77" * 32))


def make_witnesses(folder: Path, logs: list[VerifierKey]) -> list[Witness]:
    return [
        Witness.init(folder / f"w{i}", key.name, logs=logs, signer=key)
        for i, key in enumerate(WITNESS_KEYS)
    ]


def policy(quorum: int = 2) -> AnchorPolicy:
    return AnchorPolicy(tuple(cosigner_of(k) for k in WITNESS_KEYS), quorum)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ledger, MainChain, list[Witness]]:
    ledger = build_ledger(tmp_path / "sub.db", 5)
    witnesses = make_witnesses(tmp_path, [log_key_of(ledger)])
    main = MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    )
    return ledger, main, witnesses


def other_history(path: Path, blocks: int) -> Ledger:
    """A ledger of the same chain and key as :func:`build_ledger`'s, other blocks."""
    ledger = Ledger(path, chain_id="test-chain", signing_key=LEADER_KEY)
    for height in range(blocks):
        ledger.append(
            model={"w": np.full(3, 7.0 + height, np.float32)},
            model_version=height,
            base_version=max(0, height - 1),
            config_digest="d" * 64,
        )
    return ledger


# ----------------------------------------------------------- policy, quorum
def test_policy_needs_a_possible_quorum() -> None:
    keys = tuple(cosigner_of(k) for k in WITNESS_KEYS)
    for quorum in (0, 4, True):
        with pytest.raises(AnchorError):
            AnchorPolicy(keys, quorum)  # type: ignore[arg-type]
    with pytest.raises(AnchorError, match="share a name"):
        AnchorPolicy((keys[0], keys[0]), 1)
    assert (
        AnchorPolicy.from_json(json.loads(json.dumps(policy().to_json()))) == policy()
    )


def test_an_anchor_needs_a_quorum_of_valid_policy_cosignatures(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, main, _ = setup
    note = parse_note(ledger.checkpoint_path.read_bytes())
    key = log_key_of(ledger)
    one = add_cosignature(note, cosign(note.text, WITNESS_KEYS[0], 1))
    with pytest.raises(AnchorRefused, match="1 of the policy's witnesses"):
        main.anchor(one, key)
    # A stranger's key under a policy witness's name: another key ID, ignored.
    stranger = add_cosignature(one, cosign(note.text, STRANGER, 1))
    with pytest.raises(AnchorRefused, match="quorum is 2 of 3"):
        main.anchor(stranger, key)
    # A forged line by a policy witness: the whole note is refused.
    real = cosign(note.text, WITNESS_KEYS[1], 1)
    flipped = bytearray(real.signature)
    flipped[20] ^= 1
    forged = add_cosignature(one, NoteSignature(real.name, real.key_id, bytes(flipped)))
    with pytest.raises(AnchorRefused, match="does not verify"):
        main.anchor(forged, key)
    # Cosigned by two, but the checkpoint signed by the attacker's key: the
    # main chain holds the origin's first key, and check_anchor the one trusted.
    attacker = SignerKey(ledger.origin, SigningKey(b"\x66" * 32))
    both = add_cosignature(one, real)
    main.anchor(both, key)
    resigned = parse_note(checkpoint_at(ledger, 5, attacker.signing_key))
    for witness in WITNESS_KEYS[:2]:
        resigned = add_cosignature(resigned, cosign(resigned.text, witness, 2))
    with pytest.raises(AnchorRefused, match="was anchored with key"):
        main.anchor(resigned, attacker.verifier)
    block = parse_block(
        anchor_record("main", 9, "0" * 64, resigned, attacker.verifier, None)
    )
    with pytest.raises(AnchorError, match="no trusted key signed the note"):
        check_anchor(block, main.policy, key)
    assert [b.height for b in main.anchors_for(ledger.origin)] == [1]


def test_anchor_proofs_are_checked_offline(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    proof = json.loads(json.dumps(main.prove_anchor(1)))
    found = check_anchor_proof(proof, main.public_key, log_key_of(ledger))
    assert found.check.checkpoint.size == 5 and len(found.check.cosigners) == 3
    assert "anchor block 1 of main chain main" in str(found)
    other_main = VerifierKey(main.origin, bytes(SigningKey(b"\x08" * 32).verify_key))
    with pytest.raises(AnchorError, match="main-chain checkpoint"):
        check_anchor_proof(proof, other_main)
    for field in ("block", "genesis"):
        record = proof[field]
        for index in (10, len(record) // 2, len(record) - 3):
            changed = {
                **proof,
                field: record[:index]
                + chr(ord(record[index]) ^ 1)
                + record[index + 1 :],
            }
            with pytest.raises(AnchorError):
                check_anchor_proof(changed, main.public_key)
    # The main chain's operator forges a block the witnesses never cosigned
    # (it holds the main key, so the block is in its signed log): the
    # quorum check still refuses it.
    note = parse_note(checkpoint_at(ledger, 5))
    note = add_cosignature(note, cosign(note.text, WITNESS_KEYS[0], 1))
    record = anchor_record(
        main.chain_id, 2, main.block(1).hash, note, log_key_of(ledger), None
    )
    main.db.execute(
        "INSERT INTO blocks VALUES (2, ?, ?, ?)",
        (parse_block(record).hash, ledger.origin, record),
    )
    forged = main.prove_anchor(2)
    with pytest.raises(AnchorError, match="the quorum is 2 of 3"):
        check_anchor_proof(forged, main.public_key)


def test_a_witness_that_lost_its_state_cannot_get_a_fork_anchored(
    setup,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    fork = other_history(tmp_path / "fork.db", 7)
    # Fresh witnesses with the same keys (their state wiped): they cosign.
    amnesic = make_witnesses(tmp_path / "amnesic", [log_key_of(ledger)])
    with pytest.raises(
        AnchorRefused, match="contradicts its anchor at main-chain height 1"
    ):
        anchor_ledger(fork, main, amnesic)
    assert len(main.anchors_for(ledger.origin)) == 1


# --------------------------------------------- fork, truncation, rewrite
def truncated(ledger: Ledger, folder: Path) -> Ledger:
    """A copy of the ledger cut to 3 blocks, with a checkpoint its key signs."""
    ledger.close()
    for suffix in ("", ".models", ".checkpoint"):
        source = Path(str(ledger.path) + suffix)
        target = folder / f"cut.db{suffix}"
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    db = sqlite3.connect(folder / "cut.db")
    db.execute("DELETE FROM blocks WHERE height >= 3")
    db.commit()
    db.close()
    cut = Ledger(folder / "cut.db", create=False)
    cut.checkpoint_path.write_bytes(checkpoint_at(cut, 3))
    return cut


@pytest.mark.parametrize(
    ("attack", "witness_says", "verify_says"),
    [
        ("truncation", "truncation: size 3 is below size 5", "blocks were removed"),
        ("rewrite", "fork or rewrite: size 5 with root", "blocks were rewritten"),
        ("fork", "does not extend size 5", "blocks were rewritten"),
    ],
)
def test_after_anchoring_witnesses_refuse_and_verify_detects(
    setup,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    attack: str,
    witness_says: str,
    verify_says: str,
) -> None:
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    path = str(main.path)
    main.close()
    if attack == "truncation":
        bad = truncated(ledger, tmp_path)
    else:
        bad = other_history(tmp_path / f"{attack}.db", 5 if attack == "rewrite" else 7)
    with pytest.raises(AnchorRefused) as refused:
        cosigned_checkpoint(bad, witnesses, 1)
    assert str(refused.value).count(witness_says) == 3, refused.value
    bad.close()
    capsys.readouterr()
    assert cli(["ledger", "verify", str(bad.path), "--anchored-in", path]) == 1
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith("FAILED: the ledger contradicts the anchored checkpoint at ")
    assert "main-chain height 1 (size 5" in out and verify_says in out
    # The honest ledger passes.
    assert (
        cli(["ledger", "verify", str(tmp_path / "sub.db"), "--anchored-in", path]) == 0
    )


def anchor_one_more(ledger: Ledger, main: MainChain, witnesses: list[Witness]) -> None:
    """What a live server and its anchorer do: commit a block, then anchor."""
    ledger.append(
        model={"w": np.full(3, float(len(ledger)), np.float32)},
        model_version=len(ledger),
        base_version=len(ledger) - 1,
        config_digest="c" * 64,
    )
    anchor_ledger(ledger, main, witnesses)


def test_main_verify_while_anchoring_goes_on_checks_one_snapshot(
    setup: tuple[Ledger, MainChain, list[Witness]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)

    def check_then_anchor(*args: Any, **kwargs: Any) -> Any:
        found = check_anchor(*args, **kwargs)
        if len(main) == 2:  # the reader has read its 2 blocks: one more comes
            anchor_one_more(ledger, main, witnesses)
        return found

    monkeypatch.setattr(mainverify, "check_anchor", check_then_anchor)
    with MainChain(main.path, read_only=True) as reader:
        text = reader.verify()
    assert len(main) == 3
    assert "main chain main: 2 blocks" in text and "covers 2 blocks" in text, text


def test_verify_anchored_while_anchoring_goes_on_checks_one_snapshot(
    setup: tuple[Ledger, MainChain, list[Witness]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    with Ledger(ledger.path, read_only=True) as reader:
        read = reader.block_hashes

        def read_then_anchor() -> list[str]:
            hashes = read()
            if len(ledger) == 5:  # the reader has the blocks: one more is anchored
                anchor_one_more(ledger, main, witnesses)
            return hashes

        monkeypatch.setattr(reader, "block_hashes", read_then_anchor)
        report = check_anchored(reader, main.path)
    assert len(main) == 3
    assert report.ok and "the ledger's 5 blocks hold all 1 checkpoints" in str(
        report
    ), report


def test_anchoring_a_ledger_the_server_appends_to_anchors_its_checkpoint(
    setup: tuple[Ledger, MainChain, list[Witness]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `flchain anchor` on a live ledger: a block and its checkpoint written
    # while the anchorer reads the blocks must not make the proofs miss.
    ledger, main, witnesses = setup
    sync = LogProver.sync

    def sync_then_append(prover: LogProver, reader: Ledger) -> None:
        sync(prover, reader)
        if len(ledger) == 5:  # the anchorer has the blocks: one more comes
            ledger.append(
                model={"w": np.zeros(3, np.float32)},
                model_version=5,
                base_version=4,
                config_digest="c" * 64,
            )

    monkeypatch.setattr(LogProver, "sync", sync_then_append)
    with Ledger(ledger.path, read_only=True) as reader:
        block = anchor_ledger(reader, main, witnesses)
    assert len(ledger) == 6 and block.checkpoint.size == 5


# ---------------------------------------------- from the strategy, two runs
def run_with_anchoring(
    path: Path, chain_id: str, key: SigningKey, anchorer: Anchorer
) -> None:
    grid = VirtualGrid(
        toy_client_app({}),
        [DeviceProfile(speed=s) for s in (1, 0.6, 0.3)],
        work_fn=constant_work(1.0),
    )
    ledger = Ledger(path, chain_id=chain_id, signing_key=key)
    strategy = FedBuff(
        buffer_size=2, staleness_fn=Constant(), ledger=ledger, seed=0, anchor=anchorer
    )
    strategy.start(grid, initial_arrays(), num_rounds=4, timeout=60.0)
    ledger.close()


def run_concurrently(
    folder: Path, keys: dict[str, SigningKey], anchorers: dict[str, Any]
) -> None:
    """One run per chain id at once, each with its anchorer, ledger in ``folder``."""
    threads = [
        threading.Thread(
            target=run_with_anchoring,
            args=(folder / f"{chain}.db", chain, key, anchorers[chain]),
        )
        for chain, key in keys.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_two_concurrent_runs_anchor_into_one_main_chain(tmp_path: Path) -> None:
    keys = {"run-a": SigningKey(b"\x0a" * 32), "run-b": SigningKey(b"\x0b" * 32)}
    logs = [VerifierKey(ledger_origin(c), bytes(k.verify_key)) for c, k in keys.items()]
    witnesses = make_witnesses(tmp_path, logs)
    MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    ).close()
    anchorers = {
        chain: Anchorer(
            MainChain(tmp_path / "main.db", signing_key=MAIN_KEY),
            [Witness(w.folder) for w in witnesses],
            every_blocks=2,
        )
        for chain in keys
    }
    run_concurrently(tmp_path, keys, anchorers)
    for anchorer in anchorers.values():
        assert not anchorer.failures
        assert len(anchorer.anchored) >= 2
    with MainChain(tmp_path / "main.db") as main:
        assert sorted(main.origins()) == sorted(ledger_origin(c) for c in keys)
        assert "2 origins" in main.verify()
        for chain in keys:
            with Ledger(tmp_path / f"{chain}.db", create=False) as ledger:
                report = check_anchored(ledger, main.path, main_key=main.public_key)
                assert report.ok, report
                last = main.anchors_for(ledger.origin)[-1].checkpoint
                assert last.size == len(ledger)  # the end of the run is anchored


def test_anchoring_is_due_by_blocks_or_virtual_time(setup) -> None:  # type: ignore[no-untyped-def]
    _, main, witnesses = setup
    with pytest.raises(ValueError, match="every_blocks or every_seconds"):
        Anchorer(main, witnesses)
    by_time = Anchorer(main, witnesses, every_seconds=5.0)
    assert not by_time.due(100, 4.9) and by_time.due(1, 5.0)
    by_blocks = Anchorer(main, witnesses, every_blocks=3)
    assert not by_blocks.due(2, 1e9) and by_blocks.due(3, 0.0)


def test_run_config_keys_build_an_anchorer(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from flchain_flwr.strategies import fedbuff_from_run_config

    _, main, witnesses = setup
    key_file = tmp_path / "main.key"
    key_file.write_bytes(MAIN_KEY.encode().hex().encode())
    cfg = {
        "ledger-path": str(tmp_path / "run.db"),
        "anchor-main": str(main.path),
        "anchor-key": str(key_file),
        "anchor-witnesses": ",".join(str(w.folder) for w in witnesses),
        "anchor-every": 3,
    }
    strategy = fedbuff_from_run_config(cfg)
    assert strategy.anchor is not None and strategy.anchor.every_blocks == 3
    for change, message in (
        ({"anchor-key": ""}, "anchor-main needs anchor-key"),
        ({"anchor-every": 0}, "every_blocks or every_seconds"),
        ({"anchor-every": "3"}, "'anchor-every': expected an integer"),
        ({"anchor-witnesses": str(tmp_path)}, "not a witness folder"),
    ):
        with pytest.raises(Exception, match=message):
            fedbuff_from_run_config({**cfg, **change})


def test_the_kept_tree_proves_exactly_what_merkle_proves(tmp_path: Path) -> None:
    from flchain_flwr.ledger.logprover import LogProver
    from flchain_flwr.ledger.merkle import consistency_proof

    ledger = build_ledger(tmp_path / "l.db", 9)
    prover = LogProver()
    prover.sync(ledger)
    hashes = ledger.block_hashes()
    for prior, later in ((1, 9), (4, 7), (5, 5), (8, 9)):
        assert prover.prove(prior, later) == consistency_proof(hashes, prior, later)
    other_history(tmp_path / "o.db", 3).close()
    with Ledger(tmp_path / "o.db", create=False) as other:
        prover.sync(other)  # another history: rebuilt, not appended to
        assert prover.prove(1, 3) == consistency_proof(other.block_hashes(), 1, 3)


def test_the_app_accepts_the_anchoring_keys(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from flchain_flwr.sim import app_run_config
    from flchain_flwr.strategies import fedbuff_from_run_config

    _, main, witnesses = setup
    key_file = tmp_path / "main.key"
    key_file.write_bytes(MAIN_KEY.encode().hex().encode())
    assert fedbuff_from_run_config(app_run_config("apps/flchain_cnn")).anchor is None
    config = app_run_config(
        "apps/flchain_cnn",
        {
            "ledger-path": str(tmp_path / "app.db"),
            "anchor-main": str(main.path),
            "anchor-key": str(key_file),
            "anchor-witnesses": ",".join(str(w.folder) for w in witnesses),
            "anchor-every-seconds": 30.0,
        },
    )
    anchor = fedbuff_from_run_config(config).anchor
    assert anchor is not None and anchor.every_seconds == 30.0
    assert anchor.every_blocks is None


def test_the_anchorer_asks_each_witness_once_per_anchor(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, main, witnesses = setup
    calls: list[int] = []

    class Counted:
        def __init__(self, witness: Witness) -> None:
            self.witness = witness

        def add_checkpoint(self, request):  # type: ignore[no-untyped-def]
            calls.append(request.old)
            return self.witness.add_checkpoint(request)

    anchorer = Anchorer(main, [Counted(w) for w in witnesses], every_blocks=1)
    assert anchorer.anchor_now(ledger, 0.0) is not None
    assert calls == [0, 0, 0]
    ledger.append(
        model={"w": np.zeros(3, np.float32)},
        model_version=5,
        base_version=4,
        config_digest="c" * 64,
    )
    calls.clear()
    assert anchorer.after_block(ledger, 1.0) is not None
    assert calls == [5, 5, 5]  # each witness's last size, no 409 round trip

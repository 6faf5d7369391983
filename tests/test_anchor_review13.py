"""Regression tests for the defects an adversarial review of anchoring and
trading found (issue 13), each forging exactly the attack.

Who holds what: the subchain's signer holds ``LEADER_KEY``, the main chain's
operator ``MAIN_KEY``, the witnesses ``WITNESS_KEYS``; the attacker holds none
of them unless a test says so, and can write every file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorError, AnchorPolicy
from flchain_flwr.ledger.anchoring import anchor_ledger, log_key_of
from flchain_flwr.ledger.cosignature import CosignerKey, cosigner_of
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.maindb import MainChainError
from flchain_flwr.ledger.witness import Witness

from .ledger_helpers import build_ledger, checkpoint_at
from .test_anchoring import MAIN_KEY, WITNESS_KEYS, make_witnesses, policy, truncated


@pytest.fixture
def chains(tmp_path: Path) -> tuple[Ledger, MainChain, list[Witness]]:
    """A 5-block subchain, a 2-of-3 main chain and its three witnesses."""
    ledger = build_ledger(tmp_path / "sub.db", 5)
    witnesses = make_witnesses(tmp_path, [log_key_of(ledger)])
    main = MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    )
    return ledger, main, witnesses


def anchor_twice(
    ledger: Ledger, main: MainChain, witnesses: list[Witness]
) -> tuple[bytes, bytes]:
    """Anchor the ledger at size 3 (height 1) then 5 (height 2); the main
    chain's checkpoints after each."""
    good = ledger.checkpoint_path.read_bytes()
    ledger.checkpoint_path.write_bytes(checkpoint_at(ledger, 3))
    anchor_ledger(ledger, main, witnesses)
    first = main.checkpoint_path.read_bytes()
    ledger.checkpoint_path.write_bytes(good)
    anchor_ledger(ledger, main, witnesses)
    return first, main.checkpoint_path.read_bytes()


def test_editing_the_origin_column_cannot_hide_an_anchor(
    chains: tuple[Ledger, MainChain, list[Witness]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger, main, witnesses = chains
    anchor_twice(ledger, main, witnesses)
    main.close()
    truncated(ledger, tmp_path).close()  # blocks 3 and 4 dropped
    db = sqlite3.connect(tmp_path / "main.db")
    db.execute("UPDATE blocks SET origin = 'x' WHERE height = 2")
    db.commit()
    db.close()
    capsys.readouterr()
    assert cli(["main", "verify", str(tmp_path / "main.db")]) == 1
    assert "origin column says 'x'" in capsys.readouterr().out
    cut, path = str(tmp_path / "cut.db"), str(tmp_path / "main.db")
    assert cli(["ledger", "verify", cut, "--anchored-in", path]) == 1
    assert "origin column says 'x'" in capsys.readouterr().out.splitlines()[-1]
    # Anchors are selected by the records, and each row's column is checked.
    with (
        MainChain(path) as reopened,
        pytest.raises(MainChainError, match="origin column says 'x'"),
    ):
        reopened.last_anchor("flchain-flwr/test-chain")


def test_one_key_under_two_witness_names_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = cosigner_of(WITNESS_KEYS[0]).public_key
    twins = (
        CosignerKey("w0.example", public),
        CosignerKey("w0-backup.example", public),
        cosigner_of(WITNESS_KEYS[2]),
    )
    with pytest.raises(AnchorError, match="share a public key"):
        AnchorPolicy(twins, 2)
    argv = ["main", "init", str(tmp_path / "m.db"), "--chain-id", "m"]
    argv += ["--key", str(tmp_path / "m.key"), "--quorum", "2"]
    for key in twins:
        argv += ["--witness", key.encode()]
    assert cli(argv) == 2
    assert "share a public key" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_a_subchain_cut_to_no_blocks_fails_naming_the_anchor(
    chains: tuple[Ledger, MainChain, list[Witness]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger, main, witnesses = chains
    anchor_ledger(ledger, main, witnesses)
    main.close()
    ledger.close()
    empty = Ledger(tmp_path / "cut.db", chain_id="test-chain", create=True)
    empty.close()
    capsys.readouterr()
    code = cli(
        [
            "ledger",
            "verify",
            str(tmp_path / "cut.db"),
            "--anchored-in",
            str(tmp_path / "main.db"),
        ]
    )
    out = capsys.readouterr().out.splitlines()[-1]
    assert code == 1, out
    assert out.startswith("FAILED: the ledger contradicts the anchored checkpoint")
    assert "main-chain height 1 (size 5" in out and "blocks were removed" in out


def test_an_unpinned_main_chain_is_said_to_be_only_self_consistent(
    chains: tuple[Ledger, MainChain, list[Witness]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger, main, witnesses = chains
    anchor_ledger(ledger, main, witnesses)
    main.close()
    ledger.close()
    argv = ["ledger", "verify", str(ledger.path), "--anchored-in", str(main.path)]
    capsys.readouterr()
    assert cli(argv) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.endswith("main chain not pinned (no --main-key): self-consistent only")
    assert cli([*argv, "--main-key", main.public_key.encode()]) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert "not pinned" not in out and "pinned to key" in out


def test_a_main_chain_rolled_back_fails_against_a_kept_checkpoint(
    chains: tuple[Ledger, MainChain, list[Witness]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger, main, witnesses = chains
    old, new = anchor_twice(ledger, main, witnesses)
    main_vkey = main.public_key.encode()
    main.close()
    truncated(ledger, tmp_path).close()
    # No key used: drop the anchor of size 5, put back the older checkpoint.
    db = sqlite3.connect(tmp_path / "main.db")
    db.execute("DELETE FROM blocks WHERE height = 2")
    db.commit()
    db.close()
    (tmp_path / "main.db.checkpoint").write_bytes(old)
    kept = tmp_path / "kept.checkpoint"
    kept.write_bytes(new)
    path, cut = str(tmp_path / "main.db"), str(tmp_path / "cut.db")
    capsys.readouterr()
    # Pinned to the key only, the rollback passes, and the output says so.
    assert (
        cli(["ledger", "verify", cut, "--anchored-in", path, "--main-key", main_vkey])
        == 0
    )
    assert "rollback of the main chain" in capsys.readouterr().out
    assert cli(["main", "verify", path, "--main-key", main_vkey]) == 0
    assert "not pinned to a checkpoint kept elsewhere" in capsys.readouterr().out
    # With the checkpoint the verifier kept, both fail and say why.
    pin = ["--main-checkpoint", str(kept)]
    assert cli(["main", "verify", path, *pin]) == 1
    out = capsys.readouterr().out
    assert "pinned main-chain checkpoint" in out and "blocks were removed" in out
    assert cli(["ledger", "verify", cut, "--anchored-in", path, *pin]) == 1
    assert "blocks were removed" in capsys.readouterr().out.splitlines()[-1]
    # A kept checkpoint the chain holds passes; an unreadable one is bad input.
    (tmp_path / "main.db.checkpoint").write_bytes(old)
    kept.write_bytes(old)
    assert cli(["main", "verify", path, *pin]) == 0
    assert "holds the pinned checkpoint of 2 blocks" in capsys.readouterr().out
    kept.write_bytes(b"not a note")
    assert cli(["ledger", "verify", cut, "--anchored-in", path, *pin]) == 2

"""The main chain as a witnessed log: each anchor's main checkpoint cosigned by
the policy's witnesses, and verifiers that demand it.

Who holds what: the main chain's operator holds ``MAIN_KEY`` and can write
every main-chain file (truncate, fork, put back an old checkpoint); each
witness holds its own key; the verifier holds the main key's vkey and reads
the witness keys from the genesis policy the main key vouches for.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorError
from flchain_flwr.ledger.anchoring import anchor_ledger, log_key_of
from flchain_flwr.ledger.anchorproof import check_anchor_proof
from flchain_flwr.ledger.checkpoint import parse_checkpoint
from flchain_flwr.ledger.cosignature import add_cosignature, cosign
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.maindb import AnchorRefused
from flchain_flwr.ledger.mainverify import WitnessRule
from flchain_flwr.ledger.mainwitness import main_witnessing
from flchain_flwr.ledger.notes import SignedNote, parse_note, read_note_or_error
from flchain_flwr.ledger.witness import Witness

from .ledger_helpers import build_ledger
from .test_anchoring import MAIN_KEY, STRANGER, WITNESS_KEYS, make_witnesses, policy
from .test_provenance import Run, run  # noqa: F401  (run: a fixture)
from .test_provenance import cli as provenance_cli

T0 = 1_000_000


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ledger, MainChain, list[Witness]]:
    ledger = build_ledger(tmp_path / "sub.db", 5)
    MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    ).close()
    main_vkey = MainChain(tmp_path / "main.db").public_key
    made = make_witnesses(tmp_path, [log_key_of(ledger), main_vkey])
    witnesses = [Witness(w.folder, clock=lambda: T0) for w in made]
    main = MainChain(tmp_path / "main.db", signing_key=MAIN_KEY, witnesses=witnesses)
    return ledger, main, witnesses


def grow(ledger: Ledger, blocks: int) -> None:
    for _ in range(blocks):
        height = len(ledger)
        ledger.append(
            model={"w": np.full(3, float(height), np.float32)},
            model_version=height,
            base_version=height - 1,
            config_digest="c" * 64,
        )


def stored(main: MainChain) -> SignedNote:
    return parse_note(main.checkpoint_path.read_bytes())


def cut_main(main: MainChain, height: int) -> None:
    """What the main key's holder can do: delete blocks from ``height`` on and
    put a freshly signed checkpoint (no cosignatures) in place."""
    main.db.execute("DELETE FROM blocks WHERE height >= ?", (height,))
    main.checkpoint_path.write_bytes(main.signed_checkpoint().encode())


def test_each_anchor_has_the_main_checkpoint_cosigned(setup, capsys) -> None:  # type: ignore[no-untyped-def]
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    grow(ledger, 2)
    anchor_ledger(ledger, main, witnesses)
    assert main.witness_refusals == []
    found = main_witnessing(stored(main), main.policy)
    assert found.size == 3 and sorted(found.cosigners) == [k.name for k in WITNESS_KEYS]
    assert [w.latest(main.origin).size for w in witnesses] == [3, 3, 3]
    said = main.verify(witnessed=WitnessRule(60, T0 + 30))
    assert "cosigned by 3 of 3 policy witnesses" in said and "at most 60 s old" in said
    # An anchor proof (and so a provenance bundle) carries those cosignatures.
    proof = json.loads(json.dumps(main.prove_anchor(2)))
    assert check_anchor_proof(proof, main.public_key).main_witnessing.require()
    main_out, ledger_out = cli_verify(main, ledger, capsys, 0)
    assert "cosigned by 3 of 3" in main_out
    assert "its checkpoint of 3 blocks is cosigned" in ledger_out


def test_anchored_witnessed_names_the_main_checkpoint_it_checked(  # type: ignore[no-untyped-def]
    setup, capsys, monkeypatch
) -> None:
    """`ledger verify --anchored-in --witnessed` while the anchorer goes on:
    each time the main checkpoint is read, another anchor follows (a newer
    checkpoint, cosigned). The witnessed line names the checkpoint the check
    read, not one read after it."""
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    read: list[int] = []

    def read_then_anchor(path: Path) -> object:
        note = read_note_or_error(path)
        assert isinstance(note, SignedNote), note
        read.append(parse_checkpoint(note.text).size)
        grow(ledger, 1)
        anchor_ledger(ledger, main, witnesses)
        return note

    monkeypatch.setattr(
        "flchain_flwr.ledger.mainverify.read_note_or_error", read_then_anchor
    )
    argv = ["ledger", "verify", str(ledger.path), "--anchored-in", str(main.path)]
    capsys.readouterr()
    assert cli([*argv, "--witnessed"]) == 0
    out = capsys.readouterr().out
    assert read and f"its checkpoint of {read[-1]} blocks is cosigned" in out, out


def cli_verify(  # type: ignore[no-untyped-def]
    main: MainChain, ledger: Ledger, capsys, code: int
) -> tuple[str, str]:
    """`main verify --witnessed` and `ledger verify --anchored-in --witnessed`
    (after closing both): each exits ``code``; their outputs."""
    path = str(main.path)
    main.close()
    ledger.close()
    outs = []
    capsys.readouterr()
    for args in (
        ["main", "verify", path],
        ["ledger", "verify", str(ledger.path), "--anchored-in", path],
    ):
        assert cli([*args, "--witnessed"]) == code
        outs.append(capsys.readouterr().out)
    return outs[0], outs[1]


@pytest.mark.parametrize("attack", ["truncation", "fork"])
def test_a_cut_or_forked_main_chain_gets_no_fresh_quorum(  # type: ignore[no-untyped-def]
    setup, capsys, attack: str
) -> None:
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    grow(ledger, 2)
    anchor_ledger(ledger, main, witnesses)  # witnessed at main size 3
    cut_main(main, 2)
    if attack == "truncation":
        main.cosign_checkpoint()
        said = "truncation: size 2 is below size 3"
    else:  # another block 2 in place of the deleted one: same size, other root
        grow(ledger, 1)
        anchor_ledger(ledger, main, witnesses)
        said = "fork or rewrite: size 3 with root"
    assert len(main.witness_refusals) == 3, main.witness_refusals
    assert all(said in refusal for refusal in main.witness_refusals)
    main.verify()  # self-consistent: without the demand it passes...
    assert "below the quorum of 2 (not demanded" in main.verify()
    with pytest.raises(AnchorRefused, match="cosigned by 0 of its policy's witnesses"):
        main.verify(witnessed=WitnessRule())
    path = str(main.path)
    main_out, ledger_out = cli_verify(main, ledger, capsys, 1)
    assert "not witnessed at this size" in main_out
    assert "FAILED: main chain" in ledger_out
    folders = [arg for w in witnesses for arg in ("--witness", str(w.folder))]
    assert cli(["main", "cosign", path, "--key", _key_file(path), *folders]) == 1
    assert capsys.readouterr().out.count(said) == 3


def _key_file(main_path: str) -> str:
    key = Path(main_path).with_name("main.key")
    key.write_bytes(MAIN_KEY.encode().hex().encode())
    return str(key)


def test_below_quorum_and_undeclared_cosignatures_are_refused(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    note = stored(main)
    bare = SignedNote(note.text, note.signatures[:1])  # the main key's line only
    one = add_cosignature(bare, note.signatures[1])
    # A stranger's key under a policy witness's name, and one not declared.
    stranger = add_cosignature(one, cosign(note.text, STRANGER, T0))
    for forged, count in ((bare, 0), (one, 1), (stranger, 1)):
        with pytest.raises(AnchorRefused, match=f"cosigned by {count} of its policy"):
            main.verify(checkpoint=forged, witnessed=WitnessRule())
        proof = main.prove_anchor(1, forged)
        with pytest.raises(AnchorError, match="the quorum is 2 of 3"):
            check_anchor_proof(proof, main.public_key).main_witnessing.require()
    # A flipped byte in a policy witness's line: the checkpoint is refused.
    line = note.signatures[2]
    flipped = bytearray(line.signature)
    flipped[30] ^= 1
    broken = add_cosignature(one, type(line)(line.name, line.key_id, bytes(flipped)))
    with pytest.raises(AnchorRefused, match="does not verify"):
        main.verify(checkpoint=broken)


def test_an_old_cosigned_checkpoint_is_caught_only_by_freshness(setup, capsys) -> None:  # type: ignore[no-untyped-def]
    ledger, main, witnesses = setup
    anchor_ledger(ledger, main, witnesses)
    old = main.checkpoint_path.read_bytes()  # cosigned at size 2
    grow(ledger, 2)
    anchor_ledger(ledger, main, witnesses)
    # Roll back to size 2 and put the old cosigned checkpoint back: the
    # witnesses did cosign it, so the quorum alone is satisfied (the limit
    # the docs state) ...
    main.db.execute("DELETE FROM blocks WHERE height >= 2")
    main.checkpoint_path.write_bytes(old)
    said = main.verify(witnessed=WitnessRule())
    assert "2 blocks is cosigned by 3 of 3" in said
    assert "rolled-back main chain would pass too; give a max age); not pinned" in said
    # ... and only its age gives it away.
    assert "at most 600 s old" in main.verify(witnessed=WitnessRule(600, T0 + 60))
    with pytest.raises(AnchorRefused, match="is stale: 0 cosignatures"):
        main.verify(witnessed=WitnessRule(600, T0 + 3600))
    path = str(main.path)
    main.close()
    capsys.readouterr()
    assert cli(["main", "verify", path, "--max-age", "3600"]) == 1  # T0 is 1970
    assert "may have been rolled back" in capsys.readouterr().out
    assert cli(["main", "verify", path, "--max-age", "0"]) == 2


def test_witnesses_that_do_not_know_the_main_chain_leave_it_unwitnessed(
    tmp_path: Path,
) -> None:
    ledger = build_ledger(tmp_path / "sub.db", 5)
    witnesses = make_witnesses(tmp_path, [log_key_of(ledger)])
    main = MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=policy(), signing_key=MAIN_KEY
    )
    main.witnesses = list(witnesses)
    block = anchor_ledger(ledger, main, witnesses)  # the anchor itself holds
    assert block.height == 1
    assert all("unknown origin 'flchain-flwr/main'" in r for r in main.witness_refusals)
    with pytest.raises(AnchorRefused, match="not witnessed"):
        main.verify(witnessed=WitnessRule())
    for witness in witnesses:
        witness.add_log(main.public_key)
    main.cosign_checkpoint()  # from size 0: nothing to be consistent with
    assert "cosigned by 3 of 3" in main.verify(witnessed=WitnessRule())
    with sqlite3.connect(main.path) as db:
        assert db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 2


def test_model_verify_demands_the_witnessed_main_checkpoint(
    run: Run,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Witnesses that know the main chain cosign its checkpoint, the bundle
    carries it and `model verify --witnessed` checks it; witnesses that do
    not know it leave a bundle that fails --witnessed."""
    outputs = []
    for know_main in (True, False):
        folder = tmp_path / str(know_main)
        with Ledger(run.ledger, create=False) as ledger:
            witnesses = make_witnesses(folder, [log_key_of(ledger)])
            main = MainChain.create(
                folder / "main.db", chain_id="m", policy=policy(), signing_key=MAIN_KEY
            )
            for witness in witnesses if know_main else []:
                witness.add_log(main.public_key)
            main.witnesses = list(witnesses)
            anchor_ledger(ledger, main, witnesses)
            main.close()
        bundle = folder / "b.bundle"
        code, out = provenance_cli(
            *("model", "prove", "--ledger", str(run.ledger), "--main"),
            *(str(folder / "main.db"), "--hash", run.model, "-o", str(bundle)),
        )
        assert code == 0, out
        trusted = f"--trusted=main={main.public_key.encode()}"
        outputs.append(
            provenance_cli("model", "verify", str(bundle), trusted, "--witnessed")
        )
    (good, good_out), (bad, bad_out) = outputs
    assert good == 0 and "main chain witnessing: its checkpoint of 2 blocks" in good_out
    assert bad == 1 and "not witnessed at this size" in bad_out

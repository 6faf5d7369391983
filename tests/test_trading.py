"""The model-trading subchain against forgery: each record is checked before
it is appended (signature, references, replays), ``verify`` finds a record
changed in the file, and the chain anchors in a main chain like any
subchain, which then refuses a rewritten trading log."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main as flchain
from flchain_flwr.ledger import trading
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.blocks import LedgerError
from flchain_flwr.ledger.canonical import encode, parse_canonical
from flchain_flwr.ledger.cosignature import add_cosignature, cosign, cosigner_of
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.maindb import AnchorRefused
from flchain_flwr.ledger.notes import SignedNote, SignerKey, VerifierKey, parse_note
from flchain_flwr.ledger.trade_anchor import anchor_trading_chain
from flchain_flwr.ledger.trade_entry import entry_hash, entry_problem
from flchain_flwr.ledger.trade_records import (
    TradeRefused,
    make_offer,
    make_purchase,
    make_receipt,
    sign_statement,
    statement_id,
)
from flchain_flwr.ledger.trading import TradingChain
from flchain_flwr.ledger.witness import Witness

SELLER = SigningKey(b"\x31" * 32)
BUYER = SigningKey(b"\x32" * 32)
OTHER = SigningKey(b"\x33" * 32)
OPERATOR = SigningKey(b"\x34" * 32)
MODEL = "ab" * 32
RUN = "flchain-flwr/run-1"
WITNESSES = [
    SignerKey(f"w{i}.example", SigningKey(bytes([0x40 + i]) * 32)) for i in range(3)
]


def market(tmp_path: Path) -> TradingChain:
    return TradingChain(tmp_path / "trade.db", chain_id="market", signing_key=OPERATOR)


def sale(
    chain: TradingChain, terms: dict[str, object] | None = None
) -> tuple[str, str]:
    """An offer and one purchase recorded; their ids."""
    offer = chain.append(
        *make_offer(SELLER, chain.market, MODEL, RUN, terms or {"price": 5})
    )
    purchase = chain.append(*make_purchase(BUYER, chain.market, offer.record_id))
    return offer.record_id, purchase.record_id


def test_an_offer_purchase_and_receipt_are_recorded_and_verify(tmp_path: Path) -> None:
    chain = market(tmp_path)
    _, purchase = sale(chain)
    chain.append(*make_receipt(BUYER, chain.market, purchase, MODEL))
    count, anchor, _ = chain.verify()
    assert count == 3
    assert "checkpoint of 3 entries" in anchor
    assert len(chain.book().receipts) == 1


def receipt_while_reading(chain: TradingChain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record a sale in ``chain``; its operator then appends the receipt while
    a reader checks the sale's second entry (it has read both entries)."""
    _, purchase = sale(chain)

    def check_then_append(
        value: Any, entry: Any, origin: str, position: int, *rest: Any
    ) -> Any:
        problem = entry_problem(value, entry, origin, position, *rest)
        if position == 1 and len(chain) == 2:
            chain.append(*make_receipt(BUYER, chain.market, purchase, MODEL))
        return problem

    monkeypatch.setattr(trading, "entry_problem", check_then_append)


def test_verify_while_the_operator_appends_checks_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator commits an entry, then writes its checkpoint: a reader
    # that read the entries before must check the checkpoint it read before.
    chain = market(tmp_path)
    receipt_while_reading(chain, monkeypatch)
    with TradingChain(chain.path, read_only=True) as reader:
        count, anchor, _ = reader.verify()
    assert len(chain) == 3
    assert count == 2 and "checkpoint of 2 entries" in anchor, anchor


def test_cli_market_counts_the_records_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offers, purchases and receipts `model market` reports are those of
    the snapshot it checked, not of a second read after the operator appended
    (a receipt appended meanwhile was counted though never checked)."""
    chain = market(tmp_path)
    receipt_while_reading(chain, monkeypatch)
    out = io.StringIO()
    assert flchain(["model", "market", str(chain.path)], out=out) == 0
    assert len(chain) == 3
    assert "2 records (1 offers, 1 purchases, 0 receipts)" in out.getvalue()


def _refused(chain: TradingChain, statement: dict[str, object], signature: str) -> str:
    before = chain.block_hashes()
    with pytest.raises(TradeRefused) as caught:
        chain.append(statement, signature)
    assert chain.block_hashes() == before  # nothing was written
    return str(caught.value)


def test_forged_records_are_refused_before_they_are_appended(tmp_path: Path) -> None:
    chain = market(tmp_path)
    offer, purchase = sale(chain, {"price": 5, "max_buyers": 2})
    # An offer whose seller did not sign it (signed by someone else).
    statement, _ = make_offer(SELLER, chain.market, MODEL, RUN, {"price": 1})
    forged = sign_statement(OTHER, statement)
    assert "signature" in _refused(chain, statement, forged)
    # A signed statement changed after signing.
    statement, signature = make_offer(SELLER, chain.market, MODEL, RUN, {"price": 9})
    assert "signature" in _refused(
        chain, {**statement, "terms": {"price": 0}}, signature
    )
    # A purchase of an offer the market does not hold.
    assert "does not hold" in _refused(
        chain, *make_purchase(OTHER, chain.market, "cd" * 32)
    )
    # A replayed purchase, and a replayed receipt.
    assert "replay" in _refused(chain, *make_purchase(BUYER, chain.market, offer))
    receipt = make_receipt(BUYER, chain.market, purchase, MODEL)
    chain.append(*receipt)
    assert "replay" in _refused(chain, *receipt)
    # A receipt by someone who did not buy, and one for another model.
    assert "other than the purchase" in _refused(
        chain, *make_receipt(OTHER, chain.market, purchase, MODEL)
    )
    second = chain.append(*make_purchase(OTHER, chain.market, offer)).record_id
    assert "other than the one offered" in _refused(
        chain, *make_receipt(OTHER, chain.market, second, "ef" * 32)
    )
    # The offer allowed two buyers: a third purchase is a double sale.
    third = SigningKey(b"\x35" * 32)
    assert "has them all" in _refused(chain, *make_purchase(third, chain.market, offer))
    # A statement signed for another market cannot be replayed into this one.
    assert "for market" in _refused(
        chain, *make_offer(SELLER, "flchain-flwr/other", MODEL, RUN, {})
    )
    assert chain.verify()[0] == 4


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("type", "gift", "unknown statement type"),
        ("model_hash", "AB" * 32, "lower-case hex"),
        ("training_origin", "has space", "not an origin"),
        ("terms", [1], "JSON object"),
        ("terms", {"max_buyers": 0}, "positive integer"),
        ("terms", {"blob": "x" * 5000}, "at most"),
    ],
)
def test_malformed_offers_are_refused(
    tmp_path: Path, field: str, value: object, reason: str
) -> None:
    chain = market(tmp_path)
    statement, _ = make_offer(SELLER, chain.market, MODEL, RUN, {})
    statement[field] = value
    assert reason in _refused(chain, statement, sign_statement(SELLER, statement))


def _rewrite_entry(path: Path, index: int, edit: dict[str, object]) -> None:
    """What someone with write access to the file can do: change an entry and
    keep its stored hash and record id consistent."""
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT entry FROM entries WHERE idx = ?", (index,)).fetchone()
    value = parse_canonical(bytes(raw), 2)
    value["statement"] = {**value["statement"], **edit}
    entry = encode(2, value)
    db.execute(
        "UPDATE entries SET entry = ?, hash = ?, record_id = ? WHERE idx = ?",
        (entry, entry_hash(entry), statement_id(value["statement"]), index),
    )
    db.commit()
    db.close()


def test_verify_finds_an_entry_changed_or_removed_in_the_file(tmp_path: Path) -> None:
    chain = market(tmp_path)
    sale(chain)
    chain.close()
    _rewrite_entry(tmp_path / "trade.db", 0, {"terms": {"price": 0}})
    with pytest.raises(TradeRefused, match="entry 0: the offer's signature"):
        market(tmp_path).verify()

    other = tmp_path / "b"
    other.mkdir()
    chain = market(other)
    offer, _ = sale(chain)
    chain.db.execute("DELETE FROM entries WHERE idx = 1")
    removed = "has 1 entry, the checkpoint 2: entries were removed"
    with pytest.raises(TradeRefused, match=removed):
        chain.verify()
    with pytest.raises(LedgerError, match=f"refusing to extend .*{removed}"):
        chain.append(*make_purchase(OTHER, chain.market, offer))


def test_verify_finds_the_entries_rewritten_under_a_checkpoint(tmp_path: Path) -> None:
    """Another sale in place of the one the operator's checkpoint covers."""
    kept = tmp_path / "kept.checkpoint"
    chain = market(tmp_path)
    sale(chain)
    kept.write_bytes(chain.checkpoint_path.read_bytes())
    chain.close()
    chain.path.unlink()
    chain.checkpoint_path.unlink()
    chain = market(tmp_path)
    sale(chain, {"price": 6})
    chain.checkpoint_path.write_bytes(kept.read_bytes())
    rewritten = (
        r"the ledger's first 2 entries have root \w+, the checkpoint \w+: "
        r"entries were rewritten"
    )
    with pytest.raises(TradeRefused, match=rewritten):
        chain.verify()


def _cosigned(note: SignedNote, count: int = 2) -> SignedNote:
    for witness in WITNESSES[:count]:
        note = add_cosignature(note, cosign(note.text, witness, 1_700_000_000))
    return note


def test_the_trading_chain_anchors_and_a_rewritten_log_is_refused(
    tmp_path: Path,
) -> None:
    """Anchored through three real witnesses (2 of 3 needed), twice; then the
    operator rewrites its log and signs a checkpoint of it with its own key:
    every witness refuses it, and so does the main chain even when colluding
    witnesses cosign it."""
    policy = AnchorPolicy(tuple(cosigner_of(w) for w in WITNESSES), 2)
    main = MainChain.create(
        tmp_path / "main.db",
        chain_id="main",
        policy=policy,
        signing_key=SigningKey(b"\x36" * 32),
    )
    chain = market(tmp_path)
    witnesses = []
    for index, signer in enumerate(WITNESSES):
        folder = tmp_path / f"witness{index}"
        Witness.init(folder, signer.name, logs=[chain.verifier], signer=signer)
        witnesses.append(Witness(folder, clock=lambda: 1_700_000_000))
    offer, _ = sale(chain)
    anchor_trading_chain(chain, main, witnesses)
    chain.append(*make_purchase(OTHER, chain.market, offer))
    block = anchor_trading_chain(chain, main, witnesses)
    assert [a.checkpoint.size for a in main.anchors_for(chain.origin)] == [2, 3]
    assert block.fields["consistency"]["prior_size"] == 2
    # The rewrite: a second purchase in place of the first, then one more.
    forged = TradingChain(
        tmp_path / "forged" / "trade.db", chain_id="market", signing_key=OPERATOR
    )
    offer, _ = sale(forged, {"price": 5})
    forged.db.execute("DELETE FROM entries WHERE idx = 1")
    forged.checkpoint_path.unlink()
    forged.append(*make_purchase(OTHER, forged.market, offer))
    forged.append(*make_purchase(BUYER, forged.market, offer))
    with pytest.raises(AnchorRefused, match="0 witnesses cosigned") as refused:
        anchor_trading_chain(forged, main, witnesses)
    assert "does not extend" in str(refused.value) or "fork" in str(refused.value)
    note = _cosigned(parse_note(forged.checkpoint_path.read_bytes()))
    with pytest.raises(AnchorRefused, match="contradicts its anchor"):
        main.anchor(note, forged.verifier, forged.prove_consistency(1, 3))
    # One witness is not a quorum.
    with pytest.raises(AnchorRefused, match="quorum"):
        main.anchor(
            _cosigned(parse_note(chain.checkpoint_path.read_bytes()), 1), chain.verifier
        )
    assert "3 blocks" in main.verify()


def test_a_trading_chain_needs_its_id_and_keeps_it(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no trading chain"):
        TradingChain(tmp_path / "none.db")
    market(tmp_path).close()
    with pytest.raises(LedgerError, match="holds chain"):
        TradingChain(tmp_path / "trade.db", chain_id="another")
    sqlite3.connect(tmp_path / "x.db").execute("CREATE TABLE t (a)").connection.close()
    with pytest.raises(LedgerError, match="not a trading chain"):
        TradingChain(tmp_path / "x.db", create=False)


def test_cli_market_checks_every_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = market(tmp_path)
    _, purchase = sale(chain)
    chain.append(*make_receipt(BUYER, chain.market, purchase, MODEL))
    vkey = chain.verifier.encode()
    chain.close()
    path = str(tmp_path / "trade.db")
    out = io.StringIO()
    assert flchain(["model", "market", path, "--trusted-key", vkey], out=out) == 0
    assert "3 records (1 offers, 1 purchases, 1 receipts)" in out.getvalue()
    out = io.StringIO()
    assert flchain(["model", "market", path], out=out) == 0
    assert "self-consistent only" in out.getvalue()
    other = VerifierKey(chain.origin, bytes(OTHER.verify_key)).encode()
    out = io.StringIO()
    assert flchain(["model", "market", path, "--trusted-key", other], out=out) == 1
    _rewrite_entry(tmp_path / "trade.db", 2, {"model_hash": "ef" * 32})
    out = io.StringIO()
    assert flchain(["model", "market", path, "--trusted-key", vkey], out=out) == 1
    assert out.getvalue().startswith("INVALID: entry 2:")
    capsys.readouterr()
    for argv in (
        ["model", "market", str(tmp_path / "missing.db")],
        ["model", "market", path, "--trusted-key", "not-a-key"],
        ["model", "market", str(tmp_path / "trade.db.checkpoint")],
    ):
        out = io.StringIO()
        assert flchain(argv, out=out) == 2, argv
        err = capsys.readouterr().err
        assert out.getvalue() == "" and err.count("\n") == 1, err


def test_cli_anchor_market(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = market(tmp_path)
    sale(chain)
    folders = []
    for index, signer in enumerate(WITNESSES):
        folder = tmp_path / f"witness{index}"
        Witness.init(folder, signer.name, logs=[chain.verifier], signer=signer)
        folders.append(str(folder))
    chain.close()
    policy = AnchorPolicy(tuple(cosigner_of(w) for w in WITNESSES), 2)
    main_key = tmp_path / "main.key"
    main_key.write_bytes(bytes(SigningKey(b"\x36" * 32)).hex().encode())
    MainChain.create(
        tmp_path / "main.db",
        chain_id="main",
        policy=policy,
        signing_key=SigningKey(b"\x36" * 32),
    ).close()
    base = [
        "model",
        "anchor-market",
        str(tmp_path / "trade.db"),
        "--main",
        str(tmp_path / "main.db"),
        "--main-key-file",
        str(main_key),
    ]
    out = io.StringIO()
    assert flchain([*base, f"--witness={folders[0]}"], out=out) == 1
    assert out.getvalue().startswith("REFUSED: 1 witnesses cosigned, the quorum is 2")
    out = io.StringIO()
    assert flchain([*base, *(f"--witness={f}" for f in folders)], out=out) == 0
    assert out.getvalue() == "anchored flchain-flwr/market size 2 at height 1\n"
    capsys.readouterr()
    for argv in (
        [*base[:-1], str(tmp_path / "nokey"), f"--witness={folders[0]}"],
        [*base, f"--witness={tmp_path / 'nowitness'}"],
        [*base[:2], str(tmp_path / "main.db"), *base[3:], f"--witness={folders[0]}"],
    ):
        out = io.StringIO()
        assert flchain(argv, out=out) == 2, argv
        err = capsys.readouterr().err
        assert out.getvalue() == "" and err.count("\n") == 1, err


def test_statements_do_not_replay_into_a_market_of_another_operator(
    tmp_path: Path,
) -> None:
    """Same chain id, another operator key: the market is bound to the key."""
    alice = market(tmp_path)
    mallory = TradingChain(
        tmp_path / "m" / "trade.db", chain_id="market", signing_key=OTHER
    )
    assert alice.origin == mallory.origin and alice.market != mallory.market
    offer = make_offer(SELLER, alice.market, MODEL, RUN, {"price": 5})
    alice.append(*offer)
    purchase = make_purchase(BUYER, alice.market, statement_id(offer[0]))
    alice.append(*purchase)
    assert "for market" in _refused(mallory, *offer)
    assert "for market" in _refused(mallory, *purchase)
    assert len(mallory) == 0 and alice.verify()[0] == 2
    # Entries copied into the other market's file fail its verify, too.
    mallory.db.executemany(
        "INSERT INTO entries VALUES (?, ?, ?, ?)",
        alice.db.execute("SELECT * FROM entries").fetchall(),
    )
    mallory.db.execute(
        "INSERT INTO meta VALUES ('operator_key', ?)",
        (bytes(OTHER.verify_key).hex(),),
    )
    with pytest.raises(TradeRefused, match="entry 0: the offer is for market"):
        mallory.verify()


def test_a_statement_whose_type_is_an_object_fails_market(tmp_path: Path) -> None:
    # Anyone who can write the trading chain's file (no key) edits an entry,
    # and its stored hash to match: a failed check naming it, not exit 2.
    chain = market(tmp_path)
    sale(chain)
    chain.close()
    db = sqlite3.connect(tmp_path / "trade.db")
    (entry,) = db.execute("SELECT entry FROM entries WHERE idx = 0").fetchone()
    edited = entry.replace(b'"type":"offer"', b'"type":{}')
    db.execute(
        "UPDATE entries SET entry = ?, hash = ? WHERE idx = 0",
        (edited, entry_hash(edited)),
    )
    db.commit()
    db.close()
    out = io.StringIO()
    assert flchain(["model", "market", str(tmp_path / "trade.db")], out=out) == 1
    assert "unknown statement type '{}'" in out.getvalue()

"""Provenance bundles from a real FedBuff run with a PoV committee on the
virtual grid, anchored in a main chain with a witness quorum: a buyer
verifies one offline from keys alone, and every forgery fails with a reason
(any byte changed, wrong keys, another model, a block without its
committee's quorum)."""

from __future__ import annotations

import copy
import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main as flchain
from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.anchoring import anchor_ledger, log_key_of
from flchain_flwr.ledger.canonical import encode, parse_canonical
from flchain_flwr.ledger.cosignature import (
    CosignerKey,
    add_cosignature,
    cosign,
    cosigner_of,
)
from flchain_flwr.ledger.keys import load_or_create_key
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.notes import SignerKey, VerifierKey, parse_note
from flchain_flwr.ledger.provenance import (
    BundleMalformed,
    ProvenanceError,
    Trust,
    verify_bundle,
)
from flchain_flwr.ledger.provenance_block import BlockCheckFailed, _header
from flchain_flwr.ledger.provenance_build import build_bundle
from flchain_flwr.ledger.trade_anchor import anchor_trading_chain
from flchain_flwr.ledger.trade_records import make_offer, make_purchase, make_receipt
from flchain_flwr.ledger.trading import TradingChain
from flchain_flwr.ledger.witness import Witness
from flchain_flwr.pov import Verifier

from .ledger_helpers import LEADER_KEY, build_ledger
from .test_pov import verifiers
from .test_pov_chain import pov_run, rebuild

MAIN_KEY = SigningKey(b"\x71" * 32)
WITNESSES = [
    SignerKey(f"witness{i}.example", SigningKey(bytes([0x72 + i]) * 32))
    for i in range(3)
]
POLICY = AnchorPolicy(tuple(cosigner_of(w) for w in WITNESSES), 2)


@dataclass
class Run:
    """A PoV run's ledger anchored in a main chain, and its bundle."""

    folder: Path
    ledger: Path
    main: Path
    pool: list[Verifier]
    model: str
    bundle: bytes

    def trust(self, **changes: Any) -> Trust:
        trust = Trust(
            VerifierKey("flchain-flwr/main", bytes(MAIN_KEY.verify_key)),
            tuple(cosigner_of(w) for w in WITNESSES),
            frozenset(v.public_key for v in self.pool),
        )
        return Trust(**{**trust.__dict__, **changes})


def anchored(ledger_path: Path, main_path: Path, publisher: SigningKey) -> MainChain:
    """The ledger's current checkpoint (signed by ``publisher``), cosigned by
    two of the three witnesses, anchored in a new main chain."""
    main = MainChain.create(
        main_path, chain_id="main", policy=POLICY, signing_key=MAIN_KEY
    )
    with Ledger(ledger_path, create=False) as ledger:
        note = parse_note(ledger.checkpoint_path.read_bytes())
        for witness in WITNESSES[:2]:
            note = add_cosignature(note, cosign(note.text, witness, 1_700_000_000))
        main.anchor(note, VerifierKey(ledger.origin, bytes(publisher.verify_key)))
    return main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("provenance")
    pool = verifiers(4)
    path = pov_run(folder, pool)
    main = anchored(path, folder / "main.db", publisher_of(path))
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None and head.height == 3
        model = str(head.header["model_hash"])
        bundle = build_bundle(ledger, main, model)
    main.close()
    return Run(folder, path, folder / "main.db", pool, model, bundle)


def publisher_of(path: Path) -> SigningKey:
    """The run's publisher key, beside its ledger (a simulation keeps it there)."""
    return load_or_create_key(path.with_name(path.name + ".key"))


def model_file(run: Run) -> Path:
    with Ledger(run.ledger, create=False) as ledger:
        return ledger.blobs.path_of(run.model)


def test_a_buyer_verifies_the_model_offline_from_keys_alone(run: Run) -> None:
    held = hashlib.sha256(model_file(run).read_bytes()).hexdigest()
    report = verify_bundle(run.bundle, run.trust(), held)
    with Ledger(run.ledger, create=False) as ledger:
        block = ledger.block(3)
        assert report.origin == ledger.origin
    assert report.block.height == 3
    assert report.block.block_hash == block.hash
    assert list(report.block.committee or ()) == block.body["committee"]
    assert report.block.counted == "only the pool keys you trust"
    assert report.block.committee_kind == "in-process"
    text = str(report)
    assert "2 of them are witness keys you trust" in text
    assert "model file hashes to" in text
    assert "not checked:" in text and "aggregation" in text
    assert "'in-process'" in text  # the simulation's one process held the keys


def test_any_byte_changed_fails_with_a_reason(run: Run) -> None:
    """A dense sample of positions (every 7th byte, and 300 more at random):
    each byte changed fails, malformed or invalid, never passes."""
    trust = run.trust()
    rng = random.Random(13)
    positions = sorted(
        set(range(0, len(run.bundle), 7))
        | {rng.randrange(len(run.bundle)) for _ in range(300)}
    )
    for position in positions:
        changed = bytearray(run.bundle)
        changed[position] ^= 0x01
        with pytest.raises(ProvenanceError) as caught:
            verify_bundle(bytes(changed), trust)
        assert str(caught.value), position


def test_wrong_trusted_keys_fail(run: Run) -> None:
    other = SigningKey(b"\x99" * 32)
    cases = {
        "main": run.trust(
            main=VerifierKey("flchain-flwr/main", bytes(other.verify_key))
        ),
        "witness": run.trust(
            witnesses=(CosignerKey("witness0.example", bytes(other.verify_key)),)
        ),
        "pool": run.trust(pool=frozenset({bytes(other.verify_key).hex()})),
        "publisher": run.trust(publisher=bytes(other.verify_key).hex()),
    }
    reasons = {
        "main": "no trusted key signed",
        "witness": "witness keys you trust cosigned",
        "pool": "approvals counted",
        "publisher": "not the trusted",
    }
    for role, trust in cases.items():
        with pytest.raises(ProvenanceError, match=reasons[role]):
            verify_bundle(run.bundle, trust)


def test_a_model_file_that_does_not_match_fails(run: Run) -> None:
    with pytest.raises(ProvenanceError, match="model file hashes to"):
        verify_bundle(run.bundle, run.trust(), "ab" * 32)


def test_a_block_without_its_committees_quorum_fails(run: Run, tmp_path: Path) -> None:
    """The publisher, the main chain, the witnesses and block 3's leader
    collude: they rebuild the run with block 3 carrying only its leader's
    votes, and anchor it. The bundle is well formed and anchored, but the
    committee's quorum is missing."""

    def leader_votes_only(
        height: int, body: dict[str, Any], arrays: Any
    ) -> tuple[dict[str, Any], Any]:
        if height == 3:
            body["votes"] = [
                v for v in body["votes"] if v["verifier"] == body["committee"][0]
            ]
        return body, arrays

    forged = tmp_path / "forged.db"
    rebuild(run.ledger, forged, run.pool, leader_votes_only).close()
    main = anchored(forged, tmp_path / "main.db", publisher_of(run.ledger))
    with Ledger(forged, create=False) as ledger:
        model = str(ledger.block(3).header["model_hash"])
        bundle = build_bundle(ledger, main, model)
    for pool in (run.trust().pool, frozenset()):
        with pytest.raises(ProvenanceError, match="the quorum is 3 of 4"):
            verify_bundle(bundle, run.trust(pool=pool))


def test_a_ledger_outside_pov_and_a_genesis_model(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "plain.db", blocks=4)
    main = anchored(ledger.path, tmp_path / "main.db", LEADER_KEY)
    trust = Trust(
        main.public_key,
        tuple(cosigner_of(w) for w in WITNESSES),
        publisher=bytes(ledger.signing_key.verify_key).hex(),
    )
    for height, expected in (
        (2, "publisher's key alone"),
        (0, "no committee judged it"),
    ):
        model = str(ledger.block(height).header["model_hash"])
        bundle = build_bundle(ledger, main, model)
        report = verify_bundle(bundle, trust)
        assert report.block.height == height and report.block.committee is None
        assert expected in str(report)
    # Unchecked data cannot ride along: a genesis model's bundle with a parent.
    value = parse_canonical(bundle, 2)
    value["training"]["parent_header"] = ledger.block(1).header_bytes.decode()
    with pytest.raises(ProvenanceError, match="carries no parent"):
        verify_bundle(encode(2, value), trust)


def test_a_malformed_bundle_is_not_a_bundle(run: Run) -> None:
    for data in (b"", b"{}", b"[1]", run.bundle + b" ", b"\xff" + run.bundle):
        with pytest.raises(BundleMalformed):
            verify_bundle(data, run.trust())


# ------------------------------------------------------------------- CLI
def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return flchain(list(argv), out=out), out.getvalue()


def trust_args(run: Run) -> list[str]:
    trust = run.trust()
    return [
        f"--trusted=main={trust.main}",
        *(f"--trusted=witness={w}" for w in trust.witnesses),
        *(f"--trusted=pool={k}" for k in sorted(trust.pool)),
    ]


def test_cli_prove_then_verify(run: Run, tmp_path: Path) -> None:
    bundle = tmp_path / "model.bundle"
    code, out = cli(
        "model",
        "prove",
        "--ledger",
        str(run.ledger),
        "--main",
        str(run.main),
        "--model",
        str(model_file(run)),
        "-o",
        str(bundle),
    )
    assert code == 0, out
    assert bundle.read_bytes() == run.bundle
    trust_file = tmp_path / "trust.txt"
    trust_file.write_text(
        "# keys\n" + "\n".join(a.split("=", 1)[1] for a in trust_args(run))
    )
    code, out = cli(
        "model",
        "verify",
        str(bundle),
        "--model",
        str(model_file(run)),
        f"--trusted=@{trust_file}",
    )
    assert code == 0, out
    assert "block: height 3" in out and "committee" in out
    assert "none was given (--model)" not in out
    # Without --model, "not checked" says that no model file was compared.
    code, out = cli("model", "verify", str(bundle), f"--trusted=@{trust_file}")
    assert code == 0, out
    assert "not checked:\n  - any model file: none was given (--model)" in out
    code, out = cli(
        "model", "verify", str(bundle), "--model", str(run.ledger), *trust_args(run)
    )
    assert code == 1 and out.startswith("INVALID: the model file hashes to")


@pytest.mark.parametrize(
    "argv",
    [
        ["model", "verify", "missing.bundle", "--trusted=main=x+y+z"],
        ["model", "verify", "BUNDLE", "--trusted=main"],
        ["model", "verify", "BUNDLE", "--trusted=pool=abc"],
        ["model", "verify", "BUNDLE"],
        ["model", "verify", "NOTBUNDLE", "TRUST"],
        [
            "model",
            "prove",
            "--ledger",
            "LEDGER",
            "--main",
            "MAIN",
            "--hash",
            "00" * 32,
            "-o",
            "x",
        ],
        [
            "model",
            "prove",
            "--ledger",
            "LEDGER",
            "--main",
            "MAIN",
            "--hash",
            "zz",
            "-o",
            "x",
        ],
        [
            "model",
            "prove",
            "--ledger",
            "LEDGER",
            "--main",
            "LEDGER",
            "--hash",
            "00" * 32,
            "-o",
            "x",
        ],
        [
            "model",
            "prove",
            "--ledger",
            "MAIN",
            "--main",
            "MAIN",
            "--model",
            "missing",
            "-o",
            "x",
        ],
        [
            "model",
            "prove",
            "--ledger",
            "LEDGER",
            "--main",
            "MAIN",
            "--model",
            "M",
            "--hash",
            "H",
            "-o",
            "x",
        ],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    run: Run, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not.bundle").write_bytes(b"not json")
    names = {
        "BUNDLE": str(tmp_path / "not.bundle"),
        "NOTBUNDLE": str(tmp_path / "not.bundle"),
        "TRUST": trust_args(run)[0],
        "LEDGER": str(run.ledger),
        "MAIN": str(run.main),
    }
    code, out = cli(*(names.get(a, a) for a in argv))
    err = capsys.readouterr().err
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("flchain"), err


def test_cli_workflow_witnesses_main_chain_anchor_prove_verify(
    run: Run, tmp_path: Path
) -> None:
    """Over files only: three witnesses, a 2-of-3 main chain, `flchain anchor`,
    then a bundle a buyer checks with the main chain's vkey and two witness
    vkeys."""
    with Ledger(run.ledger, create=False) as ledger:
        log_key = log_key_of(ledger).encode()
    witnesses = []
    for index in range(3):
        folder = tmp_path / f"w{index}"
        code, _ = cli(
            "witness",
            "init",
            str(folder),
            "--name",
            f"w{index}.example",
            "--log",
            log_key,
        )
        assert code == 0
        witnesses.append(folder)
    vkeys = [(w / "witness.vkey").read_text().strip() for w in witnesses]
    main_path = tmp_path / "main.db"
    code, out = cli(
        "main",
        "init",
        str(main_path),
        "--chain-id",
        "market-main",
        "--key",
        str(tmp_path / "main.key"),
        "--quorum",
        "2",
        *(f"--witness={v}" for v in vkeys),
    )
    assert code == 0
    main_vkey = out.splitlines()[0].strip()
    code, out = cli(
        "anchor",
        str(run.ledger),
        "--main",
        str(main_path),
        "--main-key-file",
        str(tmp_path / "main.key"),
        *(f"--witness={w}" for w in witnesses),
    )
    assert code == 0, out
    bundle = tmp_path / "b.bundle"
    code, out = cli(
        "model",
        "prove",
        "--ledger",
        str(run.ledger),
        "--main",
        str(main_path),
        "--hash",
        run.model,
        "-o",
        str(bundle),
    )
    assert code == 0, out
    code, out = cli(
        "model",
        "verify",
        str(bundle),
        f"--trusted=main={main_vkey}",
        f"--trusted=witness={vkeys[0]}",
        f"--trusted=witness={vkeys[2]}",
    )
    assert code == 0, out
    assert "2 of them are witness keys you trust" in out
    code, out = cli(
        "model",
        "verify",
        str(bundle),
        f"--trusted=main={main_vkey}",
        f"--trusted=witness={vkeys[0]}",
    )
    assert code == 1 and "the quorum is 2" in out


def test_two_runs_and_a_market_anchor_into_one_main_chain(tmp_path: Path) -> None:
    """Two PoV runs and a trading subchain anchor into one main chain through
    three real witnesses; the market records a sale of run 1's model, and a
    bundle of each run's model verifies against the one main chain."""
    main = MainChain.create(
        tmp_path / "main.db", chain_id="main", policy=POLICY, signing_key=MAIN_KEY
    )
    witnesses = []
    for index, signer in enumerate(WITNESSES):
        Witness.init(
            tmp_path / f"w{index}", signer.name, signer=signer, trust_on_first_use=True
        )
        witnesses.append(Witness(tmp_path / f"w{index}", clock=lambda: 1_700_000_000))
    pool = verifiers(4)
    runs = [pov_run(tmp_path / f"run{i}", pool) for i in range(2)]
    market = TradingChain(
        tmp_path / "trade.db", chain_id="market", signing_key=SigningKey(b"\x81" * 32)
    )
    seller, buyer = SigningKey(b"\x82" * 32), SigningKey(b"\x83" * 32)
    bundles = []
    for path in runs:
        with Ledger(path, create=False) as ledger:
            anchor_ledger(ledger, main, witnesses)
            model = str(ledger.block(2).header["model_hash"])
            bundles.append((ledger.origin, model, build_bundle(ledger, main, model)))
    origin, model, _ = bundles[0]
    offer = market.append(
        *make_offer(seller, market.market, model, origin, {"price": 3})
    )
    purchase = market.append(*make_purchase(buyer, market.market, offer.record_id))
    market.append(*make_receipt(buyer, market.market, purchase.record_id, model))
    anchor_trading_chain(market, main, witnesses)
    assert main.origins() == [bundles[0][0], bundles[1][0], market.origin]
    trust = Trust(
        main.public_key,
        tuple(cosigner_of(w) for w in WITNESSES),
        frozenset(v.public_key for v in pool),
    )
    for origin, model, bundle in bundles:
        report = verify_bundle(bundle, trust)
        assert (report.origin, report.model_hash, report.block.height) == (
            origin,
            model,
            2,
        )
    assert (
        offer.statement["training_origin"] == verify_bundle(bundles[0][2], trust).origin
    )
    assert "4 blocks, 3 origins" in main.verify()


def test_a_header_whose_format_is_an_object_is_refused() -> None:
    """A JSON object as a header's format fails the check with a reason (was
    a TypeError: an object cannot be looked up among the formats). Only the
    publisher can sign such a header into a bundle's proofs, so the header
    reader is called directly."""
    with pytest.raises(BlockCheckFailed, match="not a block header"):
        _header(encode(2, {"format": {}, "height": 1}), "block")


def _anchor_variants(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bundle with its anchor's inclusion proofs re-encoded as the same
    Merkle path in another spelling (nothing signed or hashed changes)."""

    def changed(edit: Any, part: str = "inclusion") -> dict[str, Any]:
        value = copy.deepcopy(bundle)
        edit(value["anchor"][part])
        return value

    def upper(p: dict[str, Any]) -> None:
        p["proof"]["path"][0] = p["proof"]["path"][0].upper()

    def spaced(p: dict[str, Any]) -> None:
        p["proof"]["path"][0] += " "

    def rule_as_booleans(p: dict[str, Any]) -> None:
        p["proof"]["rule"] = [bool(bit) for bit in p["proof"]["rule"]]

    def index_as_boolean(p: dict[str, Any]) -> None:
        assert p["proof"]["metadata"]["index"] == 1  # the genesis: leaf 0
        p["proof"]["metadata"]["index"] = True

    return {
        "upper-case path": changed(upper),
        "path with a space": changed(spaced),
        "rule as booleans": changed(rule_as_booleans),
        "extra field": changed(lambda p: p.update(note="unchecked")),
        "extra proof field": changed(lambda p: p["proof"].update(note="unchecked")),
        "index as a boolean": changed(index_as_boolean, "genesis_inclusion"),
    }


def test_an_anchor_proof_respelled_is_not_the_bundle(run: Run) -> None:
    """The module's claim: a bundle changed anywhere fails. The anchor's
    inclusion proofs are checked by pymerkle, which reads hex in any case and
    with spaces, a boolean as a bit and ignores fields it does not know: each
    respelling of the same path (no key needed) was accepted; now each is
    malformed (found by the second forge audit)."""
    value = parse_canonical(run.bundle, 2)
    assert isinstance(value, dict)
    for name, changed in _anchor_variants(value).items():
        data = encode(2, changed)
        assert data != run.bundle, name
        with pytest.raises(BundleMalformed):
            verify_bundle(data, run.trust())

"""An app run with a PoV committee smaller than its pool repeats for its seed.

The committee draw ranks the pool by hashes over the members' public keys (and,
with a ledger, over the chain's blocks), so fresh random keys drew other members,
other verdicts and another model on each run of one seed (two runs of the
config below: final accuracy 0.63 and 0.80).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, LedgerError
from flchain_flwr.pov.simkeys import seeded_verifier_key
from flchain_flwr.sim import app_run_config, run_federation, tiered

pytest.importorskip("torch")

POV = {  # a committee of 4 drawn from 6 verifiers, each with its own shard
    "num-server-rounds": 4,
    "pov-verifiers": 6,
    "pov-committee-size": 4,
    "pov-trusted-examples": 30,
    "pov-reference-epochs": 2,
}


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    from flwr.common.logger import FLOWER_LOGGER

    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.ERROR)
    yield
    FLOWER_LOGGER.setLevel(level)  # later test files may read its warnings


def final_model(**keys: object) -> tuple[list[np.ndarray], list[str]]:
    """The final global model of one app run, and each of its committee
    decisions' members (in draw order, the leader first)."""
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    config = app_run_config("apps/flchain_cnn", {**POV, **keys})  # type: ignore[dict-item]
    run = run_federation(server_app, client_app, devices=tiered(6), run_config=config)
    arrays = run.result.arrays
    assert arrays is not None
    committees = [str(d.get("committee")) for d in run.result.committee_decisions]
    return [a.numpy() for a in arrays.values()], committees


def block_hashes(path: Path) -> list[str]:
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        return [block.hash for block in ledger.blocks()]


def test_without_a_ledger_the_run_repeats_for_its_seed() -> None:
    first, first_committees = final_model(seed=7)
    again, again_committees = final_model(seed=7)
    assert first_committees == again_committees
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_a_ledger_run_repeats_block_for_block_with_its_chain_id_and_keys(
    tmp_path: Path,
) -> None:
    first, again, fresh = (tmp_path / name for name in ("first", "again", "fresh"))
    for folder in (first, again, fresh):
        folder.mkdir()
    chain = {"ledger-chain-id": "repeat-me"}
    final_model(**{"ledger-path": str(first / "l.db"), **chain})
    shutil.copy(first / "l.db.key", again / "l.db.key")
    shutil.copytree(first / "l.db.verifiers", again / "l.db.verifiers")
    final_model(**{"ledger-path": str(again / "l.db"), **chain})
    final_model(**{"ledger-path": str(fresh / "l.db"), **chain})

    hashes = block_hashes(first / "l.db")
    assert len(hashes) == 5
    assert block_hashes(again / "l.db") == hashes
    assert (again / "l.db.checkpoint").read_bytes() == (
        first / "l.db.checkpoint"
    ).read_bytes()
    # the same chain id with fresh random keys: the same genesis model, but
    # another pool, so other blocks from genesis on
    fresh_hashes = block_hashes(fresh / "l.db")
    assert len(fresh_hashes) == 5 and fresh_hashes[0] != hashes[0]


def test_an_existing_ledger_must_hold_the_chain_id_asked_for(tmp_path: Path) -> None:
    from flchain_flwr.strategies import fedbuff_from_run_config

    path = tmp_path / "l.db"
    Ledger(path, chain_id="one").close()
    with pytest.raises(LedgerError, match="holds chain 'one', not 'two'"):
        fedbuff_from_run_config({"ledger-path": str(path), "ledger-chain-id": "two"})
    strategy = fedbuff_from_run_config(
        {"ledger-path": str(path), "ledger-chain-id": "one"}
    )
    assert isinstance(strategy.ledger, Ledger) and strategy.ledger.chain_id == "one"
    strategy.ledger.close()


def test_a_bad_chain_id_is_refused_by_its_key_before_any_file_is_made(
    tmp_path: Path,
) -> None:
    from flchain_cnn.server_app import pov_committee

    from flchain_flwr.strategies import fedbuff_from_run_config

    path = tmp_path / "runs" / "l.db"
    for bad in ("two words", "a+b", "tab\t", 5, "c" * 129):
        keys = {"ledger-path": str(path), "ledger-chain-id": bad}
        with pytest.raises(ValueError, match="'ledger-chain-id'"):
            fedbuff_from_run_config(keys)
        config = app_run_config("apps/flchain_cnn", {**POV, **keys})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="'ledger-chain-id'"):
            pov_committee(config)  # it writes the verifiers' key files
    with pytest.raises(LedgerError, match="cannot be an origin"):
        Ledger(path, chain_id="two words")
    assert not list(tmp_path.iterdir())


def test_seeded_verifier_keys_are_fixed_by_seed_and_index() -> None:
    key = seeded_verifier_key(42, 0)
    assert key == seeded_verifier_key(42, 0)
    others = {seeded_verifier_key(s, i).encode() for s, i in ((42, 1), (43, 0))}
    assert key.encode() not in others and len(others) == 2
    with pytest.raises(ValueError, match="index"):
        seeded_verifier_key(42, -1)
    # the robustness benchmark's keys, as its recorded committees were drawn
    bench = SigningKey(hashlib.sha256(b"bench/2/5").digest())
    assert seeded_verifier_key(2, 5, domain=b"bench/").encode() == bench.encode()

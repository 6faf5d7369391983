"""Flipped bytes in a real ledger file: the CLI reports, it never crashes.

Seeded, so a failure replays exactly. Each flip hits one random bit of the
SQLite file; ``show``, ``export``, ``verify`` and ``rewards`` then run through
the CLI's ``main`` in-process.
"""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr.cli import main

from .ledger_helpers import TRUSTED, build_ledger, digest_of

FLIPS = 300
MUTATIONS = 400
SEED = 2024


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(["ledger", *argv], out=out)
    return code, out.getvalue(), capsys.readouterr().err


# An exception escaping where nobody can catch it (a generator closed late, a
# destructor) is printed as a traceback: here it fails the test instead.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_flipped_bytes_never_crash_the_cli_nor_pass_verify_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=5).close()
    capsys.readouterr()
    pristine = path.read_bytes()
    code, original_export, _ = run(["export", str(path)], capsys)
    assert code == 0
    original_rows = original_export.splitlines()
    rng = random.Random(SEED)
    outcomes: dict[tuple[str, int], int] = {}
    for flip in range(FLIPS):
        data = bytearray(pristine)
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        data[position] ^= 1 << bit
        for leftover in ("-wal", "-shm"):
            path.with_name(path.name + leftover).unlink(missing_ok=True)
        path.write_bytes(bytes(data))
        results = {}
        for command in ("show", "export", "verify", "rewards"):
            where = f"flip {flip} (byte {position}, bit {bit}), {command}"
            code, out, err = run([command, str(path)], capsys)
            outcomes[command, code] = outcomes.get((command, code), 0) + 1
            assert code in (0, 1, 2), where
            assert code != 1 or command == "verify", where  # 1: a failed check
            assert "Traceback" not in err and "unexpected" not in err, (where, err)
            if code == 0:
                assert err == "", (where, err)
            elif code == 2:
                assert len(err.splitlines()) == 1, (where, err)
                assert err.startswith("flchain: error: "), (where, err)
            results[command] = (code, out)
        if results["verify"][0] == 0:  # verified: nothing readable has changed
            code, out = results["export"]
            rows = out.splitlines()
            # A chain cut short at its end still verifies (docs/ledger.md, trust model).
            assert code == 0 and rows == original_rows[: len(rows)], flip
    # The flips reached every outcome: the test exercises what it claims to.
    assert outcomes.get(("verify", 1), 0) > 0 and outcomes.get(("show", 2), 0) > 0
    assert outcomes.get(("export", 0), 0) > 0


ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1.5,
    "",
    "zz",
    "00" * 32,
    "\ud800",
    [],
    {},
    [1, "a"],
    {"type": "inclusion"},
]


def _containers(value: Any) -> list[dict[str, Any] | list[Any]]:
    """Every object and array inside ``value`` (itself included)."""
    found: list[dict[str, Any] | list[Any]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def mutate(proof: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``proof`` with one value swapped for an odd one, or one field dropped."""
    mutated = copy.deepcopy(proof)
    target = rng.choice([c for c in _containers(mutated) if c])
    if isinstance(target, dict):
        key = rng.choice(sorted(target))
        if rng.random() < 0.2:
            del target[key]
        else:
            target[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    else:
        target[rng.randrange(len(target))] = copy.deepcopy(rng.choice(ODD_VALUES))
    return mutated


def test_mutated_proofs_are_invalid_or_malformed_never_a_crash(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "chain.db"
    build_ledger(path, blocks=5).close()
    proofs = []
    for argv in (["--update", digest_of(301)], ["--consistency", "2", "5"]):
        code, out, _ = run(["proof", str(path), *argv], capsys)
        assert code == 0
        proofs.append(json.loads(out))
    monkeypatch.setenv("FLCHAIN_DEBUG", "1")  # anything unforeseen raises here
    rng = random.Random(SEED)
    proof_file = tmp_path / "p.json"
    outcomes = {0: 0, 1: 0, 2: 0}
    for mutation in range(MUTATIONS):
        proof = mutate(rng.choice(proofs), rng)
        proof_file.write_text(json.dumps(proof))
        code, out, err = run(
            ["check-proof", str(proof_file), "--trusted-key", TRUSTED], capsys
        )
        where = (mutation, json.dumps(proof)[:300])
        outcomes[code] += 1
        if code == 0:
            assert out.startswith("valid: ") and err == "", where
        elif code == 1:
            assert out.startswith("INVALID: ") and err == "", where
        else:
            assert code == 2 and out == "", where
            assert len(err.splitlines()) == 1, (where, err)
            assert err.startswith("flchain: error: malformed proof "), (where, err)
    assert outcomes[1] > 0 and outcomes[2] > 0, outcomes

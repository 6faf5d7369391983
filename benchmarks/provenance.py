"""What a buyer's provenance check costs, beside checking the whole subchain.

- Subchain: a PoV chain of ``--blocks`` real ``Ledger.append`` calls, built as
  the committee writes them: a genesis declaring a ``--pool``-key verifier
  pool, committees of ``--committee`` drawn from each parent hash, K=5
  included updates a block, each approved by every member with a signed
  format-2 vote (chain, height, parent block and model, rule, share), the
  block signed by the committee's leader; a ``--params``-float32 model.
  ``Ledger.verify`` must pass on it.
- Anchoring: one anchor of the whole subchain in a 2-of-3 main chain through
  3 local witnesses.
- Side by side, on the same subchain: ``Ledger.verify`` of every block
  (what someone with the subchain's files checks; models hashed too) against
  :func:`~flchain_flwr.ledger.provenance.verify_bundle` of the last model's
  bundle (what a buyer checks, holding one file and keys), and the bundle's
  bytes against the subchain's files.

The machine is shared: the result records ``os.getloadavg()``.

JSON to benchmarks/results/provenance.json; last line
``provenance bundle verify: <ms> ms (<ratio>x less than verifying the subchain)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, write_results
from flwr.common.logger import FLOWER_LOGGER
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, VoteContext, sign_vote
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.anchoring import anchor_ledger
from flchain_flwr.ledger.consensus import (
    PoVRules,
    VoteRules,
    judged_shares,
    select_committee,
)
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.provenance import Trust, verify_bundle
from flchain_flwr.ledger.provenance_build import build_bundle
from flchain_flwr.ledger.witness import Witness

K = 5
SERVER_LR = 0.5
RULE = {"format": "flchain-pov-rule/1", "metric": "loss", "threshold": 0.0}


def pov_chain(path: Path, args: argparse.Namespace) -> tuple[Ledger, list[str]]:
    """The subchain (see the module docstring) and its pool's hex keys."""
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(args.pool)]
    by_hex = {k.verify_key.encode(HexEncoder).decode(): k for k in keys}
    pool = list(by_hex)
    votes_rules = VoteRules(RULE, SERVER_LR)
    ledger = Ledger(path, chain_id="bench-run", signing_key=SigningKey(b"\x99" * 32))
    rng = np.random.default_rng(0)
    pov = {
        **PoVRules(tuple(pool), args.committee).to_json(),
        "votes": votes_rules.to_json(),
    }
    model = {"w": rng.normal(size=args.params).astype(np.float32)}
    block = ledger.append(
        model=model,
        model_version=0,
        base_version=0,
        config_digest="c" * 64,
        extra={"pov": pov, "committee_kind": "remote"},
    )
    for height in range(1, args.blocks):
        committee = select_committee(pool, block.hash, args.committee)
        digests = [f"{height * K + k:064x}" for k in range(K)]
        examples = [10 + k for k in range(K)]
        included: list[dict[str, Any]] = [
            {
                "node_id": str(10 + k),
                "digest": digests[k],
                "staleness": 0,
                "weight": 1.0,
                "num_examples": examples[k],
            }
            for k in range(K)
        ]
        shares = judged_shares(SERVER_LR, [1.0] * K, examples)
        context = VoteContext(
            "bench-run",
            height,
            block.hash,
            str(block.header["model_hash"]),
            votes_rules.digest,
        )
        votes = [
            sign_vote(by_hex[member], context, digest, True, 0.9, share)
            for digest, share in zip(digests, shares, strict=True)
            for member in committee
        ]
        model = {"w": model["w"] + np.float32(0.01)}
        block = ledger.append(
            model=model,
            model_version=height,
            base_version=height - 1,
            config_digest="c" * 64,
            included=included,
            votes=votes,
            extra={"committee": committee, "deposits": []},
            signer=by_hex[committee[0]],
        )
    return ledger, pool


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--params", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=7)
    parser.add_argument("--committee", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "provenance.json")
    args = parser.parse_args()
    FLOWER_LOGGER.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        ledger, pool = pov_chain(folder / "run.db", args)
        build_s = time.perf_counter() - start
        witnesses = []
        for index in range(3):
            where = folder / f"w{index}"
            Witness.init(where, f"w{index}.example", trust_on_first_use=True)
            witnesses.append(Witness(where, clock=lambda: 1_700_000_000))
        policy = AnchorPolicy(tuple(w.key for w in witnesses), 2)
        main_key = SigningKey(b"\x55" * 32)
        main = MainChain.create(
            folder / "main.db", chain_id="main", policy=policy, signing_key=main_key
        )
        anchor_ledger(ledger, main, witnesses)
        model = str(ledger.block(args.blocks - 1).header["model_hash"])
        start = time.perf_counter()
        bundle = build_bundle(ledger, main, model)
        prove_s = time.perf_counter() - start
        trust = Trust(main.public_key, policy.witnesses, frozenset(pool))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = verify_bundle(bundle, trust)
            times.append(time.perf_counter() - start)
        assert report.block.height == args.blocks - 1
        start = time.perf_counter()
        full = ledger.verify()
        full_s = time.perf_counter() - start
        assert full.ok, str(full)
        subchain_bytes = folder_bytes(folder / "run.db") + folder_bytes(
            folder / "run.db.models"
        )
        ledger.close()
    verify_ms = statistics.median(times) * 1e3
    ratio = full_s * 1e3 / verify_ms
    result: dict[str, Any] = {
        "load_average": os.getloadavg(),
        "subchain_blocks": args.blocks,
        "subchain_build_s": build_s,
        "subchain_bytes": subchain_bytes,
        "bundle_bytes": len(bundle),
        "bundle_vs_subchain_bytes": len(bundle) / subchain_bytes,
        "prove_s": prove_s,
        "bundle_verify_ms_median": verify_ms,
        "bundle_verify_ms_min": min(times) * 1e3,
        "subchain_verify_s": full_s,
        "subchain_verify_over_bundle_verify": ratio,
    }
    label = (
        f"provenance bundle verify, ms ({ratio:.0f}x less than verifying the subchain)"
    )
    write_results(args.out, "provenance", args, headline=(label, verify_ms), **result)
    print(
        f"subchain: {args.blocks} blocks, {subchain_bytes / 1e6:.1f} MB, verify "
        f"{full_s:.2f} s; bundle: {len(bundle) / 1e3:.1f} kB, prove {prove_s:.2f} s; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"provenance bundle verify: {verify_ms:.1f} ms ({ratio:.0f}x less than "
        "verifying the subchain)"
    )


if __name__ == "__main__":
    main()

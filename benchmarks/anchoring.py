"""What anchoring costs: per subchain block, against the block append itself.

- Subchain: ``--blocks`` real ``Ledger.append`` calls (default 10,000), each a
  small synthetic block (a ``--params``-float32 model, K=5 included update
  digests with contributions), durable like the app's default
  (``ledger-durable`` true: fsync per block) or not (``--no-durable``).
- Anchoring: every ``--every`` blocks (default 100, so 100 anchors), the
  ledger's signed checkpoint is cosigned by 3 local witnesses (each checks the
  log's signature and a consistency proof from its last size, and fsyncs its
  state before answering), and appended to a 2-of-3 main chain (SQLite commit
  and its own signed checkpoint). Timed apart from the appends, interleaved
  in the same run: every ``Anchorer.after_block`` call counts, those that
  only check whether an anchor is due too.
  With ``--witness-main`` the witnesses also cosign the main chain's own
  checkpoint after each anchor (:mod:`~flchain_flwr.ledger.mainwitness`).
- Witness cosigning latency: each ``Witness.add_checkpoint`` call.
- End to end: ``Ledger.verify`` on the whole subchain, then
  :func:`~flchain_flwr.ledger.anchorcheck.check_anchored` (the main chain's
  links, every anchor's signature and 2-of-3 quorum, each origin's
  consistency proofs, and the subchain against every anchored checkpoint):
  ``flchain ledger verify SUB --anchored-in MAIN``.

Small blocks make the ratio harsher than a real run's (a Fashion-MNIST CNN
block stores 6.5 MB); ``--params`` changes that.

The machine is shared: the result records ``os.getloadavg()``.

JSON to benchmarks/results/anchoring.json; last line
``anchoring overhead: <ratio>x block append``.
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
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.anchorcheck import check_anchored
from flchain_flwr.ledger.anchoring import Anchorer, log_key_of
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.notes import NoteSignature
from flchain_flwr.ledger.witness import CosignRequest, Witness


class TimedWitness:
    """A witness whose every answer is timed."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.seconds: list[float] = []

    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        start = time.perf_counter()
        try:
            return self.witness.add_checkpoint(request)
        finally:
            self.seconds.append(time.perf_counter() - start)


def append_block(
    ledger: Ledger, height: int, rng: np.random.Generator, params: int
) -> None:
    included = [
        {
            "node_id": 10 + k,
            "digest": rng.bytes(32).hex(),
            "staleness": k,
            "weight": 1.0,
            "num_examples": 32,
        }
        for k in range(5)
    ]
    ledger.append(
        model={"w": rng.normal(size=params).astype(np.float32)},
        model_version=height,
        base_version=max(0, height - 1),
        config_digest="c" * 64,
        included=included,
        contributions=[
            {"node_id": u["node_id"], "data_share": 0.2, "relevance": 1.0, "score": 0.2}
            for u in included
        ],
        sim_time=float(height),
    )


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": 1e3 * statistics.median(ordered),
        "p95_ms": 1e3 * ordered[int(0.95 * (len(ordered) - 1))],
        "mean_ms": 1e3 * statistics.fmean(ordered),
        "count": len(ordered),
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    ledger = Ledger(
        folder / "sub.db",
        chain_id="bench-sub",
        signing_key=SigningKey(b"\x01" * 32),
        durable=args.durable,
    )
    rng = np.random.default_rng(0)
    append_block(ledger, 0, rng, args.params)  # genesis: the log key exists
    witnesses = [
        TimedWitness(
            Witness.init(folder / f"w{i}", f"w{i}.bench", logs=[log_key_of(ledger)])
        )
        for i in range(3)
    ]
    main = MainChain.create(
        folder / "main.db",
        chain_id="bench-main",
        policy=AnchorPolicy(tuple(w.witness.key for w in witnesses), 2),
        signing_key=SigningKey(b"\x02" * 32),
    )
    if args.witness_main:  # each anchor also has the main checkpoint cosigned
        for witness in witnesses:
            witness.witness.add_log(main.public_key)
        main.witnesses = list(witnesses)
    anchorer = Anchorer(main, witnesses, every_blocks=args.every)
    appends: list[float] = []
    anchors: list[float] = []  # the calls that anchored
    checks: list[float] = []  # the calls that only checked whether one is due
    for height in range(1, args.blocks):
        start = time.perf_counter()
        append_block(ledger, height, rng, args.params)
        appends.append(time.perf_counter() - start)
        start = time.perf_counter()
        block = anchorer.after_block(ledger, float(height))
        elapsed = time.perf_counter() - start
        (anchors if block is not None else checks).append(elapsed)
    assert not anchorer.failures, anchorer.failures
    assert not main.witness_refusals, main.witness_refusals
    main.close()
    start = time.perf_counter()
    report = ledger.verify()
    verify_seconds = time.perf_counter() - start
    start = time.perf_counter()
    anchored = check_anchored(ledger, folder / "main.db", main_key=main.public_key)
    anchored_seconds = time.perf_counter() - start
    ledger.close()
    assert report.ok and anchored.ok, (report, anchored)
    cosign = [s for w in witnesses for s in w.seconds]
    ratio = (sum(anchors) + sum(checks)) / sum(appends)
    return {
        "blocks": args.blocks,
        "anchors": len(anchors),
        "append": quantiles(appends),
        "anchor": quantiles(anchors),
        "due_check": quantiles(checks),
        "anchoring_per_block_ms": 1e3 * (sum(anchors) + sum(checks)) / args.blocks,
        "append_per_block_ms": 1e3 * sum(appends) / args.blocks,
        "overhead_ratio": ratio,
        "witness_cosign": quantiles(cosign),
        "verify_seconds": verify_seconds,
        "verify_anchored_seconds": anchored_seconds,
        "anchored_report": str(anchored),
        "main_chain_bytes": os.path.getsize(folder / "main.db"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000)
    parser.add_argument("--no-durable", dest="durable", action="store_false")
    parser.add_argument(
        "--witness-main",
        action="store_true",
        help="the witnesses also cosign the main chain's checkpoint after each anchor",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "anchoring.json")
    args = parser.parse_args()
    FLOWER_LOGGER.setLevel(logging.WARNING)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    ratio = result["overhead_ratio"]
    print(
        f"{result['blocks']} blocks ({'durable' if args.durable else 'not durable'}), "
        f"{result['anchors']} anchors: append {result['append']['median_ms']:.2f} ms "
        f"median, anchor {result['anchor']['median_ms']:.2f} ms median "
        f"({result['anchoring_per_block_ms']:.3f} ms per block); witness cosign "
        f"{result['witness_cosign']['median_ms']:.2f} ms median, "
        f"{result['witness_cosign']['p95_ms']:.2f} ms p95"
    )
    print(
        f"verify: {result['verify_seconds']:.1f} s for the subchain, "
        f"{result['verify_anchored_seconds']:.2f} s for its {result['anchors']} "
        f"anchors; load {result['loadavg']}"
    )
    label = "anchoring overhead (x block append)"
    write_results(args.out, "anchoring", args, headline=(label, ratio), **result)
    print(f"anchoring overhead: {ratio:.3f}x block append")


if __name__ == "__main__":
    main()

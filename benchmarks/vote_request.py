"""What a remote verifier's vote request costs on the wire, per candidate.

A ``query.pov_vote`` message carries the global model once and, per candidate,
the trainer's reply as the ledger stores it (:mod:`flchain_flwr.pov.voterequest`).
Setting: the flchain_cnn app's Fashion-MNIST CNN (``new_model``), one
seeded random update (sizes do not depend on its values for dense replies; a
sparse reply's Elias-Fano indices depend only on how many entries it keeps).
Measured, in the bytes Flower's records hold (``content_bytes``, what the
traffic counters of the strategy count):

- the request with no candidate's payload but the global model (the floor);
- one dense full-weights reply (float32), and one DGC reply (the mod's default
  density 0.3 %, float16 values), each as its payload blob and as the extra
  bytes it adds to a request;
- a request with ``--candidates`` dense, then as many DGC, candidates.

JSON to benchmarks/results/vote_request.json; last line
``dense candidate / DGC candidate bytes per vote request: <N>x``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from _common import APP_DIR, RESULTS, write_results
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from flchain_flwr.arrays import NDArrays, to_arrayrecord
from flchain_flwr.ledger import VoteContext, model_hash, sender_update_digest
from flchain_flwr.mods import DGCConfig, DGCState, compress
from flchain_flwr.pov import Candidate
from flchain_flwr.pov.voterequest import payload_blob, vote_request
from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY
from flchain_flwr.strategies.traffic import content_bytes


def _candidate(node_id: int, content: RecordDict) -> Candidate:
    return Candidate(
        sender_update_digest(node_id, content), node_id, {}, 1.0, 1.0, content
    )


def sample_replies(model: NDArrays, seed: int) -> tuple[RecordDict, RecordDict]:
    """A dense full-weights reply and the DGC mod's reply for one update."""
    rng = np.random.default_rng(seed)
    delta = {k: rng.normal(0, 1e-3, v.shape).astype(v.dtype) for k, v in model.items()}
    metrics = MetricRecord({"num-examples": 100})
    dense = RecordDict(
        {
            "arrays": to_arrayrecord({k: model[k] + delta[k] for k in model}),
            "metrics": metrics,
        }
    )
    compressed, _ = compress(delta, DGCState(), DGCConfig())
    sparse = RecordDict(
        {
            "arrays": ArrayRecord(compressed.arrays),
            "metrics": metrics,
            UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA}),
        }
    )
    return dense, sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "vote_request.json")
    args = parser.parse_args()
    sys.path.insert(0, str(APP_DIR))
    from flchain_cnn.task import new_model  # pylint: disable=import-outside-toplevel

    net = new_model("fashion-mnist", args.seed)
    model = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    context = VoteContext("bench", 1, "ab" * 32, model_hash(model), "cd" * 32, 0)
    dense, sparse = sample_replies(model, args.seed)

    def request(replies: list[RecordDict]) -> int:
        candidates = [_candidate(i + 1, r) for i, r in enumerate(replies)]
        content = vote_request(context, model, candidates, [1.0] * len(candidates))
        return content_bytes(content)

    floor = request([])
    rows = {}
    for name, reply in (("dense", dense), ("dgc", sparse)):
        rows[name] = {
            "reply_bytes": content_bytes(reply),
            "payload_blob_bytes": len(payload_blob(1, reply)),
            "request_bytes_one_candidate": request([reply]),
            "added_bytes_per_candidate": request([reply]) - floor,
            f"request_bytes_{args.candidates}_candidates": request(
                [reply] * args.candidates
            ),
        }
    ratio = rows["dense"]["added_bytes_per_candidate"] / max(
        1, rows["dgc"]["added_bytes_per_candidate"]
    )
    label = "dense candidate / DGC candidate bytes per vote request"
    parameters = int(sum(v.size for v in model.values()))
    write_results(
        args.out,
        "vote_request",
        args,
        headline=(label, round(ratio, 1)),
        parameters=parameters,
        global_model_request_bytes=floor,
        replies=rows,
        load_average=list(os.getloadavg()),
    )
    for name, row in rows.items():
        print(name, row)
    print(f"parameters {parameters}, request without candidates {floor} bytes")
    print(f"{label}: {ratio:.1f}x")


if __name__ == "__main__":
    main()

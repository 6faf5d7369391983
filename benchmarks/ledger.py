"""What the ledger costs: one block append against its floor, and verify throughput.

- Append: a block for a global model the size of the Fashion-MNIST CNN
  (1.63M parameters, 6.5 MB), with K=5 included updates and their contributions:
  hash the model, store its blob, Merkle root, leader signature, SQLite commit.
  Floor, measured in the same run, interleaved: ``hashlib.sha256`` over the
  model's bytes plus writing those bytes once to a file in the same directory.
- Share of a global version: median append time over the median wall time of one
  version of the Fashion-MNIST app (FedBuff, 10 nodes, K=5, Dirichlet 0.5, one
  local epoch), run on the virtual-clock grid with the ledger on.
- Verify: blocks per second over a ledger of ``--verify-blocks`` blocks, each
  with its own model blob (with and without re-hashing the blobs).
- Replay and stored updates: real FedBuff runs (K=5, 10 nodes in three speed
  tiers, ``--replay-versions`` versions) on the virtual-clock grid, whose
  clients reply at once with the global model plus seeded noise (dense full
  weights) or, through the DGC mod, a sparse delta (0.3 % of the values in
  float16, the density of the published compression result), for the
  Fashion-MNIST CNN and the digits CNN. Per run: the bytes stored per block
  (model, update payloads, server state), the append time against its floor
  (hash and write the same bytes once), and ``verify --replay`` throughput,
  with its ratio to the aggregation itself (the time replay spends in
  ``server_step``, the server's own step, on the same inputs).
- Quorum-signed headers: the same FedBuff runs (Fashion-MNIST CNN, dense and
  sparse) with an in-process PoV committee of 4 (constant scores, so the cost
  is the signing path, not the judging). Per block: the time the committee
  spends signing the header (each member's checks of the block and its votes,
  one Ed25519 signature each, and the one replay of the block's model the
  in-process members share), the replay inside it alone, each as a ratio to
  the aggregation itself (``server_step`` on the block's updates).

The machine is shared: every result records ``os.getloadavg()``.

JSON to benchmarks/results/ledger.json; last line ``ledger append cost: <x.xx>x floor``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    timed,
    write_results,
)
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER
from nacl.signing import SigningKey

from flchain_flwr.ledger import Block, Ledger
from flchain_flwr.ledger.canonical import model_chunks
from flchain_flwr.ledger.payload import PAYLOAD_FIELD
from flchain_flwr.ledger.replay import PendingReplay, replay
from flchain_flwr.mods import DGCConfig, dgc_mod
from flchain_flwr.pov import Committee, Score, Threshold, Verifier
from flchain_flwr.protocol import MODEL_VERSION_KEY
from flchain_flwr.sim import (
    VirtualGrid,
    app_run_config,
    examples_work,
    simulate,
    tiered,
)
from flchain_flwr.strategies import (
    Claimed,
    FedBuff,
    ShuffleAll,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.serverstep import StepResult, server_step

SPARSE = DGCConfig(
    density=0.003, momentum=0.0, warmup=(), value_dtype="float16", selection="global"
)
"""The DGC settings of the stored-update runs' sparse clients."""


def fashion_model(
    seed: int = 0, dataset: str = "fashion-mnist"
) -> dict[str, np.ndarray]:
    from flchain_cnn.task import new_model

    state = new_model(dataset, seed).state_dict()
    return {k: v.detach().numpy().copy() for k, v in state.items()}


def noise_app(sparse: bool) -> ClientApp:
    """Clients that reply at once: the model plus seeded noise, as full weights
    (or, through the DGC mod, as a sparse delta)."""
    app = ClientApp(mods=[dgc_mod(SPARSE)] if sparse else None)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        version = int(msg.content["config"][MODEL_VERSION_KEY])  # type: ignore[arg-type]
        rng = np.random.default_rng([pid, version])
        out = ArrayRecord()
        for name, arr in msg.content.array_records["arrays"].items():
            value = arr.numpy()
            if value.dtype.kind == "f":
                noise = rng.standard_normal(value.shape).astype(value.dtype)
                value = value + np.asarray(1e-3, value.dtype) * noise
            out[name] = Array(value)
        metrics = MetricRecord({"num-examples": 100 + 10 * pid})
        return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)

    return app


def _blob_bytes(ledger: Ledger, digest: str) -> int:
    return ledger.blobs.path_of(digest).stat().st_size


def storage_per_block(ledger: Ledger) -> dict[str, float]:
    """Mean bytes a block after genesis stores: model, payloads, server state."""
    blocks = [b for b in ledger.blocks() if b.height > 0]
    model = [_blob_bytes(ledger, b.header["model_hash"]) for b in blocks]
    payloads = [
        sum(_blob_bytes(ledger, u[PAYLOAD_FIELD]) for u in b.body["included"])
        for b in blocks
    ]
    updates = sum(len(b.body["included"]) for b in blocks)
    state = []
    for b in blocks:
        record = b.body.get("server_state", {})
        digests = [record["claims"]] if "claims" in record else []
        if "momentum" in record:
            digests.append(record["momentum"]["velocity"])
        state.append(sum(_blob_bytes(ledger, d) for d in digests))
    return {
        "model_bytes": statistics.mean(model),
        "payload_bytes": statistics.mean(payloads),
        "payload_bytes_per_update": sum(payloads) / updates,
        "server_state_bytes": statistics.mean(state),
        "total_bytes": statistics.mean(
            m + p + s for m, p, s in zip(model, payloads, state, strict=True)
        ),
    }


class TimedLedger(Ledger):
    """A ledger that times each append."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.appends: list[float] = []

    def append(self, **kwargs: Any) -> Block:
        with timed(self.appends):
            return super().append(**kwargs)


def timed_server_step(seconds: list[float]) -> Callable[..., StepResult | None]:
    """:func:`server_step`, each call's seconds appended to ``seconds``."""

    def step(*args: Any, **kwargs: Any) -> StepResult | None:
        with timed(seconds):
            return server_step(*args, **kwargs)

    return step


def measure_stored_updates(
    workdir: Path, dataset: str, sparse: bool, versions: int
) -> dict[str, Any]:
    """A FedBuff run with a ledger; storage, append cost and replay speed."""
    from flchain_cnn.task import new_model

    name = f"{dataset}-{'sparse' if sparse else 'dense'}"
    path = workdir / f"{name}.db"
    writer = TimedLedger(path)
    with writer:
        simulate(
            FedBuff(buffer_size=5, fraction_evaluate=0.0, ledger=writer, seed=0),
            VirtualGrid(noise_app(sparse), tiered(10), seed=0),
            ArrayRecord(new_model(dataset, 0).state_dict()),
            num_rounds=versions,
        )
    in_steps: list[float] = []
    with Ledger(path, create=False) as ledger:
        assert ledger.verify().ok
        storage = storage_per_block(ledger)
        replays: list[float] = []
        with timed(replays):
            report = replay(ledger, step=timed_server_step(in_steps))
        replay_s = replays[0]
        assert report.complete, report
        floors = block_floors(ledger, workdir / f"{name}-floor")
    blocks = len(report.replayed)
    append_median = statistics.median(writer.appends[1:])  # [0]: genesis
    return {
        "dataset": dataset,
        "updates": "sparse DGC deltas" if sparse else "dense full weights",
        "blocks_replayed": blocks,
        "storage_per_block": storage,
        "append_median_s": append_median,
        "append_floor_median_s": statistics.median(floors),
        "append_ratio_to_floor": append_median / statistics.median(floors),
        "replay_s": replay_s,
        "replay_blocks_per_s": blocks / replay_s,
        "aggregation_s": sum(in_steps),
        "replay_ratio_to_aggregation": replay_s / sum(in_steps),
    }


class TimedReplay(PendingReplay):
    """The in-process members' replay of each pending block, timed."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.seconds: list[float] = []

    def check(self, block: Block) -> tuple[bool, str | None]:
        with timed(self.seconds):
            return super().check(block)


class TimedCommittee(Committee):
    """An in-process committee whose header signing (and replay) is timed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signing: list[float] = []
        self.replays: TimedReplay | None = None

    def header_signatures(
        self, members: Any, ledger: Ledger, block: Block, view: int
    ) -> Any:
        if self.replays is None or self.replays.ledger is not ledger:
            self.replays = TimedReplay(ledger)
            self.pending_replay = self.replays
        with timed(self.signing):
            return super().header_signatures(members, ledger, block, view)


def measure_quorum(workdir: Path, sparse: bool, versions: int) -> dict[str, Any]:
    """A FedBuff run with an in-process committee of 4 and a ledger: header
    signing and its replay per block, against the aggregation."""
    from flchain_cnn.task import new_model

    name = f"quorum-{'sparse' if sparse else 'dense'}"
    path = workdir / f"{name}.db"
    committee = TimedCommittee(
        [
            Verifier(lambda _: Score(1.0, 0.0), SigningKey(bytes([i + 1]) * 32))
            for i in range(4)
        ],
        threshold=Threshold(value=0.0),
    )
    simulate(
        FedBuff(
            buffer_size=5,
            fraction_evaluate=0.0,
            ledger=path,
            committee=committee,
            seed=0,
        ),
        VirtualGrid(noise_app(sparse), tiered(10), seed=0),
        ArrayRecord(new_model("fashion-mnist", 0).state_dict()),
        num_rounds=versions,
    )
    in_steps: list[float] = []
    with Ledger(path, create=False) as ledger:
        report = ledger.verify()
        assert report.ok and "in 0 of" not in report.headers, report
        assert replay(ledger, step=timed_server_step(in_steps)).complete
    assert committee.replays is not None
    blocks = len(committee.signing)
    aggregation = statistics.median(in_steps)
    signing = statistics.median(committee.signing)
    replays = statistics.median(committee.replays.seconds)
    return {
        "updates": "sparse DGC deltas" if sparse else "dense full weights",
        "blocks": blocks,
        "committee": 4,
        "header_signing_median_s": signing,
        "replay_check_median_s": replays,
        "aggregation_median_s": aggregation,
        "signing_ratio_to_aggregation": signing / aggregation,
        "replay_ratio_to_aggregation": replays / aggregation,
        "signing_without_replay_s": signing - replays,
    }


def block_floors(ledger: Ledger, folder: Path) -> list[float]:
    """For each block after genesis: hash and write its model and payload
    blobs' bytes once (what any store of those bytes must do)."""
    folder.mkdir()
    floors: list[float] = []
    for block in ledger.blocks():
        if block.height == 0:
            continue
        digests = [block.header["model_hash"]] + [
            u[PAYLOAD_FIELD] for u in block.body["included"]
        ]
        data = [ledger.blobs.get(d) for d in digests]
        with timed(floors):
            for i, chunk in enumerate(data):
                hashlib.sha256(chunk).hexdigest()
                (folder / f"{block.height}-{i}.bin").write_bytes(chunk)
    return floors


def block_body(rng: np.random.Generator, k: int = 5) -> dict[str, Any]:
    included = [
        {
            "node_id": int(rng.integers(1, 2**62)),
            "digest": rng.bytes(32).hex(),
            "trained_on": 0,
            "staleness": int(s),
            "weight": float(1 / np.sqrt(1 + s)),
            "num_examples": 6000,
        }
        for s in rng.integers(0, 5, size=k)
    ]
    contributions = [
        {"node_id": u["node_id"], "data_share": 0.2, "relevance": 0.8, "score": 0.16}
        for u in included
    ]
    return {"included": included, "contributions": contributions}


def floor(model: dict[str, np.ndarray], path: Path) -> float:
    """sha256 over the model's bytes plus writing them once: any store's minimum."""
    seconds: list[float] = []
    with timed(seconds), path.open("wb") as out:
        digest = hashlib.sha256()
        for chunk in model_chunks(model):
            digest.update(chunk)
            out.write(chunk)
        digest.hexdigest()
    return seconds[0]


def measure_append(workdir: Path, repeats: int) -> dict[str, Any]:
    model = fashion_model()
    rng = np.random.default_rng(0)
    ledger = Ledger(workdir / "append.db")
    ledger.append(model=model, model_version=0, base_version=0, config_digest="c" * 64)
    (workdir / "floor").mkdir()
    appends: list[float] = []
    floors: list[float] = []
    for i in range(repeats):
        model["classifier.1.bias"] += np.float32(1e-3)  # a new model, a new blob
        body = block_body(rng)
        floors.append(floor(model, workdir / "floor" / f"{i}.bin"))
        with timed(appends):
            ledger.append(
                model=model,
                model_version=i + 1,
                base_version=i,
                config_digest="c" * 64,
                **body,
            )
    ledger.close()
    params = sum(v.size for v in model.values())
    return {
        "parameters": int(params),
        "model_bytes": int(sum(v.nbytes for v in model.values())),
        "repeats": repeats,
        "append_median_s": statistics.median(appends),
        "floor_median_s": statistics.median(floors),
        "append_s": appends,
        "floor_s": floors,
        "ratio": statistics.median(appends) / statistics.median(floors),
    }


def measure_version_time(workdir: Path, versions: int) -> dict[str, Any]:
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.task import new_model

    config = app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "buffer-size": 5,
            "ledger-path": str(workdir / "app.db"),
        },
    )
    strategy = fedbuff_from_run_config(
        config,  # its max-staleness (50) is the one the published results used
        min_available_nodes=10,
        fraction_evaluate=0.0,  # published results: no federated evaluation
        min_evaluate_nodes=1,  # published results' default (unused at fraction 0)
        evaluate_every=1,  # published results' default (unused at fraction 0)
        example_weighting=Claimed(),  # published results: claimed example counts
        scheduling=ShuffleAll(),  # published results: seeded shuffle of free nodes
        state_rule="delta",  # published results' rule (the CNN has no state arrays)
    )
    grid = VirtualGrid(
        client_app, tiered(10), run_config=config, seed=0, work_fn=examples_work(1e-3)
    )
    run = simulate(
        strategy,
        grid,
        ArrayRecord(new_model("fashion-mnist", 0).state_dict()),
        num_rounds=versions,
    )
    walls = [v.wall_time for v in run.result.versions]  # type: ignore[union-attr]
    per_version = np.diff([0.0, *walls]).tolist()
    with Ledger(workdir / "app.db", create=False) as ledger:
        assert ledger.verify().ok
    return {
        "versions": versions,
        "version_wall_s": per_version,
        "version_wall_median_s": statistics.median(per_version),
    }


def measure_verify(workdir: Path, blocks: int) -> dict[str, Any]:
    model = fashion_model(1)
    rng = np.random.default_rng(1)
    path = workdir / "verify.db"
    with Ledger(path) as ledger:
        for i in range(blocks):
            model["classifier.1.bias"] += np.float32(1e-3)
            ledger.append(
                model=model,
                model_version=i,
                base_version=max(0, i - 1),
                config_digest="c" * 64,
                **block_body(rng),
            )
    seconds: list[float] = []
    with Ledger(path, create=False) as ledger:
        with timed(seconds):
            report = ledger.verify()
        with timed(seconds):
            assert ledger.verify(check_models=False).ok
    with_models, without_models = seconds
    assert report.ok, report
    return {
        "blocks": blocks,
        "with_models_s": with_models,
        "blocks_per_s_with_models": blocks / with_models,
        "without_models_s": without_models,
        "blocks_per_s_without_models": blocks / without_models,
    }


PARTS = ("append", "version", "verify", "stored", "quorum")
"""What ``--parts`` can select (default: all)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--verify-blocks", type=int, default=1000)
    parser.add_argument("--replay-versions", type=int, default=10)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (append always runs: "
        "it is the headline)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch directory (default: a temporary one, removed afterwards)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ledger.json")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")} | {"append"}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    require_fashion_mnist()
    FLOWER_LOGGER.setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="flchain-ledger-bench-", dir=args.workdir))
    results: dict[str, Any] = {}
    try:
        append = measure_append(workdir, args.repeats)
        results["append"] = append
        print(
            f"append: median {append['append_median_s'] * 1e3:.1f} ms, floor "
            f"{append['floor_median_s'] * 1e3:.1f} ms, {append['parameters']:,} params",
            flush=True,
        )
        if "version" in parts:
            version = measure_version_time(workdir, args.versions)
            share = append["append_median_s"] / version["version_wall_median_s"]
            results["version"] = version
            results["append_share_of_version"] = share
            print(
                f"one version of the Fashion-MNIST app: "
                f"{version['version_wall_median_s']:.2f} s; append = {share:.2%} of it",
                flush=True,
            )
        if "verify" in parts:
            verify = measure_verify(workdir, args.verify_blocks)
            results["verify"] = verify
            print(
                f"verify: {verify['blocks_per_s_with_models']:.0f} blocks/s with "
                f"models, {verify['blocks_per_s_without_models']:.0f} without",
                flush=True,
            )
        if "stored" in parts:
            results["stored_updates"] = measure_all_stored(workdir, args)
        if "quorum" in parts:
            quorum = {}
            for sparse in (False, True):
                run = measure_quorum(workdir, sparse, args.replay_versions)
                quorum["sparse" if sparse else "dense"] = run
                print(
                    f"quorum-signed header, {run['updates']}: signing "
                    f"{run['header_signing_median_s'] * 1e3:.1f} ms a block = "
                    f"{run['signing_ratio_to_aggregation']:.2f}x the aggregation "
                    f"({run['aggregation_median_s'] * 1e3:.1f} ms); its replay "
                    f"alone {run['replay_ratio_to_aggregation']:.2f}x",
                    flush=True,
                )
            results["quorum_signing"] = quorum
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(
        args.out,
        "ledger",
        args,
        headline=("ledger append cost (x floor)", append["ratio"]),
        **results,
        loadavg=list(os.getloadavg()),
        machine_shared=True,
    )

    print(f"ledger append cost: {append['ratio']:.2f}x floor")


def measure_all_stored(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_stored_updates` for both datasets, dense and sparse."""
    stored = {}
    for dataset in ("fashion-mnist", "digits"):
        for sparse in (False, True):
            run = measure_stored_updates(workdir, dataset, sparse, args.replay_versions)
            stored[f"{dataset}-{'sparse' if sparse else 'dense'}"] = run
            print(
                f"{dataset}, {run['updates']}: "
                f"{run['storage_per_block']['total_bytes'] / 1e6:.3f} MB a block "
                f"({run['storage_per_block']['payload_bytes_per_update']:,.0f} B "
                f"an update), append {run['append_ratio_to_floor']:.2f}x its "
                f"floor; replay {run['replay_blocks_per_s']:.1f} blocks/s, "
                f"{run['replay_ratio_to_aggregation']:.2f}x the aggregation",
                flush=True,
            )
    return stored


if __name__ == "__main__":
    main()

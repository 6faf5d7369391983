"""Scale: a large virtual population with a bounded number of nodes training at once.

For each population size N (``--sizes``, default 1,000, 10,000 and 100,000
virtual nodes), FedBuff (K = ``--buffer-size`` 10, ``--concurrency`` 1000 nodes
training at once, no federated evaluation) makes ``--versions`` global versions
on the virtual-clock grid. The ClientApp is trivial so that the strategy and the
grid are what is measured: a numpy model of ``--params`` float32 parameters, and
each train reply adds a small step that depends only on the node's partition.
Device speeds are tiered (1x/2x/4x/10x slower, shared profiles) or log-normal
(``--devices``), with a log-normal jitter per message, all seeded.

Each N runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own.
Per N: wall seconds per version (the run only, not the grid's construction,
which is timed separately), peak RSS, RSS right after the grid was built,
tracemalloc bytes per node of the grid alone, versions made, nodes that got a
message, and the load average before and after (the machine is shared). Across
sizes: memory per extra node, (peak RSS at the largest N - at the smallest) /
(extra nodes), and the headline, time per version at the largest N over the
smallest. Targets: the ratio <= 1.5 and <= 2 KB per extra node.

JSON to benchmarks/results/scale.json; last line
``scale: time per version at 100k / at 1k: <ratio>`` (with the sizes run).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, write_results
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.sim import DeviceProfile, VirtualGrid, lognormal, simulate, tiered
from flchain_flwr.strategies import FedBuff

TIME_RATIO_TARGET = 1.5
BYTES_PER_NODE_TARGET = 2048
SLOWDOWNS = (1.0, 2.0, 4.0, 10.0)
WORK_SECONDS = 10.0  # one local training at speed 1, in simulated seconds


def client_app(params: int) -> ClientApp:
    """Each train reply is the model plus a step set by the node's partition."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        model = msg.content.array_records["arrays"]["w"].numpy()
        step = np.float32(1e-4 * (1 + partition % 7))
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(model + step)}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def devices_for(kind: str, num_nodes: int, seed: int) -> list[DeviceProfile]:
    if kind == "tiered":
        return tiered(num_nodes, SLOWDOWNS, jitter=0.2)
    return lognormal(num_nodes, sigma=0.5, seed=seed, jitter=0.2)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_one(args: argparse.Namespace, num_nodes: int) -> dict[str, Any]:
    """One population size, in this (fresh) process."""
    FLOWER_LOGGER.setLevel(logging.WARNING)
    app = client_app(args.params)
    devices = devices_for(args.devices, num_nodes, args.seed)
    work = WORK_SECONDS
    gc.collect()
    rss_before_grid = rss_bytes()
    started = time.perf_counter()
    grid = VirtualGrid(app, devices, seed=args.seed, work_fn=lambda _msg, _reply: work)
    construction_s = time.perf_counter() - started
    rss_after_grid = rss_bytes()

    strategy = FedBuff(
        buffer_size=args.buffer_size,
        concurrency=args.concurrency,
        fraction_evaluate=0.0,
        seed=args.seed,
    )
    initial = ArrayRecord({"w": Array(np.zeros(args.params, dtype=np.float32))})
    started = time.perf_counter()
    run = simulate(strategy, grid, initial, num_rounds=args.versions)
    run_s = time.perf_counter() - started
    peak_rss = peak_rss_bytes()
    result = run.result
    assert result is not None
    versions = len(result.versions)  # type: ignore[attr-defined]
    model = result.arrays["w"].numpy()
    touched = len(grid.contexts.made)
    totals = grid.totals()
    del run, result, strategy, grid
    gc.collect()

    # The grid alone, measured after the run so that tracing skews nothing above.
    tracemalloc.start()
    traced_grid = VirtualGrid(app, devices, seed=args.seed)
    grid_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del traced_grid

    return {
        "nodes": num_nodes,
        "versions": versions,
        "construction_s": construction_s,
        "run_s": run_s,
        "s_per_version": run_s / max(versions, 1),
        "rss_before_grid_bytes": rss_before_grid,
        "rss_after_grid_bytes": rss_after_grid,
        "peak_rss_bytes": peak_rss,
        "grid_tracemalloc_bytes_per_node": grid_bytes / num_nodes,
        "nodes_messaged": touched,
        "messages": int(totals["messages"]),
        "errors": int(totals["errors"]),
        "simulated_seconds": totals["simulated_seconds"],
        "model_sha256": hashlib.sha256(model.tobytes()).hexdigest(),
    }


def short(num_nodes: int) -> str:
    """1000 -> '1k', 100000 -> '100k'."""
    return f"{num_nodes // 1000}k" if num_nodes % 1000 == 0 else str(num_nodes)


def run_in_subprocess(num_nodes: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    proc = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], "--worker", str(num_nodes)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"N={num_nodes}: worker exited with {proc.returncode}")
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_before"] = list(load_before)
    row["load_after"] = list(os.getloadavg())
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    small = min(rows, key=lambda r: r["nodes"])
    large = max(rows, key=lambda r: r["nodes"])
    extra = large["nodes"] - small["nodes"]
    ratio = large["s_per_version"] / small["s_per_version"]

    def per_node(key: str) -> float | None:
        return (large[key] - small[key]) / extra if extra else None

    peak_per_node = per_node("peak_rss_bytes")
    return {
        "smallest": small["nodes"],
        "largest": large["nodes"],
        "time_per_version_ratio": ratio,
        "peak_rss_bytes_per_extra_node": peak_per_node,
        "built_rss_bytes_per_extra_node": per_node("rss_after_grid_bytes"),
        "grid_tracemalloc_bytes_per_node": large["grid_tracemalloc_bytes_per_node"],
        "time_target_met": ratio <= TIME_RATIO_TARGET,
        "memory_target_met": (
            peak_per_node is not None and peak_per_node <= BYTES_PER_NODE_TARGET
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1_000, 10_000, 100_000],
        help="comma-separated population sizes (default: 1000,10000,100000)",
    )
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--params", type=int, default=500)
    parser.add_argument("--devices", choices=("tiered", "lognormal"), default="tiered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(run_one(args, args.worker)))
        return

    rows = []
    for num_nodes in args.sizes:
        row = run_in_subprocess(num_nodes)
        print(
            f"N={num_nodes:,}: {row['s_per_version'] * 1e3:.1f} ms per version "
            f"({row['versions']} versions, {row['run_s']:.1f} s), grid built in "
            f"{row['construction_s']:.2f} s, peak RSS "
            f"{row['peak_rss_bytes'] / 2**20:.0f} MiB, grid "
            f"{row['grid_tracemalloc_bytes_per_node']:.0f} B/node, load "
            f"{row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}",
            flush=True,
        )
        rows.append(row)
    summary = summarise(rows)
    label = (
        f"scale: time per version at {short(summary['largest'])} / at "
        f"{short(summary['smallest'])}"
    )
    write_results(
        args.out,
        "scale",
        args,
        headline=(label, summary["time_per_version_ratio"]),
        target={
            "time_per_version_ratio_max": TIME_RATIO_TARGET,
            "peak_rss_bytes_per_extra_node_max": BYTES_PER_NODE_TARGET,
            "time_met": summary["time_target_met"],
            "memory_met": summary["memory_target_met"],
        },
        summary=summary,
        runs=rows,
    )
    per_node = summary["peak_rss_bytes_per_extra_node"]
    if per_node is not None:
        print(f"peak RSS per extra node: {per_node:.0f} B", flush=True)
    print(f"{label}: {summary['time_per_version_ratio']:.2f}")


if __name__ == "__main__":
    main()

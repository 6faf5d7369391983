"""Loopback deployment: what a deployed version costs over Ray simulation,
against Flower's own floor, with and without queued dispatch.

Setting: a real SuperLink (TLS, SuperNode authentication) and three trainer
SuperNodes on 127.0.0.1 (:class:`flchain_flwr.deploy.LoopbackFederation`), the
flchain_cnn app on scikit-learn's digits (no download), FedBuff K = 2,
``--versions`` versions per run, each run in a fresh federation. Runs, one
after another, floor and FedBuff alternating so that both see the same load:

1. floor: ``--round-trips`` round trips per node to an EMPTY ClientApp
   (``benchmarks/empty_app``: no torch, no data), each node's next message
   sent as soon as its reply is seen;
2. FedBuff, a message dispatched on reply (``queued-dispatch = false``);
3. the floor again;
4. FedBuff with ``queued-dispatch = true``;
5. and 6. the floor and queued FedBuff with
   ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL = --fast-poll`` (default 1.0 s);
7. FedBuff in Ray simulation (``flwr run`` with three simulated nodes).

A version's time is the ServerApp's clock at its evaluation; steady state
leaves out the first version (process start-up). A run's overhead is its
steady seconds per version minus Ray simulation's; the headline divides the
queued run's overhead (default poll interval) by the floor's median round trip:
``deployed overhead per version: <x>x floor`` (target <= 1.5). Also measured:
the start of a fresh ClientApp process (imports plus the node's data) with the
partition cache cold and warm. The load average is recorded before and after
each measurement. ``--async-runs`` adds the earlier async-gain runs (FedAvg and
FedBuff with one node slowed ``--slowdown`` times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import APP_DIR, RESULTS, write_results

from flchain_flwr.configvalues import ConfigValue
from flchain_flwr.deploy import LoopbackFederation
from flchain_flwr.sim.local_run import flwr_run_local

EMPTY_APP = Path(__file__).parent / "empty_app"
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
NOT_QUIET = (
    "The machine was NOT quiet: other engineers' jobs shared its 2 cores during "
    "every run (see load_before/load_after per measurement). SuperLink, "
    "SuperNodes and their ClientApp processes also share those cores. Floor "
    "and FedBuff runs alternate so that their ratio sees similar load."
)
QUIET = (
    "Run with --quiet: nothing but this benchmark ran on the machine. The load "
    "averages recorded per measurement are this benchmark's own processes "
    "(SuperLink, SuperNodes, ClientApps) on 2 cores."
)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _timeline(path: Path) -> list[list[float]]:
    return list(json.loads(path.read_text())["timeline"]) if path.exists() else []


def _mean_staleness(path: Path) -> float | None:
    if not path.exists():
        return None
    versions = json.loads(path.read_text()).get("versions", [])
    total = count = 0
    for v in versions:
        for s, n in v["staleness_histogram"].items():
            total, count = total + int(s) * n, count + n
    return total / count if count else None


def time_to(timeline: list[list[float]], target: float) -> float | None:
    """Seconds until the first version with accuracy >= ``target`` (or None)."""
    return next((t for v, t, a in timeline if v > 0 and a >= target), None)


def summary(
    name: str, timeline: list[list[float]], versions: int, target: float
) -> dict[str, Any]:
    """One run's figures from its ``[version, seconds, accuracy]`` timeline."""
    done = [row for row in timeline if row[0] > 0]
    seconds = done[-1][1] if done else float("nan")
    steady = (
        (done[-1][1] - done[0][1]) / (len(done) - 1) if len(done) > 1 else float("nan")
    )
    return {
        "run": name,
        "versions": len(done),
        "seconds": seconds,
        "seconds_per_version": seconds / max(1, len(done)),
        "steady_seconds_per_version": steady,
        "final_accuracy": done[-1][2] if done else float("nan"),
        f"seconds_to_{target:g}": time_to(timeline, target),
        "complete": len(done) == versions,
        "timeline": timeline,
    }


def deployed(
    work: Path,
    name: str,
    app: Path,
    run_config: dict[str, ConfigValue],
    slowdowns: list[float],
    poll: float | None,
    cache: Path,
) -> Path:
    """Run ``app`` on a fresh loopback federation; return its results path."""
    results = work / f"{name}.json"
    with LoopbackFederation(work / name) as fed:
        fed.env["FLCHAIN_DATA_CACHE"] = str(cache)
        if poll is not None:
            fed.env[POLL_ENV] = f"{poll:g}"
        fed.start_superlink()
        nodes = [
            fed.start_supernode(
                f"trainer-{pid}",
                {
                    "partition-id": pid,
                    "num-partitions": len(slowdowns),
                    "compute-slowdown": slow,
                },
            )
            for pid, slow in enumerate(slowdowns)
        ]
        fed.wait_online([n.node_id for n in nodes if n.node_id is not None])
        process = fed.start_run(app, {**run_config, "results-path": str(results)})
        process.wait(timeout=3600)
    return results


START_SNIPPET = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import flchain_cnn.client_app as c
from flwr.app import Context, RecordDict
t1 = time.perf_counter()
from flchain_flwr.sim import app_run_config
cfg = app_run_config(sys.argv[1], {"dataset": "digits", "dirichlet-alpha": 0.3,
                     "seed": 42, "allow-download": False, "train-subset": 0})
ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg,
              node_config={"partition-id": 0, "num-partitions": 3})
t2 = time.perf_counter()
c._local_data(ctx)
print(t1 - t0, time.perf_counter() - t2)
"""
"""A fresh process's start: import the ClientApp, then load partition 0 of 3
under the app's full run config (its pyproject.toml, digits overridden), as a
SuperNode's ClientApp gets it; prints the seconds of each."""


def start_cost(cache: Path, repeats: int) -> dict[str, Any]:
    """Seconds for a fresh process to import the ClientApp and load its data,
    with an empty (cold) and a filled (warm) partition cache, alternating."""
    rows: dict[str, list[list[float]]] = {"cold": [], "warm": []}
    load_before = load()
    for i in range(repeats):
        for kind in ("cold", "warm"):
            folder = cache / f"start-{kind}-{i}" if kind == "cold" else cache
            env = {**os.environ, "FLCHAIN_DATA_CACHE": str(folder)}
            out = subprocess.run(
                [sys.executable, "-c", START_SNIPPET, str(APP_DIR)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            rows[kind].append([float(out[-2]), float(out[-1])])
    figures: dict[str, Any] = {"load_before": load_before, "load_after": load()}
    for kind, values in rows.items():
        figures[kind] = {
            "import_s": statistics.median(v[0] for v in values),
            "data_s": statistics.median(v[1] for v in values),
            "total_s": statistics.median(v[0] + v[1] for v in values),
            "samples": values,
        }
    return figures


def main() -> None:  # pylint: disable=too-many-locals
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--round-trips", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--fast-poll", type=float, default=0.1)
    parser.add_argument("--start-repeats", type=int, default=3)
    parser.add_argument("--async-runs", action="store_true")
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=RESULTS / "deployment.json")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="state that nothing else ran on the machine meanwhile (recorded)",
    )
    args = parser.parse_args()

    base: dict[str, ConfigValue] = {
        "num-server-rounds": args.versions,
        "local-epochs": args.local_epochs,
        "min-nodes": 3,
        "message-ttl": 300.0,
        "strategy": "fedbuff",
        "buffer-size": 2,
    }
    floor_config: dict[str, ConfigValue] = {
        "round-trips": args.round_trips,
        "min-nodes": 3,
    }
    uniform = [1.0, 1.0, 1.0]
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flchain-deploy-") as tmp:
        work = Path(tmp)
        cache = work / "data-cache"
        start = start_cost(work / "start-cache", args.start_repeats)
        print(
            f"ClientApp start: cold cache {start['cold']['total_s']:.2f}s, "
            f"warm {start['warm']['total_s']:.2f}s",
            flush=True,
        )
        plan: list[tuple[str, bool, float | None]] = [
            ("floor", False, None),
            ("fedbuff", False, None),
            ("floor", False, None),
            ("fedbuff-queued", True, None),
            (f"floor-poll-{args.fast_poll:g}", False, args.fast_poll),
            (f"fedbuff-queued-poll-{args.fast_poll:g}", True, args.fast_poll),
        ]
        for index, (name, queued, poll) in enumerate(plan):
            before = load()
            if name.startswith("floor"):
                path = deployed(
                    work,
                    f"{index}-{name}",
                    EMPTY_APP,
                    floor_config,
                    uniform,
                    poll,
                    cache,
                )
                trips = (
                    json.loads(path.read_text())["round_trips"] if path.exists() else []
                )
                row: dict[str, Any] = {
                    "run": name,
                    "poll_interval": poll,
                    "median_round_trip_s": statistics.median(trips) if trips else None,
                    "round_trips": trips,
                }
                floors.append(row)
                print(
                    name, f"median round trip {row['median_round_trip_s']}", flush=True
                )
            else:
                config = {**base, "queued-dispatch": queued}
                path = deployed(
                    work, f"{index}-{name}", APP_DIR, config, uniform, poll, cache
                )
                row = summary(name, _timeline(path), args.versions, args.target)
                row.update(
                    queued_dispatch=queued,
                    poll_interval=poll,
                    mean_staleness=_mean_staleness(path),
                )
                runs.append(row)
                print(
                    name,
                    f"{row['steady_seconds_per_version']:.2f}s/version",
                    flush=True,
                )
            row.update(load_before=before, load_after=load())
        before = load()
        sim_results = work / "sim.json"
        flwr_run_local(
            APP_DIR,
            flwr_home=work / "sim-home",
            num_supernodes=3,
            run_config={**base, "results-path": str(sim_results)},
            timeout=3600,
        )
        sim = summary(
            "fedbuff-ray-simulation", _timeline(sim_results), args.versions, args.target
        )
        sim.update(mean_staleness=_mean_staleness(sim_results))
        sim.update(load_before=before, load_after=load())
        runs.append(sim)
        async_runs = _async_runs(args, work, base, cache) if args.async_runs else None

    figures = derived(runs, floors, args.fast_poll)
    write_results(
        args.out,
        "deployment",
        args,
        headline=(
            "deployed overhead per version (x floor)",
            figures["overhead_over_floor"]["fedbuff-queued"],
        ),
        start_cost=start,
        floors=floors,
        runs=runs,
        **figures,
        async_runs=async_runs,
        quiet_machine=args.quiet,
        note=QUIET if args.quiet else NOT_QUIET,
    )
    print(
        f"ClientApp start (fresh process): {start['cold']['total_s']:.2f}s with "
        f"a cold data cache, {start['warm']['total_s']:.2f}s warm"
    )
    for name, floor in figures["floor_s"].items():
        print(f"floor ({name}): {floor:.2f}s per round trip")
    for r in runs:
        print(
            f"{r['run']:>28}: {r['steady_seconds_per_version']:.2f}s per version "
            f"(steady), mean staleness {r['mean_staleness']}, "
            f"accuracy {r['final_accuracy']:.3f}"
        )
    for name, ratio in figures["overhead_over_floor"].items():
        extra = figures["overhead_s_per_version"][name]
        print(
            f"{name}: {extra:.2f}s per version over Ray simulation = {ratio:.2f}x floor"
        )
    print(
        "deployed overhead per version: "
        f"{figures['overhead_over_floor']['fedbuff-queued']:.2f}x floor"
    )


def derived(
    runs: list[dict[str, Any]], floors: list[dict[str, Any]], fast_poll: float
) -> dict[str, Any]:
    """Overheads over Ray simulation, and over the floor of the same poll interval."""
    by_name = {r["run"]: r for r in runs}
    sim = by_name["fedbuff-ray-simulation"]["steady_seconds_per_version"]
    default = [f["median_round_trip_s"] for f in floors if f["poll_interval"] is None]
    fast = [f["median_round_trip_s"] for f in floors if f["poll_interval"] is not None]
    floor_s = {
        "default-poll": statistics.median(x for x in default if x is not None),
        f"poll-{fast_poll:g}": statistics.median(x for x in fast if x is not None),
    }
    overhead: dict[str, float] = {}
    ratio: dict[str, float] = {}
    for r in runs:
        if r["run"] == "fedbuff-ray-simulation":
            continue
        overhead[r["run"]] = r["steady_seconds_per_version"] - sim
        floor = floor_s[
            "default-poll" if r["poll_interval"] is None else f"poll-{fast_poll:g}"
        ]
        ratio[r["run"]] = overhead[r["run"]] / floor
    return {
        "floor_s": floor_s,
        "overhead_s_per_version": overhead,
        "overhead_over_floor": ratio,
    }


def _async_runs(
    args: argparse.Namespace,
    work: Path,
    base: dict[str, ConfigValue],
    cache: Path,
) -> dict[str, Any]:
    """FedAvg and FedBuff with one node slowed: the async gain deployed."""
    slowed = [1.0, 1.0, args.slowdown]
    out: list[dict[str, Any]] = []
    for name, extra in (
        ("fedavg-slowed", {"strategy": "fedavg"}),
        ("fedbuff-slowed", {"queued-dispatch": True}),
    ):
        before = load()
        path = deployed(work, name, APP_DIR, {**base, **extra}, slowed, None, cache)
        row = summary(name, _timeline(path), args.versions, args.target)
        row.update(load_before=before, load_after=load())
        out.append(row)
    fedavg, fedbuff = out
    return {"runs": out, "async_speedup": fedavg["seconds"] / fedbuff["seconds"]}


if __name__ == "__main__":
    main()

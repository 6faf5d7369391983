"""Loopback deployment: async gain over FedAvg with a slowed SuperNode, and the
cost of the real runtime against Ray simulation.

Setting: a real SuperLink (TLS, SuperNode authentication) and three trainer
SuperNodes on 127.0.0.1 (:class:`flchain_flwr.deploy.LoopbackFederation`), the
flchain_cnn app on scikit-learn's digits (no download), ``--versions`` global
versions per run. One SuperNode is slowed ``--slowdown`` times (node config
``compute-slowdown``: it sleeps for the extra time after training). Runs, one
after another, each in a fresh federation:

1. Flower's FedAvg (all three nodes every round), slowed node;
2. FedBuff with K = 2, slowed node;
3. FedBuff with K = 2, no node slowed;
4. the same as 3 in Ray simulation (``flwr run`` with three simulated nodes).

Times are the ServerApp's own clock at each version's evaluation (start-up not
included). The deployment's overhead is the extra seconds per version of run 3
over run 4 in steady state (versions 1 to N, leaving out process start-up).
Beside the headline, the time to ``--target`` accuracy, FedAvg over FedBuff.
JSON to benchmarks/results/deployment.json; last line
``deployment async speedup: <FedAvg time / FedBuff time>`` (runs 1 and 2, equal
versions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import APP_DIR, RESULTS, write_results

from flchain_flwr.deploy import LoopbackFederation
from flchain_flwr.deploy.loopback import ConfigValue
from flchain_flwr.sim import app_run_config
from flchain_flwr.sim.local_run import flwr_run_local

# FedBuff's settings when the published results were measured (its defaults
# then, changed since), as run-config keys. The app's own max-staleness (50) is
# the one they used. Flower refuses keys the app's pyproject does not declare,
# so only declared keys are passed; the others are reported as not pinned.
PUBLISHED_FEDBUFF: dict[str, ConfigValue] = {
    "fraction-evaluate": 0.0,  # published results: no federated evaluation
    "evaluate-every": 1,  # published results' default (unused at fraction 0)
    "example-weighting": "claimed",  # published results: claimed example counts
    "scheduling": "shuffle",  # published results: seeded shuffle of free nodes
    "state-rule": "delta",  # published results' rule (the CNN has no state arrays)
}


def published_fedbuff() -> tuple[dict[str, ConfigValue], list[str]]:
    """The :data:`PUBLISHED_FEDBUFF` keys the app declares, and those it lacks."""
    declared = app_run_config(APP_DIR)
    pinned = {k: v for k, v in PUBLISHED_FEDBUFF.items() if k in declared}
    return pinned, sorted(set(PUBLISHED_FEDBUFF) - set(pinned))


def _timeline(path: Path) -> list[list[float]]:
    return list(json.loads(path.read_text())["timeline"]) if path.exists() else []


def time_to(timeline: list[list[float]], target: float) -> float | None:
    """Seconds until the first version with accuracy >= ``target`` (or None)."""
    return next((t for v, t, a in timeline if v > 0 and a >= target), None)


def summary(
    name: str, timeline: list[list[float]], versions: int, target: float
) -> dict[str, Any]:
    """One run's figures from its ``[version, seconds, accuracy]`` timeline.

    ``steady_seconds_per_version`` leaves out the first version, which also
    pays for starting processes (Ray's actors, the first ClientApps)."""
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


def derived(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The headline ratios from the runs."""
    by_name = {r["run"]: r for r in runs}
    fedavg, fedbuff = by_name["fedavg-slowed"], by_name["fedbuff-slowed"]
    key = f"seconds_to_{target:g}"
    to_target = (
        fedavg[key] / fedbuff[key] if fedavg[key] is not None and fedbuff[key] else None
    )
    return {
        "async_speedup": fedavg["seconds"] / fedbuff["seconds"],
        f"async_speedup_to_{target:g}": to_target,
        "deployment_over_simulation_s_per_version": (
            by_name["fedbuff-uniform"]["steady_seconds_per_version"]
            - by_name["fedbuff-ray-simulation"]["steady_seconds_per_version"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=6)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=RESULTS / "deployment.json")
    args = parser.parse_args()

    base: dict[str, ConfigValue] = {
        "num-server-rounds": args.versions,
        "local-epochs": args.local_epochs,
        "min-nodes": 3,
        "message-ttl": 300.0,
    }
    pinned, unpinned = published_fedbuff()
    if unpinned:
        print(
            "deployment: the app's run config has no key for "
            f"{', '.join(unpinned)}: FedBuff runs with its current defaults there, "
            "not the published results' settings",
            file=sys.stderr,
        )
    fedbuff: dict[str, ConfigValue] = {
        "strategy": "fedbuff",
        "buffer-size": 2,
        **pinned,
    }
    plans: list[tuple[str, dict[str, ConfigValue], float]] = [
        ("fedavg-slowed", {"strategy": "fedavg"}, args.slowdown),
        ("fedbuff-slowed", fedbuff, args.slowdown),
        ("fedbuff-uniform", fedbuff, 1.0),
    ]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flchain-deploy-") as tmp:
        work = Path(tmp)
        for name, extra, slowdown in plans:
            # a fresh federation per run: no node left over from the last one
            with LoopbackFederation(work / name) as fed:
                fed.start_superlink()
                nodes = [
                    fed.start_supernode(
                        f"trainer-{pid}",
                        {
                            "partition-id": pid,
                            "num-partitions": 3,
                            "compute-slowdown": slowdown if pid == 2 else 1.0,
                        },
                    )
                    for pid in range(3)
                ]
                fed.wait_online([n.node_id for n in nodes if n.node_id is not None])
                results = work / f"{name}.json"
                process = fed.start_run(
                    APP_DIR, {**base, **extra, "results-path": str(results)}
                )
                process.wait(timeout=3600)
            runs.append(summary(name, _timeline(results), args.versions, args.target))
            print(name, f"{runs[-1]['seconds']:.1f}s", flush=True)
        sim_results = work / "sim.json"
        flwr_run_local(
            APP_DIR,
            flwr_home=work / "sim-home",
            num_supernodes=3,
            run_config={**base, **fedbuff, "results-path": str(sim_results)},
            timeout=3600,
        )
        runs.append(
            summary(
                "fedbuff-ray-simulation",
                _timeline(sim_results),
                args.versions,
                args.target,
            )
        )

    figures = derived(runs, args.target)
    write_results(
        args.out,
        "deployment",
        args,
        headline=("deployment async speedup", figures["async_speedup"]),
        runs=runs,
        **figures,
        unpinned_published_settings=unpinned,
        note=(
            "Loopback on one 2-core machine: SuperLink, SuperNodes and their "
            "ClientApp processes share the CPU (with whatever else runs there)."
        ),
    )
    for r in runs:
        print(
            f"{r['run']:>24}: {r['versions']} versions in {r['seconds']:.1f}s "
            f"({r['steady_seconds_per_version']:.1f}s each after the first), "
            f"accuracy {r['final_accuracy']:.3f}"
        )
    overhead = figures["deployment_over_simulation_s_per_version"]
    print(f"deployment extra seconds per version over Ray simulation: {overhead:.1f}")
    to_target = figures[f"async_speedup_to_{args.target:g}"]
    print(f"time to {args.target:g} accuracy, FedAvg / FedBuff: {to_target}")
    print(f"deployment async speedup: {figures['async_speedup']:.2f}")


if __name__ == "__main__":
    main()

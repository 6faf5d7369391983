"""End-to-end loopback deployment with faults: the scenario CI runs.

On 127.0.0.1 only, under a work directory:

1. throwaway TLS certificates and SuperNode keys; a SuperLink with TLS and
   SuperNode authentication;
2. a SuperNode whose key was never registered is started and must be refused;
3. trainer SuperNodes (each its own partition and device profile) and verifier
   SuperNodes (``role="verifier"``, each its own Ed25519 key and trusted shard)
   are registered and started;
4. ``flwr run`` runs the app with FedBuff, the DGC mod, the remote PoV committee
   and a ledger for a fixed number of versions;
5. after the first block one trainer is killed with SIGKILL and a replacement
   (a new registered key, the same partition) is started; the run must finish,
   record the dead node, and give the replacement work. At the same moment the
   verifier SuperNode that leads the next block's view 0 (drawn from the head's
   hash) is killed with SIGKILL: that block must be written at a later view,
   every later block it would have led too, and the chain must verify;
6. the ledger is verified with the ``flchain`` CLI;
7. every process started is stopped by PID, also when a step fails.

Command line::

    python -m flchain_flwr.deploy.e2e --app apps/flchain_cnn --workdir /tmp/e2e

It prints a JSON report and exits 0 only if every check passed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from ..configvalues import ConfigValue
from ..ledger.consensus import block_view, select_committee
from ..ledger.keys import load_or_create_key
from ..ledger.sqlfile import connect
from .loopback import LoopbackFederation
from .scenario import Report, blocks_written, flchain, in_federation, scenario_main


def _chain(ledger: Path) -> list[tuple[int, str, str, int | None]]:
    """(height, hash, previous hash, view) of each block written so far."""
    if not ledger.exists():
        return []
    try:
        with closing(connect(ledger, read_only=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT height, hash, header, body FROM blocks ORDER BY height"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [
        (
            int(h),
            str(digest),
            json.loads(header)["prev_hash"],
            block_view(json.loads(body)),
        )
        for h, digest, header, body in rows
    ]


def led_past(
    chain: list[tuple[int, str, str, int | None]],
    pool: list[str],
    dead: str,
    after: int,
) -> list[tuple[int, int | None]]:
    """(height, view) of each block above ``after`` whose view-0 leader is the
    ``dead`` key: each must have been written at a later view."""
    return [
        (height, view)
        for height, _, prev, view in chain
        if height > after and select_committee(pool, prev, len(pool), 0)[0] == dead
    ]


def _wait(condition: Any, timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


# pylint: disable=too-many-arguments,too-many-locals,too-many-statements
def run_scenario(
    app_dir: Path,
    workdir: Path,
    *,
    trainers: int = 3,
    verifiers: int = 4,
    versions: int = 5,
    slow_factor: float = 2.0,
    run_timeout: float = 900.0,
) -> Report:
    """Run the scenario (see the module docstring); never raises."""
    report = Report()
    ledger = workdir / "ledger.db"
    results = workdir / "results.json"
    run_config: dict[str, ConfigValue] = {
        "num-server-rounds": versions,
        "buffer-size": 2,
        "local-epochs": 1,
        "dgc-density": 0.1,
        "pov-remote-verifiers": verifiers,
        "pov-committee-size": verifiers,
        "pov-tolerance": 0.1,
        "pov-trusted-examples": 50,  # digits' test set is small
        "ledger-path": str(ledger),
        "results-path": str(results),
        "message-ttl": 90.0,
        "min-nodes": trainers,
    }
    report.facts["run_config"] = run_config

    def steps(fed: LoopbackFederation) -> None:
        report.facts["superlink_port"] = fed.port

        intruder = fed.start_supernode(
            "unregistered",
            {"partition-id": 0, "num-partitions": trainers},
            register=False,
            max_retries=2,
        )
        _wait(lambda: intruder.process.poll() is not None, 90, "the refusal")
        report.facts["unregistered_exit_code"] = intruder.process.returncode
        report.check(
            "unregistered SuperNode refused",
            intruder.process.returncode != 0
            and "No SuperNode found with the given public key" in fed.superlink_log(),
        )

        started = []
        for pid in range(trainers):
            profile: dict[str, ConfigValue] = {
                "partition-id": pid,
                "num-partitions": trainers,
                "compute-slowdown": slow_factor if pid == trainers - 1 else 1.0,
            }
            started.append(fed.start_supernode(f"trainer-{pid}", profile))
        verifier_keys = []
        for index in range(verifiers):
            key_path = workdir / "verifier-keys" / f"verifier-{index}.key"
            key_path.parent.mkdir(parents=True, exist_ok=True)
            verifier_keys.append(load_or_create_key(key_path).verify_key.encode().hex())
            started.append(
                fed.start_supernode(
                    f"verifier-{index}",
                    {
                        "partition-id": 0,
                        "num-partitions": trainers,
                        "role": "verifier",
                        "verifier-key": str(key_path),
                        "verifier-shard": index,
                    },
                )
            )
        fed.wait_online([n.node_id for n in started if n.node_id is not None])
        report.facts["node_ids"] = {n.name: n.node_id for n in started}

        t0 = time.monotonic()
        run = fed.start_run(app_dir, run_config)
        _wait(
            lambda: blocks_written(ledger) >= 2 or run.poll() is not None,
            run_timeout,
            "the first block",
        )
        if run.poll() is not None:
            raise RuntimeError(
                f"flwr run ended early ({run.returncode}): "
                + (workdir / "run.log").read_text(errors="replace")[-2000:]
            )
        written = _chain(ledger)
        for _ in range(30):  # the writer may hold the database a moment
            if written:
                break
            time.sleep(1.0)
            written = _chain(ledger)
        head_height, head_hash, _, _ = written[-1]
        leader = select_committee(verifier_keys, head_hash, verifiers, 0)[0]
        leader_name = f"verifier-{verifier_keys.index(leader)}"
        victim = fed.nodes["trainer-0"]
        report.facts["killed"] = {
            "node_id": victim.node_id,
            "pids": fed.kill("trainer-0"),
            "leader": leader_name,
            "leader_pids": fed.kill(leader_name),
            "after_height": head_height,
            "at_s": round(time.monotonic() - t0, 1),
        }
        replacement = fed.start_supernode("replacement", victim.node_config)
        report.facts["replacement_node_id"] = replacement.node_id
        run.wait(timeout=run_timeout)
        report.facts["run_seconds"] = round(time.monotonic() - t0, 1)
        report.check("flwr run exit code 0", run.returncode == 0)

        history = json.loads(results.read_text()) if results.exists() else {}
        done = history.get("versions", [])
        report.facts["versions"] = len(done)
        report.facts["stop_reason"] = history.get("stop_reason")
        report.facts["failures"] = history.get("failures", [])
        report.facts["participation"] = history.get("participation", {})
        report.facts["timeline"] = history.get("timeline", [])
        report.check("all versions made", len(done) == versions)
        failed = {f["node_id"] for f in history.get("failures", [])}
        report.check("dead node recorded", victim.node_id in failed)
        # Its replies reached the server: aggregated, or judged and rejected by
        # the PoV committee (which, with one of four verifiers dead, needs all
        # three live ones to approve; a late joiner's one or two updates on this
        # tiny model are often rejected, which is the committee's call).
        judged = {r.get("node_id") for r in history.get("rejected", [])}
        report.check(
            "replacement got work",
            str(replacement.node_id) in history.get("participation", {})
            or replacement.node_id in judged,
        )
        decisions = history.get("committee_decisions", [])
        report.facts["committee_decisions"] = len(decisions)
        report.check(
            "remote verifiers voted on every block",
            len(decisions) >= versions
            and all(set(d["committee"]) <= set(verifier_keys) for d in decisions),
        )
        passed_over = led_past(_chain(ledger), verifier_keys, leader, head_height)
        report.facts["blocks_the_dead_leader_would_have_led"] = passed_over
        report.check(
            "killed leader passed over by a view change",
            bool(passed_over) and all((v or 0) > 0 for _, v in passed_over),
        )
        verify = flchain(fed, "ledger", "verify", str(ledger))
        report.facts["ledger_verify"] = verify.stdout.strip().splitlines()[-3:]
        report.check("ledger verifies", verify.returncode == 0)

    return in_federation(workdir, report, steps)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return scenario_main(
        argv,
        __doc__,
        ".e2e",
        "e2e.json",
        lambda args: run_scenario(
            args.app.resolve(), args.workdir.resolve(), versions=args.versions
        ),
        versions=5,
    )


if __name__ == "__main__":
    sys.exit(main())

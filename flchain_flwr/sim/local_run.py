"""Run a Flower App with ``flwr run`` in Ray simulation, and clean up after it.

``flwr run`` against the default local connection starts a detached local
SuperLink (plus its SuperExec) that keeps running after the run. This helper gives
the run a project-local ``FLWR_HOME`` and its own free loopback ports, switches off
runtime dependency installation, and afterwards stops exactly the processes that
belong to that ``FLWR_HOME``, by PID.

Command line (used by ``make run``)::

    python -m flchain_flwr.sim.local_run apps/flchain_cnn --num-supernodes 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..configvalues import ConfigValue
from ..deploy.loopback import config_arg
from ..deploy.processes import descendants, free_port, stop_processes


@dataclass(frozen=True)
class LocalRun:
    """Outcome of one ``flwr run``: exit code, combined output, stopped PIDs."""

    returncode: int
    output: str
    stopped_pids: list[int]


def processes_of(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink started under ``flwr_home`` and its helpers.

    The SuperLink is recognised by its ``--database`` inside ``flwr_home``; its
    SuperExec and simulation processes by ``--parent-pid`` pointing at it (or at
    each other).
    """
    home = str(flwr_home.resolve())
    links = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid == os.getpid():
            continue
        # process_iter leaves a command line it may not read as None.
        argv: list[str] = process.info["cmdline"] or []
        if any(a == home or a.startswith(home + os.sep) for a in argv) and any(
            "flower-superlink" in a for a in argv
        ):
            links.append(process.pid)
    return descendants(links) if links else []


# pylint: disable=too-many-arguments
def flwr_run_local(
    app_dir: str | Path,
    *,
    flwr_home: str | Path,
    num_supernodes: int = 10,
    run_config: Mapping[str, ConfigValue] | str | None = None,
    timeout: float = 600.0,
    stream_to: int | None = None,
) -> LocalRun:
    """Run ``flwr run <app_dir> --stream`` in Ray simulation and clean up.

    Parameters
    ----------
    app_dir : path
        The Flower App (directory with its pyproject.toml).
    flwr_home : path
        A directory of this project's; it holds Flower's config and local SuperLink.
    num_supernodes : int
        Simulated SuperNodes; each gets one CPU and the Ray pool gets them all.
    run_config : mapping or str, optional
        ``--run-config`` overrides: a mapping, or flwr's own ``"k1=v1 k2=v2"`` form
        (TOML values) passed through unchanged.
    timeout : float
        Seconds before ``flwr run`` is stopped.
    stream_to : int, optional
        File descriptor to copy output to while it runs (e.g. 1 for stdout).
    """
    home = Path(flwr_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        RAY_DISABLE_USAGE_STATS="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        # flwr launches flower-superlink from PATH: use this interpreter's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    flwr = Path(sys.executable).with_name("flwr")
    command = [
        str(flwr) if flwr.exists() else "flwr",
        "run",
        str(app_dir),
        "--stream",
        "--federation-config",
        f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
        f"init-args-num-cpus={num_supernodes}",
    ]
    if isinstance(run_config, str):
        command += ["--run-config", run_config]
    elif run_config:
        command += [
            "--run-config",
            config_arg(run_config),
        ]
    lines: list[str] = []
    try:
        with subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            watchdog = threading.Timer(timeout, proc.kill)
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line)
                    if stream_to is not None:
                        os.write(stream_to, line.encode())
                returncode = proc.wait()
            finally:
                watchdog.cancel()
            if returncode < 0:
                lines.append(f"flwr run was stopped after {timeout:g}s\n")
    finally:
        pids = processes_of(home)
        stop_processes(pids)
    return LocalRun(returncode, "".join(lines), pids)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app_dir")
    parser.add_argument("--flwr-home", default=".flwr")
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--run-config",
        default="",
        help="passed to flwr run: 'k1=v1 k2=v2', TOML values",
    )
    args = parser.parse_args(argv)
    run = flwr_run_local(
        args.app_dir,
        flwr_home=args.flwr_home,
        num_supernodes=args.num_supernodes,
        run_config=args.run_config or None,
        timeout=args.timeout,
        stream_to=1,
    )
    print(
        f"flwr run exited with {run.returncode}; stopped local SuperLink PIDs "
        f"{run.stopped_pids}"
    )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())

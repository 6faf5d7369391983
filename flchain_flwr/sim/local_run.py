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
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ConfigValue = int | float | str | bool


@dataclass(frozen=True)
class LocalRun:
    """Outcome of one ``flwr run``: exit code, combined output, stopped PIDs."""

    returncode: int
    output: str
    stopped_pids: list[int]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_of(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink started under ``flwr_home`` and its helpers.

    The SuperLink is recognised by its ``--database`` inside ``flwr_home``; its
    SuperExec and simulation processes by ``--parent-pid`` pointing at it (or at
    each other).
    """
    home = str(flwr_home.resolve())
    table = {
        int(p.name): _cmdline(int(p.name))
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
    }
    ours = {
        pid
        for pid, argv in table.items()
        if any(arg.startswith(home) for arg in argv)
        and pid != os.getpid()
        and any("flower-superlink" in arg for arg in argv)
    }
    grew = True
    while grew:
        grew = False
        for pid, argv in table.items():
            if pid in ours or "--parent-pid" not in argv:
                continue
            index = argv.index("--parent-pid")
            if (
                index + 1 < len(argv)
                and argv[index + 1].isdigit()
                and int(argv[index + 1]) in ours
            ):
                ours.add(pid)
                grew = True
    return sorted(ours)


def stop_processes(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` seconds, then SIGKILL the rest."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _is_running(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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
            " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items()),
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

"""Find and stop the processes we started, by PID, and nothing else.

Flower's long-running processes start helpers: a SuperLink or SuperNode starts
a SuperExec with ``--parent-pid <its PID>``, which starts ServerApp/ClientApp
processes. :func:`descendants` follows both the parent PIDs the kernel reports
and those ``--parent-pid`` arguments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every process started under them (kernel parent or
    ``--parent-pid``), sorted."""
    ours = set(roots)
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            argv = cmdline(pid)
            named = None
            if "--parent-pid" in argv:
                index = argv.index("--parent-pid")
                if index + 1 < len(argv) and argv[index + 1].isdigit():
                    named = int(argv[index + 1])
            table[pid] = (_parent(pid), named)
    grew = True
    while grew:
        grew = False
        for pid, (parent, named) in table.items():
            if pid not in ours and (parent in ours or named in ours):
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
        alive = [pid for pid in alive if is_running(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

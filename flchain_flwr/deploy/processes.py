"""Find and stop the processes we started, by PID, and nothing else.

Flower's long-running processes start helpers: a SuperLink or SuperNode starts
a SuperExec with ``--parent-pid <its PID>``, which starts ServerApp/ClientApp
processes. :func:`descendants` follows both the parent PIDs the operating system
reports and those ``--parent-pid`` arguments.

Process tables, command lines and zombie states come from psutil, so this works
on Linux and macOS alike.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] if it is gone, a zombie or not readable)."""
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:  # NoSuchProcess, ZombieProcess, AccessDenied
        return []


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _named_parent(argv: Sequence[str]) -> int | None:
    """The PID in a ``--parent-pid N`` (or ``--parent-pid=N``) argument."""
    for index, arg in enumerate(argv):
        value = None
        if arg == "--parent-pid" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--parent-pid="):
            value = arg.partition("=")[2]
        if value is not None and value.isascii() and value.isdigit():
            return int(value)
    return None


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every process started under them (OS parent or
    ``--parent-pid``), sorted."""
    ours = set(roots)
    table: dict[int, tuple[int | None, int | None]] = {}
    for process in psutil.process_iter(["ppid", "cmdline"]):
        # process_iter leaves an attribute it may not read as None.
        argv = process.info["cmdline"] or []
        table[process.pid] = (process.info["ppid"], _named_parent(argv))
    grew = True
    while grew:
        grew = False
        for pid, (parent, named) in table.items():
            if pid not in ours and (parent in ours or named in ours):
                ours.add(pid)
                grew = True
    return sorted(ours)


def stop_processes(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` seconds, then SIGKILL the rest.

    A PID that is gone is skipped. Each process is signalled through a psutil
    handle taken before the first signal, which refuses to signal a different
    process that has reused the PID meanwhile. Zombies count as stopped: their
    parent reaps them.
    """
    handles: list[psutil.Process] = []
    for pid in pids:
        try:
            handles.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for handle in handles:
        try:
            handle.terminate()  # SIGTERM
        except psutil.NoSuchProcess:
            continue
    deadline = time.monotonic() + grace
    alive = [handle for handle in handles if _alive(handle)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [handle for handle in alive if _alive(handle)]
    for handle in alive:
        try:
            handle.kill()  # SIGKILL
        except psutil.NoSuchProcess:
            continue


def _alive(handle: psutil.Process) -> bool:
    """Whether the process behind ``handle`` still runs (gone, reused PID or
    zombie: no)."""
    try:
        return handle.is_running() and handle.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

"""A real Flower deployment on 127.0.0.1: SuperLink, SuperNodes, ``flwr run``.

Everything is Flower's own runtime and security: the SuperLink runs with TLS and
``--enable-supernode-auth``, SuperNodes are registered with ``flwr supernode
register`` and authenticate with their private keys. :class:`LoopbackFederation`
starts each process itself, keeps its PID, and stops exactly those processes
(and what they started) when it exits, also after an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from ..configvalues import ConfigValue
from .credentials import NodeKey, TLSFiles, make_node_key, make_tls
from .processes import descendants, free_port, is_running, stop_processes

CONNECTION = "loopback"
"""The name of this federation's SuperLink in its ``FLWR_HOME/config.toml``."""


def toml_value(value: ConfigValue) -> str:
    """``value`` as a TOML literal (for ``--node-config`` / ``--run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def config_arg(config: Mapping[str, ConfigValue]) -> str:
    """A mapping as Flower's ``"k1=v1 k2=v2"`` config argument."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


@dataclass
class SuperNode:
    """One SuperNode process this federation started."""

    name: str
    node_id: int | None
    key: NodeKey
    node_config: dict[str, ConfigValue]
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False


@dataclass
class LoopbackFederation:
    """A SuperLink with TLS and SuperNode authentication, plus SuperNodes, all
    on 127.0.0.1 under ``workdir``; a context manager that stops them all.

    Parameters
    ----------
    workdir : Path
        Certificates, keys, logs, the SuperLink's database and ``FLWR_HOME``.
    bin_dir : Path (default: this interpreter's directory)
        Where ``flower-superlink``, ``flower-supernode`` and ``flwr`` are.
    """

    workdir: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    port: int = 0
    tls: TLSFiles | None = None
    superlink: subprocess.Popen[bytes] | None = None
    nodes: dict[str, SuperNode] = field(default_factory=dict)
    _started: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            FLWR_HOME=str(self.home),
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PATH=os.pathsep.join([str(self.bin_dir), self.env.get("PATH", "")]),
        )

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(  # pylint: disable=consider-using-with
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self._started.append(process.pid)
        return process

    def pids(self) -> list[int]:
        """Every live process this federation started, and their helpers."""
        return [p for p in descendants(self._started) if is_running(p)]

    def stop(self) -> list[int]:
        """Stop every process this federation started, by PID; return them."""
        pids = self.pids()
        stop_processes(pids)
        for process in [self.superlink, *(n.process for n in self.nodes.values())]:
            if process is not None and process.poll() is None:
                process.wait(timeout=5)
        return pids

    # -------------------------------------------------------------- SuperLink
    def start_superlink(self, *, timeout: float = 60.0) -> None:
        """Start the SuperLink with TLS and SuperNode authentication; wait for it;
        point ``FLWR_HOME/config.toml`` at it."""
        self.tls = make_tls(self.workdir / "certificates")
        self.port = free_port()
        self.superlink = self._spawn(
            [
                str(self.bin_dir / "flower-superlink"),
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.workdir / "superlink.db"),
                "--disable-runtime-dependency-installation",
            ],
            self.workdir / "superlink.log",
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.tls.ca_cert}"\n'
        )
        deadline = time.monotonic() + timeout
        while "Uvicorn running on https" not in self.superlink_log():
            if self.superlink.poll() is not None:
                raise RuntimeError(
                    f"the SuperLink exited with {self.superlink.returncode}:\n"
                    + self.superlink_log()[-2000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SuperLink did not start in {timeout:g}s")
            time.sleep(0.3)

    def superlink_log(self) -> str:
        """The SuperLink's log so far."""
        path = self.workdir / "superlink.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def flwr(
        self, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this federation."""
        return subprocess.run(
            [str(self.bin_dir / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # ------------------------------------------------------------- SuperNodes
    def new_key(self, name: str) -> NodeKey:
        """A fresh SuperNode key pair (not registered yet)."""
        return make_node_key(self.workdir / "keys", name)

    def register(self, key: NodeKey) -> int:
        """Register a SuperNode's public key with the SuperLink; its node ID."""
        done = self.flwr(
            "supernode", "register", str(key.public), CONNECTION, "--format", "json"
        )
        try:
            return int(json.loads(done.stdout)["node-id"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(
                f"flwr supernode register failed ({done.returncode}): "
                f"{done.stdout[-1000:]} {done.stderr[-1000:]}"
            ) from exc

    def node_status(self) -> dict[int, str]:
        """``{node ID: status}`` as the SuperLink reports it (registered,
        online, offline...)."""
        done = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            nodes = json.loads(done.stdout)["nodes"]
        except (ValueError, KeyError) as exc:
            raise RuntimeError(
                f"flwr supernode list failed: {done.stdout[-1000:]}"
            ) from exc
        return {int(n["node-id"]): str(n["status"]) for n in nodes}

    def start_supernode(
        self,
        name: str,
        node_config: Mapping[str, ConfigValue],
        *,
        key: NodeKey | None = None,
        register: bool = True,
        max_retries: int | None = None,
    ) -> SuperNode:
        """Start a SuperNode that connects over TLS and authenticates with its
        key (a new one, registered first unless ``register`` is False)."""
        if self.tls is None:
            raise RuntimeError("start the SuperLink first")
        key = key or self.new_key(name)
        node_id = self.register(key) if register else None
        argv = [
            str(self.bin_dir / "flower-supernode"),
            "--root-certificates",
            str(self.tls.ca_cert),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--auth-supernode-private-key",
            str(key.private),
            "--node-config",
            config_arg(node_config),
        ]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        log = self.workdir / f"supernode-{name}.log"
        node = SuperNode(
            name, node_id, key, dict(node_config), self._spawn(argv, log), log
        )
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> list[int]:
        """SIGKILL a SuperNode and everything it started (a device that dies)."""
        node = self.nodes[name]
        pids = [p for p in descendants([node.process.pid]) if is_running(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.process.wait(timeout=10)
        node.killed = True
        return pids

    def wait_online(self, node_ids: list[int], timeout: float = 60.0) -> None:
        """Wait until the SuperLink reports all ``node_ids`` online."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.node_status()
            if all(status.get(n) == "online" for n in node_ids):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not online after {timeout:g}s: {status}")
            time.sleep(1.0)

    # -------------------------------------------------------------------- runs
    def start_run(
        self,
        app_dir: Path,
        run_config: Mapping[str, ConfigValue],
        output: IO[str] | None = None,
    ) -> subprocess.Popen[str]:
        """``flwr run <app_dir> loopback --stream`` with ``run_config``; returns
        the CLI process (its output goes to ``output`` or ``run.log``)."""
        log = output or (self.workdir / "run.log").open("a")
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            [
                str(self.bin_dir / "flwr"),
                "run",
                str(app_dir),
                CONNECTION,
                "--stream",
                "--run-config",
                config_arg(run_config),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._started.append(process.pid)
        return process

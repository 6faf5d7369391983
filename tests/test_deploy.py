"""Deployment: throwaway credentials, process bookkeeping, and the end-to-end
loopback scenario (real SuperLink and SuperNodes with TLS and node auth)."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from flchain_flwr.deploy import make_node_key, make_tls
from flchain_flwr.deploy.e2e import led_past, run_scenario
from flchain_flwr.deploy.loopback import config_arg
from flchain_flwr.deploy.processes import (
    cmdline,
    descendants,
    is_running,
    stop_processes,
)
from flchain_flwr.ledger.consensus import select_committee
from flchain_flwr.sim.local_run import processes_of

APP = Path(__file__).resolve().parent.parent / "apps" / "flchain_cnn"


def test_tls_files_chain_to_the_ca_and_name_loopback(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    ca_key = ca.public_key()
    assert hasattr(ca_key, "verify")
    ca_key.verify(  # raises if the server certificate was not signed by the CA
        server.signature,
        server.tbs_certificate_bytes,
        padding.PKCS1v15(),
        server.signature_hash_algorithm,  # type: ignore[arg-type]
    )
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "localhost" in names.value.get_values_for_type(x509.DNSName)
    loopback = ipaddress.ip_address("127.0.0.1")
    assert loopback in names.value.get_values_for_type(x509.IPAddress)
    assert tls.server_key.stat().st_mode & 0o777 == 0o600


def test_node_keys_are_openssh_ecdsa_p384(tmp_path: Path) -> None:
    pair = make_node_key(tmp_path, "node")
    private = load_ssh_private_key(pair.private.read_bytes(), password=None)
    public = load_ssh_public_key(pair.public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_config_arg_quotes_strings_for_flower() -> None:
    arg = config_arg({"a": 1, "b": 0.5, "c": True, "d": 'x "y"', "e": "/p q"})
    assert arg == 'a=1 b=0.5 c=true d="x \\"y\\"" e="/p q"'


def test_descendants_follow_parent_pid_arguments_and_stop_by_pid() -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # a helper that names its parent the way Flower's SuperExec does
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "--parent-pid",
            str(parent.pid),
        ]
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert descendants([parent.pid]) == sorted([parent.pid, helper.pid])
        stop_processes(descendants([parent.pid]), grace=5)
        parent.wait(5)
        helper.wait(5)
        assert not is_running(parent.pid) and not is_running(helper.pid)
        assert is_running(other.pid)  # not ours: untouched
    finally:
        for process in (parent, helper, other):
            process.kill()
            process.wait()


SLEEP = "import time; time.sleep(60)"
READY_SLEEP = "import time; print('ready', flush=True); time.sleep(60)"

# Starts a child of its own, prints the child's PID, then sleeps.
SPAWNER = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {SLEEP!r}])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)

# Ignores SIGTERM, says so, then sleeps: only SIGKILL stops it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _started(*argv: str) -> subprocess.Popen[str]:
    """A ``SLEEP`` child with ``argv`` after its script, once it runs: its
    argv is only certain to be readable after it says so."""
    process = subprocess.Popen(
        [sys.executable, "-c", READY_SLEEP, *argv], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _wait_stopped(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` stops running (gone or a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.1)
    return False


def test_descendants_follow_os_parents_and_stop_grandchildren() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    try:
        assert is_running(grandchild)
        assert descendants([parent.pid]) == sorted([parent.pid, grandchild])
        assert os.getpid() not in descendants([parent.pid])  # never upwards
        stop_processes(descendants([parent.pid]), grace=5)
        assert parent.wait(5) == -signal.SIGTERM  # SIGTERM was enough
        assert _wait_stopped(grandchild)
    finally:
        parent.kill()
        parent.wait()
        if is_running(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_stop_processes_sigkills_what_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True
    )
    assert stubborn.stdout is not None
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        started = time.monotonic()
        stop_processes([stubborn.pid], grace=1.0)
        assert time.monotonic() - started >= 1.0  # it waited the grace period
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


def test_cmdline_and_is_running_see_zombies_and_gone_processes() -> None:
    process = _started("flchain-marker")
    try:
        assert cmdline(process.pid)[-1] == "flchain-marker"
        assert is_running(process.pid)
        process.kill()
        # Not reaped yet: a zombie, which counts as stopped.
        assert _wait_stopped(process.pid)
        assert cmdline(process.pid) == []
        stop_processes([process.pid], grace=1.0)  # a zombie: nothing to do
    finally:
        process.kill()
        process.wait()
    # Reaped: the PID is gone; stopping it is a no-op.
    assert not is_running(process.pid)
    assert cmdline(process.pid) == []
    stop_processes([process.pid], grace=1.0)


def test_processes_of_finds_the_local_superlink_of_one_flwr_home(
    tmp_path: Path,
) -> None:
    """``flwr run``'s local SuperLink is found by its ``--database`` inside our
    FLWR_HOME, with its ``--parent-pid`` helper; another home's is left alone."""
    home, elsewhere = tmp_path / "home", tmp_path / "home2"  # a prefix: not ours

    def superlink(flwr_home: Path) -> subprocess.Popen[str]:
        return _started("flower-superlink", "--database", str(flwr_home / "state.db"))

    ours, theirs = superlink(home), superlink(elsewhere)
    helper = _started("flwr-serverapp", "--parent-pid", str(ours.pid))
    try:
        assert processes_of(home) == sorted([ours.pid, helper.pid])
        assert processes_of(elsewhere) == [theirs.pid]
        assert processes_of(tmp_path / "nobody") == []
    finally:
        for process in (ours, theirs, helper):
            process.kill()
            process.wait()


@pytest.mark.e2e
def test_end_to_end_loopback_deployment_with_faults(tmp_path: Path) -> None:
    """The whole scenario of flchain_flwr.deploy.e2e: TLS, node auth, an
    unregistered node refused, remote PoV verifiers, DGC, a ledger, a SIGKILLed
    trainer and its replacement, CLI verification, every process stopped."""
    report = run_scenario(APP, tmp_path, versions=5)
    assert report.error == "", report.as_dict()
    assert report.ok, report.as_dict()
    assert report.facts["stopped_pids"]
    assert not [p for p in report.facts["stopped_pids"] if is_running(p)]


def test_blocks_a_dead_leader_would_have_led_are_those_its_draw_names() -> None:
    pool = [bytes([i]).hex() * 32 for i in range(1, 5)]
    prevs = [bytes([i]).hex() * 32 for i in range(10, 40)]
    dead = select_committee(pool, prevs[0], len(pool), 0)[0]
    chain = [(h + 1, "ab" * 32, prev, h % 3) for h, prev in enumerate(prevs)]
    led = led_past(chain, pool, dead, after=0)
    heights = {h for h, _ in led}
    assert 1 in heights and 0 < len(heights) < len(chain)  # both kinds occur
    for height, _, prev, view in chain:
        leader = select_committee(pool, prev, len(pool), 0)[0]
        assert (height in heights) == (leader == dead)
        if height in heights:
            assert (height, view) in led  # the view is reported as written
    assert led_past(chain, pool, dead, after=1) == [x for x in led if x[0] > 1]

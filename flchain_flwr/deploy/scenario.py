"""What the loopback scenarios (:mod:`.e2e`, :mod:`.e2e_anchor`) share.

A scenario runs its steps in a :class:`~.loopback.LoopbackFederation`,
records checks and facts in a :class:`Report`, and always stops every
process it started; its command line prints the report as JSON and exits 0
only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.sqlfile import connect
from .loopback import LoopbackFederation


@dataclass
class Report:
    """What the scenario saw; ``ok`` iff every check passed."""

    checks: dict[str, bool] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values()) and not self.error

    def check(self, name: str, passed: bool) -> bool:
        self.checks[name] = bool(passed)
        return passed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": self.checks,
            "facts": self.facts,
            "error": self.error,
        }


def blocks_written(ledger: Path) -> int:
    """Blocks in a ledger being written (0 before it exists)."""
    if not ledger.exists():
        return 0
    try:
        with closing(connect(ledger, read_only=True, timeout=5)) as db:
            return int(db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])
    except sqlite3.Error:
        return 0


def flchain(fed: LoopbackFederation, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``flchain`` CLI of the federation's environment, run to its end."""
    return subprocess.run(
        [str(fed.bin_dir / "flchain"), *args],
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def in_federation(
    workdir: Path, report: Report, steps: Callable[[LoopbackFederation], None]
) -> Report:
    """Start a SuperLink in ``workdir`` and run ``steps`` on it; what they
    raise becomes ``report.error``, and every process is stopped (their PIDs
    in ``report.facts["stopped_pids"]``)."""
    with LoopbackFederation(workdir) as fed:
        try:
            fed.start_superlink()
            steps(fed)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            report.error = f"{type(exc).__name__}: {exc}"
        finally:
            report.facts["stopped_pids"] = fed.stop()
    return report


def scenario_main(
    argv: list[str] | None,
    doc: str,
    workdir: str,
    report_name: str,
    run: Callable[[argparse.Namespace], Report],
    *,
    versions: int | None = None,
) -> int:
    """A scenario's command line: ``--app``, ``--workdir`` (default
    ``workdir``) and, given a default, ``--versions``; ``run`` gets them. The
    report is printed and written to ``report_name`` in the workdir."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--app", type=Path, default=Path("apps/flchain_cnn"))
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    if versions is not None:
        parser.add_argument("--versions", type=int, default=versions)
    args = parser.parse_args(argv)
    # SIGTERM (e.g. a CI timeout) unwinds normally, so every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(args)
    (args.workdir / report_name).write_text(json.dumps(report.as_dict(), indent=2))
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1

"""What every benchmark shares: where results go, how they are written, and the
check that the data a benchmark needs is there."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flchain_flwr.data import fashion_mnist

RESULTS = Path(__file__).parent / "results"
APP_DIR = Path(__file__).parent.parent / "apps" / "flchain_cnn"
FASHION_MNIST: dict[str, int | float | str | bool] = {
    "dataset": "fashion-mnist",
    "dirichlet-alpha": 0.5,
    "local-epochs": 1,
    "batch-size": 32,
    "lr": 0.05,
}
"""The app's run config for the Fashion-MNIST benchmarks (CNN, Dirichlet 0.5)."""


def write_results(
    path: Path,
    benchmark: str,
    args: argparse.Namespace,
    *,
    headline: tuple[str, float | None],
    **payload: Any,
) -> None:
    """Write ``payload`` as JSON with the benchmark's name, headline
    (``{"label": ..., "value": ...}``, the figure its last line prints; ``None``
    only when a partial run did not measure it), settings and machine."""
    label, value = headline
    document = {
        "benchmark": benchmark,
        "headline": {"label": label, "value": value},
        "settings": {k: _plain(v) for k, v in vars(args).items()},
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))


def _plain(value: Any) -> Any:
    """A setting as JSON holds it: paths (also in lists) as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def require_fashion_mnist() -> None:
    """Exit at once with status 2 and a one-line hint when the Fashion-MNIST IDX
    files are missing (call it first thing in a benchmark that needs them).

    Without it, every ClientApp fails to load its data, the strategy records the
    failures, and the benchmark ends later on an empty result instead.
    """
    if fashion_mnist.local_dir() is not None:
        return
    where = os.environ.get(fashion_mnist.DIR_ENV) or fashion_mnist.DEBIAN_DIR
    print(
        f"{Path(sys.argv[0]).name}: Fashion-MNIST IDX files not found in {where}; "
        "run `make data` (installs Debian's dataset-fashion-mnist) "
        f"or set {fashion_mnist.DIR_ENV}",
        file=sys.stderr,
    )
    raise SystemExit(2)


@contextmanager
def timed(seconds: list[float]) -> Iterator[None]:
    """Append the wall seconds the ``with`` block took to ``seconds`` (also
    when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds.append(time.perf_counter() - started)

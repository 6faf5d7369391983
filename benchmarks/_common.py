"""What every benchmark shares: where results go, and how they are written."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

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
    path: Path, benchmark: str, args: argparse.Namespace, **payload: Any
) -> None:
    """Write ``payload`` as JSON with the benchmark's name, settings and machine."""
    document = {
        "benchmark": benchmark,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))

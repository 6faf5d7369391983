"""Per-version diagnostics for the communication benchmark.

What the run's accuracy curve alone cannot say about a drop: how far the
global model moved (the step's L2 norm), how much unsent update the nodes'
DGC residuals hold, how stale the version's updates were, and how one-sided
the labels of the nodes that made it are (the share of the most common class
among their training examples, and which class that is), and, for a version
below :data:`COLLAPSE` accuracy, which class the model predicts for how much
of the test set.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from flchain_flwr.arrays import NDArrays, to_ndarrays
from flchain_flwr.mods import DGCState
from flchain_flwr.sim import VirtualGrid
from flchain_flwr.strategies import AsyncResult

COLLAPSE = 0.2
"""Accuracy below which a version's predictions are recorded."""


class Probe:
    """Collects, at each evaluation, the step norm and the residual norms;
    ``predict`` gives a model's predicted class per test example."""

    def __init__(
        self, grid: VirtualGrid, predict: Callable[[ArrayRecord], np.ndarray]
    ) -> None:
        self.grid = grid
        self.predict = predict
        self.previous: NDArrays | None = None
        self.rows: list[dict[str, float]] = []

    def observe(self, arrays: ArrayRecord, accuracy: float) -> None:
        """Record the step from the previous version and the nodes' residuals."""
        current = to_ndarrays(arrays)
        step = 0.0
        if self.previous is not None:
            step = _norm({k: current[k] - self.previous[k] for k in current})
        self.previous = current
        norms = [
            _norm(state.residual)
            for context in self.grid.contexts.made.values()
            if (state := DGCState.load(context.state)).residual
        ]
        row = {
            "step_norm": step,
            "model_norm": _norm(current),
            "residual_norm_mean": float(np.mean(norms)) if norms else 0.0,
            "residual_norm_max": max(norms, default=0.0),
        }
        if accuracy < COLLAPSE:
            predicted = np.bincount(self.predict(arrays), minlength=10)
            row["predicted_top_class"] = int(np.argmax(predicted))
            row["predicted_top_share"] = float(predicted.max() / predicted.sum())
        self.rows.append(row)


def _norm(arrays: NDArrays) -> float:
    return float(
        np.sqrt(
            sum(float(np.sum(np.square(v, dtype=np.float64))) for v in arrays.values())
        )
    )


def label_counts(
    grid: VirtualGrid, labels_of: Any, node_ids: list[int]
) -> dict[int, np.ndarray]:
    """Per node: its training examples per class (``labels_of(partition)``)."""
    return {
        n: np.bincount(labels_of(grid.partition_of[n]), minlength=10) for n in node_ids
    }


def per_version(
    result: AsyncResult,
    probe: Probe,
    curve: list[tuple[float, float]],
    counts: dict[int, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per version: accuracy, the probe's norms, staleness, label mix."""
    rows = []
    # curve[0] and probe.rows[0] are the initial model (version 0)
    for index, record in enumerate(result.versions, start=1):
        mix = sum((counts[n] for n in record.node_ids), np.zeros(10, dtype=np.int64))
        stale = record.staleness_histogram
        total = sum(stale.values())
        rows.append(
            {
                "version": record.version,
                "accuracy": curve[index][1] if index < len(curve) else None,
                **(probe.rows[index] if index < len(probe.rows) else {}),
                "nodes": list(record.node_ids),
                "mean_staleness": (
                    sum(int(s) * c for s, c in stale.items()) / total if total else 0.0
                ),
                "top_class": int(np.argmax(mix)),
                "top_class_share": float(mix.max() / max(mix.sum(), 1)),
            }
        )
    return rows


def link_check(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per setting and seed run on more than one link: the bytes per reply and
    per message on each link, and whether the accuracy curves are identical
    (the link sets only simulated time and, through it, arrival order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in sorted({r["setting"] for r in rows}):
        for seed in sorted({r["seed"] for r in rows}):
            mine = [r for r in rows if r["setting"] == name and r["seed"] == seed]
            if len(mine) < 2:
                continue
            curves = [[a for _, a in r["curve"]] for r in mine]
            out.setdefault(name, []).append(
                {
                    "seed": seed,
                    "links": [
                        f"{r['link_mbps']['up']:g}/{r['link_mbps']['down']:g}"
                        for r in mine
                    ],
                    "up_bytes_per_reply": [r["up_bytes_per_reply"] for r in mine],
                    "down_bytes_per_message": [
                        r["down_bytes_per_message"] for r in mine
                    ],
                    "same_accuracy_curve": all(c == curves[0] for c in curves),
                    "same_node_order": (
                        None  # runs made before the diagnostics existed
                        if not all(r.get("diagnostics") for r in mine)
                        else all(_order(r) == _order(mine[0]) for r in mine)
                    ),
                }
            )
    return out


def _order(row: dict[str, Any]) -> list[list[int]]:
    return [d["nodes"] for d in row["diagnostics"]]


def drops(rows: list[dict[str, Any]], points: float = 10.0) -> list[dict[str, Any]]:
    """Every version whose accuracy fell by more than ``points`` from the one
    before, with its step against the run's median step and the residuals."""
    out = []
    for r in rows:
        diagnostics = r.get("diagnostics") or []
        steps = sorted(d["step_norm"] for d in diagnostics if "step_norm" in d)
        if not steps:
            continue
        median = steps[len(steps) // 2]
        for before, d in pairwise(diagnostics):
            if 100 * (before["accuracy"] - d["accuracy"]) > points:
                out.append(
                    {
                        "setting": r["setting"],
                        "seed": r["seed"],
                        "version": d["version"],
                        "accuracy": [before["accuracy"], d["accuracy"]],
                        "step_over_median": d["step_norm"] / median,
                        "residual_norm_max": d["residual_norm_max"],
                        "residual_norm_mean": d["residual_norm_mean"],
                        "model_norm": d["model_norm"],
                    }
                )
    return out

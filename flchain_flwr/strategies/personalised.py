"""Personalised accuracy per node, from the evaluate replies of a run.

With the personalisation mod (:mod:`flchain_flwr.mods.personal`) each evaluate
reply carries ``personal-<name>`` (the node's mix of its local and the global
model) beside ``<name>`` (the global model), and the run keeps each node's
newest evaluation (``AsyncResult.node_evaluations``). This module compares
them per node and logs the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO

from flwr.supercore import log

from .result import AsyncResult

PERSONAL_PREFIX = "personal-"
ACCURACY_METRICS = ("eval-acc", "accuracy")
"""Metric names whose ``personal-`` twin :func:`log_personal` reports."""


def latest_per_node(result: AsyncResult, name: str) -> dict[int, float]:
    """Each node's value of metric ``name`` at the newest version it evaluated
    (nodes whose reply lacks it are left out)."""
    latest: dict[int, float] = {}
    for node, evaluation in result.node_evaluations.items():
        value = evaluation.metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            latest[node] = float(value)
    return latest


@dataclass(frozen=True)
class NodeComparison:
    """One node's last evaluation: the global model's metric and its mix's."""

    node_id: int
    global_value: float
    personal_value: float


def compare_per_node(result: AsyncResult, name: str) -> list[NodeComparison]:
    """Nodes whose last evaluation reported both ``name`` and its personal
    twin, in node order."""
    personal = latest_per_node(result, PERSONAL_PREFIX + name)
    plain = latest_per_node(result, name)
    return [
        NodeComparison(n, plain[n], personal[n])
        for n in sorted(set(personal) & set(plain))
    ]


def log_personal(result: AsyncResult) -> None:
    """Log, per accuracy metric reported with a personal twin, the mean over
    nodes of both and the node whose personalised value is lowest."""
    for name in ACCURACY_METRICS:
        rows = compare_per_node(result, name)
        if not rows:
            continue
        worst = min(rows, key=lambda r: r.personal_value)
        gains = [r.personal_value - r.global_value for r in rows]
        log(
            INFO,
            "Personalised %s over %d nodes (each at its last evaluation): mean "
            "%.4f, global model %.4f; lowest node %d at %.4f (global %.4f); "
            "per-node gain from %+.4f to %+.4f",
            name,
            len(rows),
            sum(r.personal_value for r in rows) / len(rows),
            sum(r.global_value for r in rows) / len(rows),
            worst.node_id,
            worst.personal_value,
            worst.global_value,
            min(gains),
            max(gains),
        )

"""The communication benchmark's diagnostics: accuracy drops and link checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _comms_diag import drops, link_check


def _version(v: int, accuracy: float, step: float) -> dict[str, Any]:
    return {
        "version": v,
        "accuracy": accuracy,
        "step_norm": step,
        "model_norm": 10.0,
        "residual_norm_mean": 1.0,
        "residual_norm_max": 2.0,
        "nodes": [v, v + 1],
    }


def _run(
    link: tuple[float, float], accuracies: list[float], **kw: Any
) -> dict[str, Any]:
    steps = kw.get("steps", [1.0] * len(accuracies))
    return {
        "setting": "dgc up",
        "seed": 0,
        "link_mbps": {"up": link[0], "down": link[1]},
        "curve": [(float(i), a) for i, a in enumerate(accuracies)],
        "up_bytes_per_reply": 10.0,
        "down_bytes_per_message": 100.0,
        "diagnostics": [
            _version(i + 1, a, s)
            for i, (a, s) in enumerate(zip(accuracies, steps, strict=True))
        ]
        if kw.get("diagnostics", True)
        else [],
    }


def test_drops_lists_falls_beyond_the_threshold_with_their_step() -> None:
    run = _run((1, 10), [0.40, 0.45, 0.15, 0.12, 0.30], steps=[1, 1, 4, 1, 2])
    (drop,) = drops([run])
    assert drop["version"] == 3 and drop["accuracy"] == [0.45, 0.15]
    assert drop["step_over_median"] == 4.0  # median step 1
    assert drops([run], points=40.0) == []


def test_link_check_compares_curves_and_order_only_when_recorded() -> None:
    a = _run((1, 10), [0.1, 0.2, 0.3])
    same = _run((5, 50), [0.1, 0.2, 0.3])
    other = _run((5, 50), [0.1, 0.25, 0.3])
    assert link_check([a, same])["dgc up"][0]["same_accuracy_curve"] is True
    assert link_check([a, same])["dgc up"][0]["same_node_order"] is True
    assert link_check([a, other])["dgc up"][0]["same_accuracy_curve"] is False
    old = _run((5, 50), [0.1, 0.2, 0.3], diagnostics=False)
    assert link_check([a, old])["dgc up"][0]["same_node_order"] is None
    assert link_check([a]) == {}  # one link: nothing to compare

"""What a PoV verifier of this app holds, in-process (server) or on a verifier
SuperNode alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from nacl.signing import SigningKey

from flchain_cnn.task import reference_trainer, scorer
from flchain_flwr.pov import ReferenceFn, Rule, Threshold, Verifier

ConfigValue = int | float | str | bool


def app_rule(cfg: Mapping[str, ConfigValue]) -> Rule:
    """The judging rule the ``pov-*`` keys ask for: the server's committee
    names it, and each verifier (in-process or on a node) judges by it."""
    trust = bool(cfg.get("pov-trust-weighting", False))
    if trust and (
        str(cfg["pov-metric"]) != "none" or int(cfg.get("pov-reference-epochs", 0)) <= 0
    ):
        raise ValueError(
            'pov-trust-weighting = true needs pov-metric = "none" and '
            "pov-reference-epochs > 0 (the direction test deciding alone); set "
            "pov-trust-weighting = false to judge by loss or accuracy"
        )
    return Rule(
        Threshold(
            metric=_metric(str(cfg["pov-metric"])),
            value=float(cfg["pov-tolerance"]),
            min_cosine=(
                float(cfg.get("pov-min-cosine", 0.0))
                if int(cfg.get("pov-reference-epochs", 0)) > 0
                else None
            ),
            max_norm_ratio=float(cfg.get("pov-max-norm-ratio", 0.0)) or None,
        ),
        trust_weighting=trust,
    )


def _metric(name: str) -> Literal["accuracy", "loss", "none"]:
    if name not in ("accuracy", "loss", "none"):
        raise ValueError(f"pov-metric must be accuracy, loss or none, not {name!r}")
    return name  # type: ignore[return-value]


def verifier_reference(
    cfg: Mapping[str, ConfigValue], x: np.ndarray, y: np.ndarray, seed: int = 0
) -> ReferenceFn | None:
    """A verifier's reference update on its trusted ``(x, y)``: the clients' own
    training (``lr``, ``batch-size``) for ``pov-reference-epochs`` epochs; None
    when that is 0 (no direction test)."""
    epochs = int(cfg.get("pov-reference-epochs", 0))
    if epochs <= 0:
        return None
    return reference_trainer(
        str(cfg["dataset"]),
        str(cfg.get("model", "default")),
        x,
        y,
        epochs=epochs,
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=seed,
    )


def app_verifier(
    cfg: Mapping[str, ConfigValue],
    x: np.ndarray,
    y: np.ndarray,
    key: SigningKey | None,
    index: int,
) -> Verifier:
    """Verifier ``index`` of this app: it scores models on its trusted ``(x,
    y)`` and, with ``pov-reference-epochs`` > 0, trains its reference there."""
    return Verifier(
        scorer(str(cfg["dataset"]), str(cfg.get("model", "default")), x, y),
        key,
        reference_fn=verifier_reference(cfg, x, y, index),
        seed=index,
        rule=app_rule(cfg),
    )

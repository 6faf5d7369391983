"""What a PoV verifier of this app holds, in-process (server) or on a verifier
SuperNode alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from nacl.signing import SigningKey

from flchain_cnn.settings import app_settings
from flchain_cnn.task import new_model
from flchain_flwr.configvalues import (
    ConfigValue,
    flag_value,
    integer_value,
    number_value,
    parsed_value,
)
from flchain_flwr.pov import ReferenceFn, Rule, Score, ScoreFn, Threshold, Verifier
from flchain_flwr.training import evaluate, train

RULE_OPTIONAL: Mapping[str, ConfigValue] = {
    "pov-trust-weighting": False,
    "pov-reference-epochs": 0,
    "pov-min-cosine": 0.0,
    "pov-max-norm-ratio": 0.0,
}
"""The rule's keys a run config may leave out, and what they then are."""


def app_rule(cfg: Mapping[str, ConfigValue]) -> Rule:
    """The judging rule the ``pov-*`` keys ask for: the server's committee
    names it, and each verifier (in-process or on a node) judges by it. Each
    key is read by its typed reader (a ValueError names a bad one)."""
    cfg = {**RULE_OPTIONAL, **cfg}
    trust = flag_value(cfg, "pov-trust-weighting")
    metric = parsed_value(cfg, "pov-metric", _metric)
    epochs = reference_epochs(cfg)
    if trust and (metric != "none" or epochs <= 0):
        raise ValueError(
            'pov-trust-weighting = true needs pov-metric = "none" and '
            "pov-reference-epochs > 0 (the direction test deciding alone); set "
            "pov-trust-weighting = false to judge by loss or accuracy"
        )
    return Rule(
        Threshold(
            metric=metric,
            value=number_value(cfg, "pov-tolerance", low=0.0),
            min_cosine=(
                number_value(cfg, "pov-min-cosine", low=-1.0, high=1.0, high_open=True)
                if epochs > 0
                else None
            ),
            max_norm_ratio=number_value(cfg, "pov-max-norm-ratio", low=0.0) or None,
        ),
        trust_weighting=trust,
    )


def reference_epochs(cfg: Mapping[str, ConfigValue]) -> int:
    """``pov-reference-epochs`` (0 if absent: no direction test)."""
    return integer_value({**RULE_OPTIONAL, **cfg}, "pov-reference-epochs", minimum=0)


def _metric(name: str) -> Literal["accuracy", "loss", "none"]:
    if name not in ("accuracy", "loss", "none"):
        raise ValueError(f"expected accuracy, loss or none, got {name!r}")
    return name  # type: ignore[return-value]


def scorer(dataset: str, size: str, x: np.ndarray, y: np.ndarray) -> ScoreFn:
    """A PoV verifier's score function: accuracy and loss of a model (named
    arrays) on the trusted examples ``(x, y)``."""
    net = new_model(dataset, 0, size)

    def score(model: dict[str, np.ndarray]) -> Score:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in model.items()})
        loss, accuracy = evaluate(net, x, y)
        return Score(accuracy=accuracy, loss=loss)

    return score


# pylint: disable=too-many-arguments
def reference_trainer(
    dataset: str,
    size: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> ReferenceFn:
    """A PoV verifier's reference update: the clients' own local training
    (:func:`train`, same hyperparameters) from the given model on the trusted
    examples ``(x, y)``; returns trained minus given. Seeded, so the same model
    gives the same reference."""
    net = new_model(dataset, 0, size)

    def reference(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in model.items()})
        train(net, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        trained = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        return {
            k: trained[k].astype(np.float64) - model[k].astype(np.float64)
            for k in model
        }

    return reference


def verifier_reference(
    cfg: Mapping[str, ConfigValue], x: np.ndarray, y: np.ndarray, seed: int = 0
) -> ReferenceFn | None:
    """A verifier's reference update on its trusted ``(x, y)``: the clients' own
    training (``lr``, ``batch-size``) for ``pov-reference-epochs`` epochs; None
    when that is 0 (no direction test)."""
    epochs = reference_epochs(cfg)
    if epochs <= 0:
        return None
    settings = app_settings(cfg)
    return reference_trainer(
        settings.dataset,
        settings.model,
        x,
        y,
        epochs=epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
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
    settings = app_settings(cfg)
    return Verifier(
        scorer(settings.dataset, settings.model, x, y),
        key,
        reference_fn=verifier_reference(cfg, x, y, index),
        seed=index,
        rule=app_rule(cfg),
    )

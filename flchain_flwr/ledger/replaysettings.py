"""The settings a replay reads: a block's recorded config, and the genesis rule.

A FedBuff block's ``config_digest`` names the strategy's settings, recorded in
the genesis block or in the first block after a resume with changed ones;
:class:`Settings` reads from them what a replay needs (the server step's
``server_lr``, ``server_momentum`` and ``state_rule``, the staleness function,
the example and fairness weightings, the work normalisation, the record keys,
trust weighting), and a block whose settings are missing or unusable is not
replayable. A PoV chain's genesis block also records the committee's judging
rule: :func:`rule_weighs_by_trust` says whether it weighs updates by trust,
which a block's settings must then agree with. Only blocks of
:data:`REPLAYABLE_STRATEGY` are replayed; of :data:`~.wrapper.POV_WRAPPER`'s,
:class:`WrappedSettings` reads what checking their payloads needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..strategies.fairness import InverseParticipation, fairness_weighting
from ..strategies.nova import WorkNormalisation, work_normalisation
from ..strategies.staleness import StalenessFn, staleness_from_repr
from ..strategies.state import StateRule, state_rule
from ..strategies.weighting import Claimed, ExampleWeighting, example_weighting
from .consensus import TRUST_WEIGHTING
from .replaytypes import NotReplayable
from .wrapper import wraps

REPLAYABLE_STRATEGY = "FedBuff"
"""The strategy whose blocks a replay recomputes."""


@dataclass(frozen=True)
class Settings:
    """The recorded settings a replay needs."""

    lr: float
    momentum: float
    staleness: StalenessFn
    weighting: ExampleWeighting
    rule: StateRule
    patterns: tuple[str, ...]
    arrayrecord_key: str
    weighted_by_key: str
    fairness: InverseParticipation | None
    work_normalisation: WorkNormalisation | None
    trust: bool
    """Whether the committee's trust weighting applies (:mod:`..pov.trust`)."""
    require_signed: bool = False
    """Whether the server required every reply signed by its trainer."""

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Settings:
        """Read them; :class:`NotReplayable` if one is missing or unusable."""
        try:
            return cls(
                lr=float(config["server_lr"]),
                momentum=float(config["server_momentum"]),
                staleness=staleness_from_repr(str(config["staleness_fn"])),
                weighting=example_weighting(str(config["example_weighting"])),
                rule=state_rule(str(config["state_rule"])),
                patterns=tuple(str(p) for p in config["state_patterns"]),
                arrayrecord_key=str(config["arrayrecord_key"]),
                weighted_by_key=str(config["weighted_by_key"]),
                fairness=fairness_weighting(str(config.get("fairness", ""))),
                work_normalisation=work_normalisation(
                    str(config.get("work_normalisation", ""))
                ),
                trust=_trust_setting(config.get("trust_weighting")),
                require_signed=config.get("require_signed_replies") is True,
            )
        except KeyError as exc:
            raise NotReplayable(f"its recorded settings lack {exc}") from None
        except (TypeError, ValueError) as exc:
            raise NotReplayable(f"its recorded settings are unusable: {exc}") from None


@dataclass(frozen=True)
class WrappedSettings:
    """What checking a :data:`~.wrapper.POV_WRAPPER` block's payloads needs
    of its recorded settings."""

    strategy: str
    """The wrapped strategy's class name."""
    arrayrecord_key: str
    weighted_by_key: str
    weighting: ExampleWeighting
    """The example weighting (recorded unless it is :class:`Claimed`)."""
    require_signed: bool = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> WrappedSettings | None:
        """Read them (``None``: not a :data:`~.wrapper.POV_WRAPPER` block's
        settings); :class:`NotReplayable` if one is missing."""
        if not wraps(config):
            return None
        try:
            return cls(
                strategy=str(config["strategy"]),
                arrayrecord_key=str(config["arrayrecord_key"]),
                weighted_by_key=str(config["weighted_by_key"]),
                require_signed=config.get("require_signed_replies") is True,
                weighting=example_weighting(
                    str(config.get("example_weighting", Claimed().spec))
                ),
            )
        except KeyError as exc:
            raise NotReplayable(f"its recorded settings lack {exc}") from None
        except (TypeError, ValueError) as exc:
            raise NotReplayable(f"its recorded settings are unusable: {exc}") from None


def _trust_setting(value: object) -> bool:
    """Whether a recorded ``trust_weighting`` turns trust weighting on."""
    if value is None:
        return False
    if value != TRUST_WEIGHTING:
        raise ValueError(f"unknown trust_weighting {str(value)[:40]!r}")
    return True


def rule_weighs_by_trust(genesis_body: Mapping[str, Any]) -> bool | None:
    """Whether a PoV genesis body's judging rule weighs by trust (``None``
    if it records no format-2 rule)."""
    pov = genesis_body.get("pov")
    votes = pov.get("votes") if isinstance(pov, dict) else None
    rule = votes.get("rule") if isinstance(votes, dict) else None
    if not isinstance(rule, dict):
        return None
    return rule.get("aggregation") == TRUST_WEIGHTING

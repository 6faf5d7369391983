"""How a strategy that wraps another's aggregation marks its recorded settings.

:class:`~flchain_flwr.pov.PoVStrategy` hands the committee's approved updates
to a Flower strategy's own aggregation; its recorded settings name that
strategy as ``strategy`` and itself as :data:`WRAPPER_FIELD`, so that a
replay (:mod:`.replaysettings`) checks its blocks' payloads but does not try
to recompute their model. Apart from the replay modules, so the strategy can
import it without importing them. PoVStrategy records its settings once, in
a fresh ledger's genesis block, so its blocks all name the genesis block's
settings: a replay refuses a chain that mixes them with another strategy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

WRAPPER_FIELD: Final = "wrapper"
"""Recorded-settings field naming the wrapper that hands the committee's
approved updates to the Flower strategy named by ``strategy``."""
POV_WRAPPER: Final = "PoVStrategy"
"""The wrapper whose blocks' payloads a replay checks, but not their model."""


def wraps(config: Mapping[str, Any]) -> bool:
    """Whether recorded settings are :data:`POV_WRAPPER`'s."""
    return config.get(WRAPPER_FIELD) == POV_WRAPPER

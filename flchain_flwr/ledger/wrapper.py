"""How a strategy that wraps another's aggregation marks its recorded settings.

:class:`~flchain_flwr.pov.PoVStrategy` hands the committee's approved updates
to a Flower strategy's own aggregation; its recorded settings name that
strategy as ``strategy`` and itself as :data:`WRAPPER_FIELD`, so that a
replay (:mod:`.replaysettings`) checks its blocks' payloads but does not try
to recompute their model. Apart from the replay modules, so the strategy can
import it without importing them.
"""

from __future__ import annotations

from typing import Final

WRAPPER_FIELD: Final = "wrapper"
"""Recorded-settings field naming the wrapper that hands the committee's
approved updates to the Flower strategy named by ``strategy``."""
POV_WRAPPER: Final = "PoVStrategy"
"""The wrapper whose blocks' payloads a replay checks, but not their model."""

"""flchain-flwr: semi-asynchronous, verifiable federated learning for Flower.

``FedBuff`` and the rest are imported on first use (:mod:`flchain_flwr._lazy`),
so a ClientApp that imports only a client mod does not load the strategies.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .runtime import Clock, WallClock, clock_of
    from .strategies import AsyncResult, FedBuff

__version__ = "0.1.0"

if not TYPE_CHECKING:  # so that mypy still refuses names not exported
    __getattr__ = lazy_exports(
        __name__,
        {
            "AsyncResult": "strategies",
            "FedBuff": "strategies",
            "Clock": "runtime",
            "WallClock": "runtime",
            "clock_of": "runtime",
        },
    )

__all__ = ["AsyncResult", "Clock", "FedBuff", "WallClock", "__version__", "clock_of"]

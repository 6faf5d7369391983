"""flchain-flwr: semi-asynchronous, verifiable federated learning for Flower."""

from .runtime import Clock, WallClock, clock_of
from .strategies import AsyncResult, FedBuff

__version__ = "0.1.0"

__all__ = ["AsyncResult", "Clock", "FedBuff", "WallClock", "__version__", "clock_of"]

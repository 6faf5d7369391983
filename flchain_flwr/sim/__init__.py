"""Virtual-clock simulation: an in-process Flower Grid with device profiles."""

from .clock import VirtualClock
from .devices import DeviceProfile, lognormal, spread, tiered, uniform
from .federation import SimulationRun, app_run_config, run_federation, simulate
from .grid import VirtualGrid
from .nodemap import NodeStats
from .work import examples_work, payload_bytes

__all__ = [
    "DeviceProfile",
    "NodeStats",
    "SimulationRun",
    "VirtualClock",
    "VirtualGrid",
    "app_run_config",
    "examples_work",
    "lognormal",
    "payload_bytes",
    "run_federation",
    "simulate",
    "spread",
    "tiered",
    "uniform",
]

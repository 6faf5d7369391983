"""Device profiles for the virtual-clock simulator, and heterogeneity presets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """How fast one simulated node computes and communicates.

    Parameters
    ----------
    speed : float (default: 1.0)
        Relative compute speed; a node with ``speed=0.1`` takes 10x as long.
    uplink_bps, downlink_bps : float (default: inf)
        Bandwidth in bits per second for replies (up) and instructions (down).
    latency_s : float (default: 0.0)
        One-way network latency added to each transfer.
    jitter : float (default: 0.0)
        Sigma of a log-normal factor on each compute time (0 = deterministic).
    online : tuple of (start, end) windows, optional
        Simulated seconds during which the node is connected; ``None`` = always.
    hang_probability : float (default: 0.0)
        Chance that a message is taken and never answered (its TTL then runs out).
    """

    speed: float = 1.0
    uplink_bps: float = math.inf
    downlink_bps: float = math.inf
    latency_s: float = 0.0
    jitter: float = 0.0
    online: tuple[tuple[float, float], ...] | None = None
    hang_probability: float = 0.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if not (self.uplink_bps > 0 and self.downlink_bps > 0):
            raise ValueError("bandwidths must be > 0")
        if self.latency_s < 0 or self.jitter < 0:
            raise ValueError("latency_s and jitter must be >= 0")
        if not 0.0 <= self.hang_probability <= 1.0:
            raise ValueError("hang_probability must be in [0, 1]")
        for start, end in self.online or ():
            if not start < end:
                raise ValueError(f"online window ({start}, {end}) is empty")

    def is_online(self, t: float) -> bool:
        """Whether the node is connected at simulated time ``t``."""
        if self.online is None:
            return True
        return any(start <= t < end for start, end in self.online)

    def offline_at(self, t: float) -> float:
        """First time ``>= t`` at which the node is disconnected (inf if never)."""
        if self.online is None:
            return math.inf
        for start, end in self.online:
            if start <= t < end:
                return end
        return t

    def transfer_seconds(self, num_bytes: int, bps: float) -> float:
        """Seconds to move ``num_bytes`` at ``bps`` bits per second, plus latency."""
        return self.latency_s + (8.0 * num_bytes / bps if math.isfinite(bps) else 0.0)


def uniform(num_nodes: int, **profile: float) -> list[DeviceProfile]:
    """``num_nodes`` identical devices (one shared, immutable profile)."""
    return [DeviceProfile(**profile)] * num_nodes  # type: ignore[arg-type]


def tiered(
    num_nodes: int,
    slowdowns: Sequence[float] = (1.0, 4.0, 10.0),
    *,
    uplink_bps: float = math.inf,
    downlink_bps: float = math.inf,
    jitter: float = 0.0,
) -> list[DeviceProfile]:
    """Devices in tiers, e.g. 1x / 4x / 10x slower, assigned round-robin.

    Bandwidth is divided by the same slowdown, so a slow tier is slow on both
    compute and network, as low-end edge devices usually are. Nodes of a tier
    share one immutable profile.
    """
    if not slowdowns or any(s <= 0 for s in slowdowns):
        raise ValueError("slowdowns must be positive")
    tiers = [
        DeviceProfile(
            speed=1.0 / slowdown,
            uplink_bps=uplink_bps / slowdown,
            downlink_bps=downlink_bps / slowdown,
            jitter=jitter,
        )
        for slowdown in slowdowns
    ]
    return [tiers[i % len(tiers)] for i in range(num_nodes)]


def lognormal(
    num_nodes: int,
    sigma: float = 1.0,
    *,
    seed: int = 0,
    uplink_bps: float = math.inf,
    downlink_bps: float = math.inf,
    jitter: float = 0.0,
) -> list[DeviceProfile]:
    """Speeds drawn log-normally (median 1), normalised so the fastest is 1.

    ``sigma=1`` gives a spread of roughly 20x between the fastest and slowest of
    20 devices.
    """
    if sigma < 0:
        raise ValueError("sigma must be >= 0")
    speeds = np.random.default_rng(seed).lognormal(0.0, sigma, size=num_nodes)
    speeds = speeds / speeds.max()
    return [
        DeviceProfile(
            speed=float(s),
            uplink_bps=uplink_bps * float(s),
            downlink_bps=downlink_bps * float(s),
            jitter=jitter,
        )
        for s in speeds
    ]


def spread(profiles: Sequence[DeviceProfile]) -> float:
    """Fastest speed over slowest speed."""
    speeds = [p.speed for p in profiles]
    return max(speeds) / min(speeds)

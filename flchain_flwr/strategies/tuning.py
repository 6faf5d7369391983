"""Self-tuning buffer size K and wait tau from observed staleness and arrivals.

BAFL (Feng et al., IEEE Trans. Computers 2022) chooses the block size from a
delay model; the asynchronous FLchain survey (§3.1.1) calls it the "optimal
block size". Here the choice is made online, after every version, to hold a
target mean staleness: with C nodes training at once, about C/K versions pass
while a node trains, so staleness falls as K grows, and::

    K'   = clip(round(K * s / target), max(min_k, K/2), min(max_k, 2K))
    tau' = slack * K' / rate            (when ``slack`` is set)

where ``s`` is the smoothed mean staleness of the aggregated updates and
``rate`` the smoothed rate of aggregated updates per second: tau' is
``slack`` times the expected time to fill the next buffer, so a lull does not
hold a part-full buffer for long. Each choice is recorded with its version.

Each ledger block records, in its ``buffer`` field (:meth:`BufferTuner.record`),
the tuner's state that chose the block's K and tau; with the block's time and
its included updates' staleness this is all a resumed run needs to continue the
same choices (:meth:`BufferTuner.resume`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BUFFER_FIELD = "buffer"
"""The block body field holding :meth:`BufferTuner.record`."""


def next_buffer_size(
    k: int, mean_staleness: float, target: float, min_k: int, max_k: int
) -> int:
    """K moved towards the target staleness, at most halved or doubled."""
    wanted = round(k * mean_staleness / target)
    low = max(min_k, math.ceil(k / 2))
    high = min(max_k, 2 * k)
    return int(min(max(wanted, low), max(low, high)))


@dataclass(frozen=True)
class StalenessTarget:
    """Choose K (and tau) to hold ``target`` mean staleness.

    Parameters
    ----------
    target : float
        Mean staleness to hold (> 0).
    min_k, max_k : int
        Bounds on K (``1 <= min_k <= max_k``).
    slack : float | None (default: None)
        tau as a multiple of the expected time to fill the buffer (> 0);
        ``None`` leaves tau as configured.
    smoothing : float (default: 0.5)
        Weight of the newest version in the moving averages, in (0, 1].
    """

    target: float
    min_k: int = 1
    max_k: int = 1000
    slack: float | None = None
    smoothing: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"target must be finite and > 0, got {self.target}")
        if not 1 <= self.min_k <= self.max_k:
            raise ValueError(
                f"need 1 <= min_k <= max_k, got {self.min_k}, {self.max_k}"
            )
        if self.slack is not None and not (
            math.isfinite(self.slack) and self.slack > 0
        ):
            raise ValueError(f"slack must be finite and > 0, got {self.slack}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")

    @property
    def spec(self) -> str:
        """``"staleness:<target>:<min_k>:<max_k>[:<slack>]"``."""
        tail = "" if self.slack is None else f":{self.slack:g}"
        return f"staleness:{self.target:g}:{self.min_k}:{self.max_k}{tail}"


class BufferTuner:
    """One run's K and tau, updated after each version by a :class:`StalenessTarget`."""

    def __init__(
        self, policy: StalenessTarget, buffer_size: int, max_wait: float | None
    ) -> None:
        self.policy = policy
        self.buffer_size = min(max(buffer_size, policy.min_k), policy.max_k)
        self.max_wait = max_wait
        self._staleness: float | None = None
        self._rate: float | None = None
        self._last_time = 0.0

    def record(self) -> dict[str, Any]:
        """The state that chooses the next version's K and tau (a block's
        ``buffer`` field): K, tau, the moving averages and the last version's
        time, on the run's clock."""
        return {
            "buffer_size": self.buffer_size,
            "max_wait": self.max_wait,
            "mean_staleness": self._staleness,
            "arrival_rate": self._rate,
            "last_time": self._last_time,
        }

    @classmethod
    def resume(
        cls,
        policy: StalenessTarget,
        record: Mapping[str, Any],
        time: float,
        staleness: Sequence[int],
    ) -> BufferTuner:
        """The tuner of a run resumed after the block whose ``buffer`` field is
        ``record``, made at ``time`` of updates with ``staleness``.

        The block's own version is observed, so K and tau are the ones the
        uninterrupted run would use next (K is kept within ``policy``'s bounds
        if those changed). The resumed run's clock starts at 0, so its first
        version's arrival rate is measured from the resume. A record written
        before the averages were recorded (only K and tau) restores K and tau;
        the averages start again.

        Raises
        ------
        ValueError
            If ``record`` is not a tuner's record.
        """
        try:
            k, tau = int(record["buffer_size"]), _optional(record, "max_wait")
            tuner = cls(policy, k, tau)
            tuner._staleness = _optional(record, "mean_staleness")
            tuner._rate = _optional(record, "arrival_rate")
            tuner._last_time = float(record.get("last_time", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a buffer tuner's record: {exc!r}") from None
        tuner.observe(time, list(staleness))
        tuner._last_time = 0.0
        return tuner

    def observe(self, time: float, staleness: list[int]) -> tuple[int, float | None]:
        """A version made at ``time`` of updates with ``staleness``: the next K, tau."""
        p = self.policy
        if staleness:
            mean = sum(staleness) / len(staleness)
            old = self._staleness
            self._staleness = mean if old is None else old + p.smoothing * (mean - old)
            elapsed = time - self._last_time
            if elapsed > 0:
                rate = len(staleness) / elapsed
                old = self._rate
                self._rate = rate if old is None else old + p.smoothing * (rate - old)
        self._last_time = time
        if self._staleness is not None:
            self.buffer_size = next_buffer_size(
                self.buffer_size, self._staleness, p.target, p.min_k, p.max_k
            )
        if p.slack is not None and self._rate:
            self.max_wait = p.slack * self.buffer_size / self._rate
        return self.buffer_size, self.max_wait


def _optional(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return None if value is None else float(value)


def buffer_tuning(spec: str) -> StalenessTarget | None:
    """``""``/``"none"``: off; ``"staleness:<target>[:<min_k>:<max_k>[:<slack>]]"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "staleness" and len(params) in (1, 3, 4):
        try:
            target = float(params[0])
            if len(params) == 1:
                return StalenessTarget(target)
            slack = float(params[3]) if len(params) == 4 else None
            return StalenessTarget(target, int(params[1]), int(params[2]), slack)
        except ValueError as exc:
            raise ValueError(f"bad buffer tuning {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown buffer tuning {spec!r}; expected '', 'none' or "
        "'staleness:<target>[:<min_k>:<max_k>[:<slack>]]'"
    )

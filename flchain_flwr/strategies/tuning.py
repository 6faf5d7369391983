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
K's clip is taken before rounding, so a tiny target (``K * s / target``
beyond the float range) gives the upper bound rather than an overflow; a tau'
beyond the float range (a huge ``slack``, or a very slow rate) is no limit
(``None``), as the run config reads ``max-wait = inf``.

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

from ..configvalues import checked_integer, checked_number
from ..numbertext import decimal_integer, decimal_number, number_text

BUFFER_FIELD = "buffer"
"""The block body field holding :meth:`BufferTuner.record`."""


def next_buffer_size(
    k: int, mean_staleness: float, target: float, min_k: int, max_k: int
) -> int:
    """K moved towards the target staleness, at most halved or doubled."""
    low = max(min_k, math.ceil(k / 2))
    high = max(low, min(max_k, 2 * k))
    # clipped as a float, then rounded: k * s / target may exceed any int
    # (inf for a tiny target), and rounding commutes with an integer clip
    return round(min(max(k * mean_staleness / target, low), high))


MAX_K = 2**63 - 1
"""The largest K bound: a run config's integer (int64), as ``buffer-size``."""

DEFAULT_SMOOTHING = 0.5
""":attr:`StalenessTarget.smoothing` unless set; its spec leaves it out."""


@dataclass(frozen=True)
class StalenessTarget:
    """Choose K (and tau) to hold ``target`` mean staleness.

    Parameters
    ----------
    target : float
        Mean staleness to hold (finite, > 0).
    min_k, max_k : int
        Bounds on K (ints, ``1 <= min_k <= max_k <= 2**63 - 1``).
    slack : float | None (default: None)
        tau as a multiple of the expected time to fill the buffer (finite,
        > 0); ``None`` leaves tau as configured.
    smoothing : float (default: 0.5)
        Weight of the newest version in the moving averages, in (0, 1].

    Each is checked as the run-config parser checks it (a bool is no
    number), so that :attr:`spec` parses back to an equal policy.
    """

    target: float
    min_k: int = 1
    max_k: int = 1000
    slack: float | None = None
    smoothing: float = DEFAULT_SMOOTHING

    def __post_init__(self) -> None:
        checked_number(self.target, "target", low=0.0, low_open=True)
        checked_integer(self.min_k, "min_k", minimum=1, maximum=MAX_K)
        checked_integer(
            self.max_k, "max_k (>= min_k)", minimum=self.min_k, maximum=MAX_K
        )
        if self.slack is not None:
            checked_number(self.slack, "slack", low=0.0, low_open=True)
        checked_number(self.smoothing, "smoothing", low=0.0, high=1.0, low_open=True)

    @property
    def spec(self) -> str:
        """``"staleness:<target>:<min_k>:<max_k>[:<slack>[:<smoothing>]]"``,
        each number exact (:func:`~flchain_flwr.numbertext.number_text`); the smoothing
        only when it is not the default 0.5 (then a slack of ``None`` is
        ``none``), so the spec, and the config digest, of a policy without it
        are as before."""
        spec = f"staleness:{number_text(self.target)}:{self.min_k}:{self.max_k}"
        slack = "none" if self.slack is None else number_text(self.slack)
        if self.smoothing != DEFAULT_SMOOTHING:
            return f"{spec}:{slack}:{number_text(self.smoothing)}"
        return spec if self.slack is None else f"{spec}:{slack}"


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
            tau = p.slack * self.buffer_size / self._rate
            self.max_wait = tau if math.isfinite(tau) else None  # past any clock
        return self.buffer_size, self.max_wait


def _optional(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return None if value is None else float(value)


def buffer_tuning(spec: str) -> StalenessTarget | None:
    """``""``/``"none"``: off;
    ``"staleness:<target>[:<min_k>:<max_k>[:<slack>[:<smoothing>]]]"``, where
    a slack of ``none`` leaves tau as configured."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "staleness" and len(params) in (1, 3, 4, 5):
        try:
            target = decimal_number(params[0])
            if len(params) == 1:
                return StalenessTarget(target)
            slack = None
            if len(params) >= 4 and params[3] != "none":
                slack = decimal_number(params[3])
            smoothing = (
                decimal_number(params[4]) if len(params) == 5 else DEFAULT_SMOOTHING
            )
            bounds = decimal_integer(params[1]), decimal_integer(params[2])
            return StalenessTarget(target, *bounds, slack, smoothing)
        except ValueError as exc:
            raise ValueError(f"bad buffer tuning {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown buffer tuning {spec!r}; expected '', 'none' or "
        "'staleness:<target>[:<min_k>:<max_k>[:<slack>[:<smoothing>]]]'"
    )

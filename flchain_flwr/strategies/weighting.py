"""Example weighting: how much a reply's self-reported example count counts.

A train reply says how many examples it was trained on (``num-examples``), and
the aggregate weights each update, and each reward share, by that number. The
number is the client's word: one node claiming ``1e12`` takes the whole step,
and two claiming ``1e308`` make the total infinite. A policy maps each claim to
the *effective* example count the step uses:

- :class:`Claimed`: the claim itself (the old behaviour, bit for bit);
- :class:`Equal`: every update counts 1 (claims ignored);
- :class:`Capped`: ``min(claim, max_examples)``;
- :class:`MedianCapped` (the default): ``min(claim, multiple * median)``, the
  median of the latest claim of each recently heard node.

Policies are frozen dataclasses (plain configuration: comparable, shareable,
built from a run-config string by :func:`example_weighting`). What a stateful
policy remembers lives in a separate
:class:`~flchain_flwr.strategies.claims.ClaimHistory` that the strategy owns,
one per run, in the way PyTorch's PowerSGD hook keeps its ``PowerSGDState``
apart from the hook: the policy stays a pure function of (claim, history), so a
verifier or a replay can recompute a weight from a recorded history, and the
history can be inspected, reset or snapshotted without touching configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..numbertext import decimal_integer, decimal_number
from .claims import ClaimHistory, lower_median


class WeightingError(ValueError):
    """Effective example counts that cannot weight an aggregate."""


@runtime_checkable
class ExampleWeighting(Protocol):
    """Maps a claimed example count to the effective count an aggregate uses."""

    def effective(self, claimed: float, history: ClaimHistory) -> float:
        """The effective count for ``claimed`` (finite, ``>= 0``)."""
        ...

    @property
    def spec(self) -> str:
        """The policy as a string :func:`example_weighting` parses back."""
        ...


@dataclass(frozen=True)
class Claimed:
    """The claim itself: the old behaviour, unchanged."""

    def effective(self, claimed: float, history: ClaimHistory) -> float:
        """Return ``claimed``."""
        return claimed

    @property
    def spec(self) -> str:
        """``"claimed"``."""
        return "claimed"


@dataclass(frozen=True)
class Equal:
    """Every update counts the same, whatever it claims."""

    def effective(self, claimed: float, history: ClaimHistory) -> float:
        """Return ``1.0``."""
        return 1.0

    @property
    def spec(self) -> str:
        """``"equal"``."""
        return "equal"


@dataclass(frozen=True)
class Capped:
    """``min(claim, max_examples)``: a fixed, known bound on any one update."""

    max_examples: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_examples) or self.max_examples <= 0:
            raise ValueError(
                f"max_examples must be finite and > 0, got {self.max_examples!r}"
            )

    def effective(self, claimed: float, history: ClaimHistory) -> float:
        """Return ``min(claimed, max_examples)``."""
        return min(claimed, float(self.max_examples))

    @property
    def spec(self) -> str:
        """``"capped:<max_examples>"``."""
        return f"capped:{_number(self.max_examples)}"


@dataclass(frozen=True)
class MedianCapped:
    """``min(claim, multiple * lower median of the recent claims)``.

    The median is taken over the latest claim of each of the ``window`` nodes
    heard from most recently (see :class:`ClaimHistory`), so inflators that are
    a minority of those nodes cannot raise the cap above ``multiple`` times an
    honest node's claim. With no history yet, a claim is taken as it is.

    Defaults, measured with this project's own partitioning
    (:func:`~flchain_flwr.data.partition.dirichlet_partition`, seeds 0-19):
    the largest honest partition over the lower median of all partitions is
    at most

    ==========================  ========  ========  =========
    labels, alpha               10 nodes  20 nodes  100 nodes
    ==========================  ========  ========  =========
    digits (1,797), 0.3         1.93      2.26      3.72 *
    digits (1,797), 0.5         1.81      2.05      2.67 *
    60,000 (6,000 a class), 0.3 1.92      2.28      3.52
    60,000 (6,000 a class), 0.5 1.80      2.12      2.25
    ==========================  ========  ========  =========

    (* with ``min_partition_size=1``: the default of 10 cannot split 1,797
    examples into 100 parts.) ``multiple = 4`` caps no honest node in any of
    those 240 partitions, and still holds an inflator to 4 honest medians:
    among ten honest nodes, under a third of the step instead of all of it.
    ``window = 1000`` covers every node of a federation that size; in a larger
    one it samples the nodes heard from most recently.
    """

    multiple: float = 4.0
    window: int = 1000

    def __post_init__(self) -> None:
        if not math.isfinite(self.multiple) or self.multiple < 1:
            raise ValueError(f"multiple must be finite and >= 1, got {self.multiple}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def cap(self, history: ClaimHistory) -> float:
        """The current cap, ``inf`` while nothing has been observed."""
        recent = history.recent(self.window)
        if not recent:
            return math.inf
        return self.multiple * lower_median(recent)

    def effective(self, claimed: float, history: ClaimHistory) -> float:
        """Return ``min(claimed, self.cap(history))``."""
        return min(claimed, self.cap(history))

    @property
    def spec(self) -> str:
        """``"median:<multiple>:<window>"``."""
        return f"median:{_number(self.multiple)}:{self.window}"


def _number(value: float) -> str:
    """Shortest text that parses back to ``value`` ("4" rather than "4.0")."""
    text = repr(float(value))
    return text.removesuffix(".0")


DEFAULT_WEIGHTING = MedianCapped()
"""The default policy: ``MedianCapped(multiple=4.0, window=1000)``."""


def example_weighting(spec: str) -> ExampleWeighting:
    """Build a policy from a run-config string.

    ``"claimed"``, ``"equal"``, ``"capped:<max_examples>"``, ``"median"``,
    ``"median:<multiple>"`` or ``"median:<multiple>:<window>"``; e.g.
    ``example_weighting("median:4")``. Every policy's ``spec`` parses back to it.

    Raises
    ------
    ValueError
        For an unknown name or a malformed or out-of-range parameter.
    """
    name, *params = spec.strip().split(":")
    try:
        if name == "claimed" and not params:
            return Claimed()
        if name == "equal" and not params:
            return Equal()
        if name == "capped" and len(params) == 1:
            return Capped(decimal_number(params[0]))
        if name == "median" and len(params) <= 2:
            multiple = decimal_number(params[0]) if params else MedianCapped.multiple
            window = (
                decimal_integer(params[1]) if len(params) == 2 else MedianCapped.window
            )
            return MedianCapped(multiple, window)
    except ValueError as exc:
        raise ValueError(f"bad example weighting {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown example weighting {spec!r}; expected 'claimed', 'equal', "
        "'capped:<max>', 'median', 'median:<multiple>' or "
        "'median:<multiple>:<window>'"
    )


def effective_examples(
    policy: ExampleWeighting, claims: Sequence[float], history: ClaimHistory
) -> list[float]:
    """The effective example count of each claim in a buffer.

    Parameters
    ----------
    policy : ExampleWeighting
        The weighting policy.
    claims : Sequence[float]
        The buffered updates' claimed example counts, in buffer order.
    history : ClaimHistory
        The run's history, with these claims already observed.

    Returns
    -------
    list[float]
        One effective count per claim, each finite and ``>= 0``, with a finite
        total ``> 0``: safe to divide by.

    Raises
    ------
    WeightingError
        If a count is negative or not finite, or the total is not finite and
        ``> 0`` (e.g. :class:`Claimed` with two claims of ``1e308``).
    """
    if isinstance(policy, MedianCapped):  # one cap for the whole buffer
        cap = policy.cap(history)
        counts = [min(float(c), cap) for c in claims]
    else:
        counts = [float(policy.effective(c, history)) for c in claims]
    for claim, count in zip(claims, counts, strict=True):
        if not math.isfinite(count) or count < 0:
            raise WeightingError(
                f"{policy.spec} gives claim {claim!r} the count {count!r}; "
                "counts must be finite and >= 0"
            )
    total = sum(counts)  # as weighted_delta sums them
    if not math.isfinite(total) or total <= 0:
        raise WeightingError(
            f"{policy.spec}: the effective counts {counts} total {total!r}; "
            "the total must be finite and > 0"
        )
    return counts

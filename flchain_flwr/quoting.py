"""How a reason quotes text that another party chose.

A training, verifier or witness node's error reason, and whatever a remote
node echoes, end up in reasons that go into the run's result, its log and the
errors a run stops with. A faulty node can make that text as long as it
likes, so every such reason quotes it through :func:`clip`. A leaf module: the
PoV committee and the witness client import it without loading the strategies.
(A client's reply values are described, as briefly, by
:func:`~flchain_flwr.strategies.replybounds.describe`.)
"""

from __future__ import annotations

from typing import Final

REASON_CHARS: Final = 240
"""The most characters of another party's text that one reason quotes."""


def clip(text: str | None, limit: int = REASON_CHARS) -> str:
    """``text`` if at most ``limit`` characters, else its start and ``...``
    (``limit`` characters in all); for ``None`` (a Flower error reply's reason
    may be unset), ``"no reason given"``."""
    if text is None:
        return "no reason given"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."

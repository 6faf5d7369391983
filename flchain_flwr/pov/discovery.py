"""Finding the verifier nodes on the grid, and the pool a PoV ledger declares.

Before a remote committee can vote the server must know which node holds
which verifier key. :func:`discover_verifiers` asks every node that appears
for its identity (an ``IDENTITY`` query, :mod:`.queries`); a verifier proves
its key by signing a fresh random challenge, so no node can claim a key it
does not hold. A resumed chain fixes the pool to the keys its genesis
declares (:func:`declared_pool`); a new one takes the first keys found.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from logging import WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ..ledger import Ledger
from ..quoting import clip
from ..runtime import clock_of
from .queries import (
    CONFIG,
    IDENTITY,
    IDENTITY_TAG,
    ROLE_KEY,
    VERIFIER_ROLE,
    RemoteVerifierError,
    bytes_field,
    config,
    send,
)


def discover_verifiers(
    grid: Grid,
    *,
    expected: int | None = None,
    pool: Iterable[str] | None = None,
    timeout: float = 120.0,
    reply_timeout: float = 60.0,
    poll_interval: float = 3.0,
) -> dict[str, int]:
    """Find the verifier nodes; return ``{public key: node ID}``, by key.

    Every node that appears is asked once for its identity; a verifier proves
    its key by signing a fresh random challenge. With ``pool`` (the verifier
    keys the chain declares) every one of them must be found and other keys
    are ignored; the order nodes answer in does not matter. Without it, the
    first ``expected`` keys the nodes present form the pool (trust on first
    use). Time is the grid's (virtual on the simulator's grid). Raises
    ``RemoteVerifierError`` if they are not all found in ``timeout`` seconds
    (checked between rounds of questions; each round waits up to
    ``reply_timeout`` seconds for its answers).
    """
    allowed = None if pool is None else set(pool)
    if allowed is None and expected is None:
        raise ValueError("give the declared pool, or how many verifiers to expect")
    if allowed is not None and expected is not None and expected != len(allowed):
        raise ValueError(
            f"expected {expected} verifiers, but the declared pool has {len(allowed)}"
        )
    wanted = len(allowed) if allowed is not None else int(expected or 0)
    clock = clock_of(grid, poll_interval)
    found: dict[str, int] = {}
    answered: set[int] = set()
    deadline = clock.now() + timeout
    while len(found) < wanted:
        if clock.now() >= deadline:
            missing = (
                "" if allowed is None else f"; missing {_short(allowed - set(found))}"
            )
            raise RemoteVerifierError(
                f"found {len(found)} of {wanted} PoV verifier nodes in "
                f"{timeout:g}s{missing}"
            )
        new = sorted(set(grid.get_node_ids()) - answered)
        if not new:
            clock.wait(min(clock.now() + poll_interval, deadline))
            continue
        challenges = {node: os.urandom(32) for node in new}
        replies = send(
            grid,
            {
                node: (IDENTITY, RecordDict({CONFIG: ConfigRecord({"challenge": c})}))
                for node, c in challenges.items()
            },
            reply_timeout,
        )
        for node, reply in replies.items():
            if reply.has_error():  # asked again in the next round
                log(WARNING, "PoV: node %d: %s", node, clip(reply.error.reason))
                continue
            answered.add(node)
            key = _proven_key(reply, challenges[node])
            if key is None or (allowed is not None and key not in allowed):
                continue
            if key in found:
                log(
                    WARNING,
                    "PoV: key %s… offered by two nodes; keeping the first",
                    key[:12],
                )
                continue
            if len(found) < wanted:
                found[key] = node
    return dict(sorted(found.items()))


def _short(keys: Iterable[str]) -> str:
    return ", ".join(f"{k[:12]}…" for k in sorted(keys))


def declared_pool(ledger_path: str | Path) -> list[str] | None:
    """The verifier pool a PoV ledger's genesis declares (``None`` if there is
    no ledger there yet, or it is not a PoV chain)."""
    if not Path(ledger_path).is_file():
        return None
    with Ledger(ledger_path, create=False) as ledger:
        if ledger.head() is None:
            return None
        pov = ledger.block(0).body.get("pov")
    if not isinstance(pov, dict) or not isinstance(pov.get("pool"), list):
        return None
    return [str(k) for k in pov["pool"]]


def _proven_key(reply: Message, challenge: bytes) -> str | None:
    """The verifier key a node proved it holds, or None (trainer, or bad proof)."""
    try:
        cfg = config(reply.content)
        if cfg.get(ROLE_KEY) != VERIFIER_ROLE:
            return None
        key = str(cfg["public-key"])
        VerifyKey(key.encode(), encoder=HexEncoder).verify(
            IDENTITY_TAG + challenge, bytes_field(cfg, "signature")
        )
    except (ValueError, KeyError, TypeError, BadSignatureError) as exc:
        log(
            WARNING,
            "PoV: node %d's identity was refused: %s",
            reply.metadata.src_node_id,
            exc,
        )
        return None
    return key

"""The server's state after a block, recorded so that a run resumes exactly.

A block body's optional ``server_state`` field (ledgers written before it
lack it, and still verify) names the server's state after the block, each
part a blob in the content-addressed store (written, like the model, before
the block): ``{"claims": <hash>, "momentum": {"velocity": <hash>,
"from_zero": <bool>}}``. ``claims`` is the example-weighting history the
block's weights were computed from (:class:`ServerState`); ``momentum``
(only with server momentum) the velocity the block's step applied, ``new =
parent + lr * velocity``, where ``velocity = momentum * previous + step`` and
``previous`` is the last block's velocity, or zero when ``from_zero``. The
velocity is float64, so with momentum each block stores twice a float32
model's bytes beside its model; the claims take 16 bytes a node.
:func:`put_server_state` stores a state's blobs and :func:`load_server_state`
reads one back (the ledger's ``append`` and ``server_state``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .canonical import is_hex

if TYPE_CHECKING:
    from .blobs import BlobStore

SERVER_STATE_FIELD: Final = "server_state"
"""Body field: blob hashes of the server's state after the block."""


@dataclass(frozen=True)
class ServerState:
    """The server's state after a block: what a resume (or a replay) needs.

    Parameters
    ----------
    claims : list[tuple[int, float]] | None
        The example-weighting history, ``(node_id, latest claim)`` from the node
        heard from least recently to the most recent (see
        :class:`~flchain_flwr.strategies.claims.ClaimHistory`). Node ids are
        Flower's unsigned 64-bit ids.
    velocity : dict[str, np.ndarray] | None
        The server momentum's velocity (``None`` without momentum): the step
        the block applied, one float64 array per model array.
    velocity_from_zero : bool (default: False)
        Whether that velocity started from zero (the first step of a run, or
        the first after a reset) rather than from the previous block's.
    """

    claims: list[tuple[int, float]] | None
    velocity: dict[str, np.ndarray] | None = None
    velocity_from_zero: bool = False


def _claims_arrays(claims: Sequence[tuple[int, float]]) -> dict[str, np.ndarray]:
    """The claim history as two arrays, in order: ``node_id`` and ``claim``."""
    ids = [node_id for node_id, _ in claims]
    if any(not 0 <= node_id < 2**64 for node_id in ids):
        raise ValueError("node ids in a claim history must fit an unsigned 64 bits")
    return {
        "node_id": np.array(ids, dtype=np.uint64),
        "claim": np.array([claim for _, claim in claims], dtype=np.float64),
    }


def _claims_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[tuple[int, float]]:
    """Inverse of :func:`_claims_arrays`; ``ValueError`` if the blob is not one."""
    ids, values = arrays.get("node_id"), arrays.get("claim")
    if (
        set(arrays) != {"node_id", "claim"}
        or ids is None
        or values is None
        or ids.dtype != np.uint64
        or values.dtype != np.float64
        or ids.ndim != 1
        or ids.shape != values.shape
    ):
        raise ValueError("the claims blob is not a claim history")
    return [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]


def state_blobs(body: Mapping[str, Any]) -> dict[str, str]:
    """The blobs a body's ``server_state`` names, by part (``{}`` without one).

    Raises
    ------
    ValueError
        If the field is malformed.
    """
    if SERVER_STATE_FIELD not in body:
        return {}
    state = body[SERVER_STATE_FIELD]
    if not isinstance(state, Mapping) or not set(state) <= {"claims", "momentum"}:
        raise ValueError("server_state must hold only 'claims' and 'momentum'")
    blobs: dict[str, str] = {}
    if "claims" in state:
        blobs["claims"] = state["claims"]
    if "momentum" in state:
        momentum = state["momentum"]
        if (
            not isinstance(momentum, Mapping)
            or set(momentum) != {"velocity", "from_zero"}
            or not isinstance(momentum["from_zero"], bool)
        ):
            raise ValueError(
                "server_state.momentum must be {'velocity': hash, 'from_zero': bool}"
            )
        blobs["velocity"] = momentum["velocity"]
    for part, digest in blobs.items():
        if not is_hex(digest, 64):
            raise ValueError(f"server_state {part} is not a SHA-256 hex digest")
    return blobs


def put_server_state(blobs: BlobStore, state: ServerState) -> dict[str, Any]:
    """Store ``state``'s blobs in ``blobs``; return the body record naming them."""
    record: dict[str, Any] = {}
    if state.claims is not None:
        record["claims"] = blobs.put_model(_claims_arrays(state.claims))
    if state.velocity is not None:
        record["momentum"] = {
            "velocity": blobs.put_model(state.velocity),
            "from_zero": state.velocity_from_zero,
        }
    return record


def load_server_state(blobs: BlobStore, body: Mapping[str, Any]) -> ServerState | None:
    """The server state a block ``body`` records, its blobs read from ``blobs``
    (``None`` if it records none).

    Raises
    ------
    ValueError
        If the record is malformed or a blob it names is missing or corrupt.
    """
    if SERVER_STATE_FIELD not in body:
        return None
    named = state_blobs(body)
    claims = None
    if "claims" in named:
        claims = _claims_from_arrays(blobs.load_model(named["claims"]))
    velocity = None
    if "velocity" in named:
        velocity = blobs.load_model(named["velocity"])
    momentum = body[SERVER_STATE_FIELD].get("momentum", {})
    return ServerState(claims, velocity, bool(momentum.get("from_zero", False)))

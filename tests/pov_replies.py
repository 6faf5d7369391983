"""Train replies as a trainer sends them, as PoV candidates (for remote committees,
which judge the reply itself, never a delta the server names)."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from flchain_flwr.arrays import NDArrays, to_arrayrecord
from flchain_flwr.ledger import sender_update_digest
from flchain_flwr.pov import Candidate
from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY

from .test_pov import model


def reply(arrays: NDArrays, *, full: bool = False, examples: int = 10) -> RecordDict:
    """A train reply carrying ``arrays`` (a delta, or with ``full`` weights)."""
    content = RecordDict(
        {
            "arrays": to_arrayrecord(arrays),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    if not full:
        content[UPDATE_INFO_KEY] = ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA})
    return content


def reply_candidate(
    node_id: int, value: float, weight: float = 1.0, *, base: NDArrays | None = None
) -> Candidate:
    """Node ``node_id``'s reply moving every weight by ``value``: a delta reply,
    or with ``base`` the full weights ``base + value``."""
    step = {k: np.full_like(v, value) for k, v in model(0.0).items()}
    if base is None:
        content = reply(step)
        arrays = {k: v.astype(np.float64) for k, v in step.items()}
    else:
        weights = {k: base[k] + step[k] for k in base}
        content = reply(weights, full=True)
        arrays = {
            k: weights[k].astype(np.float64) - base[k].astype(np.float64) for k in base
        }
    digest = sender_update_digest(node_id, content)
    return Candidate(digest, node_id, arrays, weight, 1.0, content, base)

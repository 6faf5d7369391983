"""Server-side strategies: semi-asynchronous buffered aggregation and helpers."""

from .config import fedbuff_from_run_config
from .decompress import DecompressReplies
from .fedbuff import FedBuff, mean_staleness, staleness_histogram
from .result import AsyncResult, NodeFailure, RejectedUpdate, VersionRecord
from .staleness import (
    Constant,
    FedBuffStaleness,
    Hinge,
    Polynomial,
    StalenessFn,
    staleness_fn,
)
from .updates import ParsedUpdate, UpdateRejected, parse_update

__all__ = [
    "AsyncResult",
    "Constant",
    "DecompressReplies",
    "FedBuff",
    "FedBuffStaleness",
    "Hinge",
    "NodeFailure",
    "ParsedUpdate",
    "Polynomial",
    "RejectedUpdate",
    "StalenessFn",
    "UpdateRejected",
    "VersionRecord",
    "fedbuff_from_run_config",
    "mean_staleness",
    "parse_update",
    "staleness_fn",
    "staleness_histogram",
]

"""Server-side strategies: semi-asynchronous buffered aggregation and helpers."""

from .config import fedbuff_from_run_config
from .decompress import DecompressReplies
from .fedbuff import FedBuff
from .result import (
    AsyncResult,
    NodeFailure,
    RejectedUpdate,
    VersionRecord,
    mean_staleness,
    staleness_histogram,
)
from .scheduling import RandomSample, SchedulingPolicy, ShuffleAll, scheduling_policy
from .staleness import (
    Constant,
    FedBuffStaleness,
    Hinge,
    Polynomial,
    StalenessFn,
    staleness_fn,
)
from .updates import ParsedUpdate, UpdateRejected, parse_update
from .weighting import (
    Capped,
    Claimed,
    Equal,
    ExampleWeighting,
    MedianCapped,
    example_weighting,
)

__all__ = [
    "AsyncResult",
    "Capped",
    "Claimed",
    "Constant",
    "DecompressReplies",
    "Equal",
    "ExampleWeighting",
    "FedBuff",
    "FedBuffStaleness",
    "Hinge",
    "MedianCapped",
    "NodeFailure",
    "ParsedUpdate",
    "Polynomial",
    "RandomSample",
    "RejectedUpdate",
    "SchedulingPolicy",
    "ShuffleAll",
    "StalenessFn",
    "UpdateRejected",
    "VersionRecord",
    "example_weighting",
    "fedbuff_from_run_config",
    "mean_staleness",
    "parse_update",
    "scheduling_policy",
    "staleness_fn",
    "staleness_histogram",
]

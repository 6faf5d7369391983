"""Server-side strategies: semi-asynchronous buffered aggregation and helpers."""

from .adaptive import AdaptiveScheduling
from .bafl import AdaptiveLocalWork
from .config import closing_ledger, fedbuff_from_run_config
from .decompress import DecompressReplies
from .fairness import InverseParticipation
from .fedbuff import FedBuff
from .fedsa import FedSALearningRate
from .history import NodeHistory
from .memory import UpdateMemory
from .nova import WorkNormalisation
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
from .tuning import StalenessTarget
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
    "AdaptiveLocalWork",
    "AdaptiveScheduling",
    "AsyncResult",
    "Capped",
    "Claimed",
    "Constant",
    "DecompressReplies",
    "Equal",
    "ExampleWeighting",
    "FedBuff",
    "FedBuffStaleness",
    "FedSALearningRate",
    "Hinge",
    "InverseParticipation",
    "MedianCapped",
    "NodeFailure",
    "NodeHistory",
    "ParsedUpdate",
    "Polynomial",
    "RandomSample",
    "RejectedUpdate",
    "SchedulingPolicy",
    "ShuffleAll",
    "StalenessFn",
    "StalenessTarget",
    "UpdateMemory",
    "UpdateRejected",
    "VersionRecord",
    "WorkNormalisation",
    "closing_ledger",
    "example_weighting",
    "fedbuff_from_run_config",
    "mean_staleness",
    "parse_update",
    "scheduling_policy",
    "staleness_fn",
    "staleness_histogram",
]

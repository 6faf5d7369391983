"""FedBuff's settings: the constructor that checks and keeps them, and what they say.

:class:`~.fedbuff.FedBuff` documents every parameter and inherits this
constructor; :func:`~.arguments.check_arguments` checks the arguments first.
What the settings say: :meth:`~FedBuffSettings.summary` (the start-up log),
:meth:`~FedBuffSettings.config_dict` and :meth:`~FedBuffSettings.config_digest`
(what ledger blocks record), :meth:`~FedBuffSettings.policy_conflict` (the
update memory beside a ledger, a committee or fairness), and what the messages
it sends carry and how a reply is parsed, as the settings name their records.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore import log

from ..arrays import NDArrays
from ..ledger import Ledger
from ..ledger.canonical import LATEST_FORMAT, encode, sha256_hex
from ..ledger.consensus import TRUST_WEIGHTING
from ..pov.committee import Committee
from ..protocol import (
    DOWNLINK_KEY,
    MODEL_VERSION_KEY,
    SERVER_ROUND_KEY,
    SPARSE_REPLIES_KEY,
)
from .anchor import BlockAnchorer
from .arguments import MaxStaleness, check_arguments, require
from .evaluation import MetricsAggrFn
from .fairness import InverseParticipation
from .loop import QueuedDispatch
from .memory import UpdateMemory, memory_conflict
from .metrics import aggregate_metrics
from .nova import WorkNormalisation
from .scheduling import RandomSample, SchedulingPolicy
from .staleness import FedBuffStaleness, StalenessFn
from .state import DEFAULT_STATE_RULE, StateRule
from .state import state_rule as state_rule_named
from .tuning import StalenessTarget
from .updates import ParsedUpdate, parse_update
from .weighting import DEFAULT_WEIGHTING, ExampleWeighting


# pylint: disable=too-many-instance-attributes
class FedBuffSettings:
    """The settings of a :class:`~.fedbuff.FedBuff`, checked and kept as
    attributes (see its parameters)."""

    # pylint: disable=too-many-arguments,too-many-locals
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        *,
        buffer_size: int = 10,
        max_wait: float | None = None,
        staleness_fn: StalenessFn | None = None,
        max_staleness: MaxStaleness = "auto",
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        concurrency: int | None = None,
        example_weighting: ExampleWeighting | None = None,
        scheduling: SchedulingPolicy | None = None,
        fairness: InverseParticipation | None = None,
        work_normalisation: WorkNormalisation | None = None,
        update_memory: UpdateMemory | None = None,
        buffer_tuning: StalenessTarget | None = None,
        state_rule: StateRule = DEFAULT_STATE_RULE,
        state_patterns: Iterable[str] = (),
        message_ttl: float | None = None,
        membership_refresh: float = 5.0,
        retry_backoff: float = 10.0,
        evaluate_every: int | None = None,
        ledger: Ledger | str | Path | None = None,
        resume_with_changed_config: bool = False,
        time_budget: float | None = None,
        committee: Committee | None = None,
        seed: int | None = None,
        poll_interval: float = 0.1,
        downlink: bool = False,
        downlink_from_initial: bool = False,
        anchor: BlockAnchorer | None = None,
        queued_dispatch: QueuedDispatch = False,
        require_signed_replies: bool = False,
    ) -> None:
        check_arguments(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            buffer_size=buffer_size,
            max_wait=max_wait,
            max_staleness=max_staleness,
            server_lr=server_lr,
            server_momentum=server_momentum,
            concurrency=concurrency,
            message_ttl=message_ttl,
            membership_refresh=membership_refresh,
            retry_backoff=retry_backoff,
            evaluate_every=evaluate_every,
            time_budget=time_budget,
            poll_interval=poll_interval,
            downlink=downlink,
            downlink_from_initial=downlink_from_initial,
            queued_dispatch=queued_dispatch,
        )
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or aggregate_metrics
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn or aggregate_metrics
        self.buffer_size = buffer_size
        self.max_wait = max_wait
        self.staleness_fn: StalenessFn = staleness_fn or FedBuffStaleness()
        self.max_staleness: MaxStaleness = max_staleness
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.concurrency = concurrency
        self.example_weighting = example_weighting or DEFAULT_WEIGHTING
        self.scheduling = scheduling or RandomSample()
        self.fairness = fairness
        self.work_normalisation = work_normalisation
        self.update_memory = update_memory
        self.buffer_tuning = buffer_tuning
        self.state_rule: StateRule = state_rule_named(state_rule)
        self.state_patterns = tuple(state_patterns)
        self.message_ttl = message_ttl
        self.membership_refresh = membership_refresh
        self.retry_backoff = retry_backoff
        self.evaluate_every = evaluate_every
        self.ledger = ledger
        self.resume_with_changed_config = resume_with_changed_config
        self.time_budget = time_budget
        self.committee = committee
        self.seed = seed
        self.poll_interval = poll_interval
        self.downlink = bool(downlink)
        self.downlink_from_initial = bool(downlink_from_initial)
        require(anchor is None or ledger is not None, "anchor needs a ledger")
        self.anchor = anchor
        self.queued_dispatch: QueuedDispatch = queued_dispatch
        self.require_signed_replies = bool(require_signed_replies)
        conflict = self.policy_conflict()
        require(conflict is None, conflict or "")
        self._sample_rng = random.Random(seed)  # configure_evaluate's sample
        if fraction_evaluate == 0.0:
            log(WARNING, "fraction_evaluate is 0.0: no federated evaluation.")

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Buffer: K=%d, max_wait=%s", self.buffer_size, self.max_wait)
        log(
            INFO,
            "\t├──> Staleness: %s, max_staleness=%s",
            self.staleness_fn,
            self.max_staleness,
        )
        log(
            INFO,
            "\t├──> Server: lr=%s, momentum=%s, example weighting=%s",
            self.server_lr,
            self.server_momentum,
            self.example_weighting.spec,
        )
        log(INFO, "\t├──> PoV: %s, ledger: %s", self.committee, self.ledger)
        stragglers = (
            self.fairness,
            self.work_normalisation,
            self.update_memory,
            self.buffer_tuning,
        )
        if any(option is not None for option in stragglers):
            log(
                INFO,
                "\t├──> Stragglers: fairness=%s, work normalisation=%s, "
                "update memory=%s, buffer tuning=%s",
                *(option and option.spec for option in stragglers),
            )
        log(
            INFO,
            "\t├──> Evaluation: fraction_evaluate=%s, min_evaluate_nodes=%d, every=%s",
            self.fraction_evaluate,
            self.min_evaluate_nodes,
            self.evaluate_every or "one FedAvg round's worth of updates",
        )
        log(
            INFO,
            "\t└──> Dispatch: %s, scheduling=%s, ttl=%s, min_available_nodes=%d",
            f"concurrency={self.concurrency}"
            if self.concurrency is not None
            else f"fraction_train={self.fraction_train}, "
            f"min_train_nodes={self.min_train_nodes}",
            self.scheduling,
            self.message_ttl if self.message_ttl is not None else "timeout",
            self.min_available_nodes,
        )
        if self.downlink:
            log(
                INFO,
                "\t└──> Downlink: sparse deltas to nodes that keep their base%s",
                ", first models from the initial one"
                if self.downlink_from_initial
                else "",
            )
        if self.queued_dispatch:
            log(INFO, "\t└──> Queued dispatch: %s", self.queued_dispatch)

    def policy_conflict(self) -> str | None:
        """Why the update memory cannot run beside the ledger, committee or
        fairness set now, or ``None`` (checked here and again at start, as
        they are attributes)."""
        return memory_conflict(
            self.update_memory,
            ledger=self.ledger is not None,
            committee=self.committee is not None,
            fairness=self.fairness is not None,
        )

    def config_dict(self) -> dict[str, object]:
        """The settings that shape the global model (recorded in ledger blocks)."""
        config: dict[str, object] = {
            "strategy": type(self).__name__,
            "buffer_size": self.buffer_size,
            "max_wait": self.max_wait,
            "staleness_fn": repr(self.staleness_fn),
            "max_staleness": self.max_staleness,
            "server_lr": self.server_lr,
            "server_momentum": self.server_momentum,
            "concurrency": self.concurrency,
            "fraction_train": self.fraction_train,
            "min_train_nodes": self.min_train_nodes,
            "example_weighting": self.example_weighting.spec,
            "state_rule": self.state_rule,
            "state_patterns": list(self.state_patterns),
            "weighted_by_key": self.weighted_by_key,
            "arrayrecord_key": self.arrayrecord_key,
            "committee": repr(self.committee),
        } | {  # only when on: the default's digest, and its ledgers, are unchanged
            key: option.spec
            for key, option in (
                ("fairness", self.fairness),
                ("work_normalisation", self.work_normalisation),
                ("update_memory", self.update_memory),
                ("buffer_tuning", self.buffer_tuning),
            )
            if option is not None
        }
        if self.queued_dispatch:  # only when on, like the options above
            config["queued_dispatch"] = self.queued_dispatch
        if self.require_signed_replies:  # only when on: a replay then holds
            config["require_signed_replies"] = True  # every included update to it
        if self.committee is not None and self.committee.trust_weighting:
            config["trust_weighting"] = TRUST_WEIGHTING
        return config

    def config_digest(self) -> str:
        """SHA-256 of :meth:`config_dict` in canonical JSON, in the encoding new
        ledgers use (what their blocks hold as ``config_digest``)."""
        return sha256_hex(encode(LATEST_FORMAT, self.config_dict()))

    # ------------------------------------------ what a message carries
    def train_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of a train message asking a node to train on ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version + 1
        cfg[MODEL_VERSION_KEY] = version
        cfg[SPARSE_REPLIES_KEY] = True  # the DGC mod may compress its reply
        if self.downlink:  # downlink_mod may keep its base and say so
            cfg[DOWNLINK_KEY] = True
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    def evaluate_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of an evaluate message for ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version
        cfg[MODEL_VERSION_KEY] = version
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    def _parse(
        self, content: RecordDict, reference: NDArrays, trained_on: int | None = None
    ) -> ParsedUpdate:
        """Validate a train reply against the model it was trained on."""
        return parse_update(
            content,
            reference,
            arrayrecord_key=self.arrayrecord_key,
            weighted_by_key=self.weighted_by_key,
            trained_on=trained_on,
        )

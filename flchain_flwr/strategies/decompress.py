"""Let Flower's own strategies consume compressed (sparse delta) replies."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..protocol import (
    MODEL_VERSION_KEY,
    SPARSE_REPLIES_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
)
from .evaluation import valid_evaluate_content
from .result import RejectedUpdate
from .updates import (
    ParsedUpdate,
    UpdateRejected,
    parse_update,
)


class DecompressReplies(Strategy):
    """Wrap a Flower strategy so it accepts replies from the DGC mod.

    Each train reply is validated and decoded against the model that was sent:
    sparse or dense deltas become full weights (``sent + delta``), full weights
    pass as they are, and a malformed reply is dropped with its reason recorded
    in :attr:`rejected` instead of reaching the wrapped strategy. Everything else
    is the wrapped strategy's own behaviour, claims included: a reply's
    ``weighted_by_key`` reaches it as sent, so under FedAvg one node claiming
    1e12 examples takes the whole step (:class:`~flchain_flwr.pov.PoVStrategy`,
    which extends this, and FedBuff bound claims by an example weighting)::

        strategy = DecompressReplies(FedAvg(fraction_evaluate=0.0))

    Parameters
    ----------
    strategy : Strategy
        The strategy to wrap (FedAvg, FedProx, Krum, ...). Its ``start`` is not
        used: the wrapper runs Flower's synchronous loop around its methods.
    arrayrecord_key, weighted_by_key : str
        As in Flower's FedAvg.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        arrayrecord_key: str = "arrays",
        weighted_by_key: str = "num-examples",
    ) -> None:
        self.strategy = strategy
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self.rejected: list[RejectedUpdate] = []
        self._sent: NDArrays | None = None

    def summary(self) -> None:
        """Log summary configuration of the wrapped strategy."""
        log(INFO, "\t├──> DecompressReplies around %s", type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the model sent, tag the version, delegate."""
        self._sent = to_ndarrays(arrays)
        config[MODEL_VERSION_KEY] = server_round - 1
        config[SPARSE_REPLIES_KEY] = True  # the DGC mod may compress its reply
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode deltas into full weights, drop bad replies, delegate."""
        errors, updates = self._decode(server_round, replies)
        usable = errors + [self._as_weights(reply, update) for reply, update in updates]
        return self.strategy.aggregate_train(server_round, usable)

    def _decode(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[list[Message], list[tuple[Message, ParsedUpdate]]]:
        """Error replies (passed on as they are) and validated updates; each
        malformed reply is rejected with its reason."""
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        errors: list[Message] = []
        updates: list[tuple[Message, ParsedUpdate]] = []
        for reply in replies:
            if reply.has_error():
                errors.append(reply)
                continue
            try:
                update = parse_update(
                    reply.content,
                    self._sent,
                    arrayrecord_key=self.arrayrecord_key,
                    weighted_by_key=self.weighted_by_key,
                    trained_on=server_round - 1,
                )
            except UpdateRejected as exc:
                self._reject(reply, server_round - 1, exc.reason)
                continue
            updates.append((reply, update))
        return errors, updates

    def _as_weights(
        self,
        reply: Message,
        update: ParsedUpdate,
        received: RecordDict | None = None,
    ) -> Message:
        """The reply, handed to the wrapped strategy with full weights (a
        sparse or dense delta turned into them) in a content of its own.

        ``received`` (default: the reply's content) is the reply as received,
        and stays so whatever the wrapped strategy does to the records it is
        handed (Flower's server-side DP clipping replaces their arrays): a
        decision taken again hands on the same replies.
        """
        assert self._sent is not None
        content = reply.content if received is None else received
        delta = update.kind == UPDATE_KIND_DELTA
        handed = RecordDict(
            {
                name: record
                for name, record in content.items()
                if not delta
                or (name != UPDATE_INFO_KEY and name not in content.array_records)
            }
        )
        if delta:
            weights = apply_step(self._sent, update.delta, 1.0)
            handed[self.arrayrecord_key] = to_arrayrecord(weights)
        reply.content = handed
        return reply

    # pylint: disable=too-many-arguments
    def _reject(
        self,
        reply: Message,
        version: int,
        reason: str,
        votes: list[dict[str, Any]] | None = None,
        digest: str | None = None,
    ) -> None:
        """Record a reply that does not reach the wrapped strategy (``digest``
        is for subclasses that record it)."""
        node = reply.metadata.src_node_id
        log(WARNING, "Rejected reply from node %d: %s", node, reason)
        self.rejected.append(
            RejectedUpdate(node, version, version, 0.0, reason, votes or [])
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Drop malformed evaluate replies (as FedBuff does), delegate the rest."""
        return self.strategy.aggregate_evaluate(
            server_round, self._valid_evaluations(replies)
        )

    def _valid_evaluations(self, replies: Iterable[Message]) -> list[Message]:
        """The evaluate replies that are errors or valid; each malformed one
        logged and left out."""
        valid: list[Message] = []
        for reply in replies:
            if not reply.has_error():
                try:
                    valid_evaluate_content(reply.content, self.weighted_by_key)
                except UpdateRejected as exc:
                    node = reply.metadata.src_node_id
                    log(WARNING, "Rejected evaluate reply from node %d: %s", node, exc)
                    continue
            valid.append(reply)
        return valid

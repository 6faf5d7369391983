"""Let Flower's own strategies consume compressed (sparse delta) replies."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..protocol import MODEL_VERSION_KEY, UPDATE_INFO_KEY, UPDATE_KIND_DELTA
from .result import RejectedUpdate
from .updates import (
    UpdateRejected,
    parse_update,
)


class DecompressReplies(Strategy):
    """Wrap a Flower strategy so it accepts replies from the DGC mod.

    Each train reply is validated and decoded against the model that was sent:
    sparse or dense deltas become full weights (``sent + delta``), full weights
    pass as they are, and a malformed reply is dropped with its reason recorded
    in :attr:`rejected` instead of reaching the wrapped strategy. Everything else
    is the wrapped strategy's own behaviour::

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
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode deltas into full weights, drop bad replies, delegate."""
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        usable: list[Message] = []
        for reply in replies:
            if reply.has_error():
                usable.append(reply)
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
                node = reply.metadata.src_node_id
                log(WARNING, "Rejected reply from node %d: %s", node, exc.reason)
                self.rejected.append(
                    RejectedUpdate(
                        node, server_round - 1, server_round - 1, 0.0, exc.reason
                    )
                )
                continue
            if update.kind == UPDATE_KIND_DELTA:
                weights = apply_step(self._sent, update.delta, 1.0)
                content = RecordDict(
                    {
                        name: record
                        for name, record in reply.content.items()
                        if name != UPDATE_INFO_KEY
                        and name not in reply.content.array_records
                    }
                )
                content[self.arrayrecord_key] = to_arrayrecord(weights)
                reply.content = content
            usable.append(reply)
        return self.strategy.aggregate_train(server_round, usable)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

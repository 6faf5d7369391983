"""Toy trainers whose replies a test crafts per partition, on a virtual grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flchain_flwr.sim import DeviceProfile, VirtualGrid

from .toy import constant_work

Shape = Callable[[Message, int], Message]
"""How partition ``pid`` answers a train message."""


def honest_reply(msg: Message, pid: int) -> Message:
    """A full-weights reply: the model shifted by ``0.1 * (pid + 1)``, 10 examples."""
    trained = {
        k: Array(v.numpy() + np.float32(0.1 * (pid + 1)))
        for k, v in msg.content["arrays"].items()
    }
    content = RecordDict(
        {
            "arrays": ArrayRecord(trained),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content=content, reply_to=msg)


def crafted_app(
    crafted: Mapping[int, Shape],
    evaluations: Mapping[int, MetricRecord] | None = None,
) -> ClientApp:
    """Toy trainers; partition ``p`` in ``crafted`` answers with ``crafted[p]``
    (the others honestly); ``evaluations`` gives a partition's evaluate metrics
    (default: loss 1 on 10 examples)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return crafted.get(pid, honest_reply)(msg, pid)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        default = MetricRecord({"num-examples": 10, "loss": 1.0})
        metrics = (evaluations or {}).get(pid, default)
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def crafted_grid(
    crafted: Mapping[int, Shape],
    nodes: int = 3,
    evaluations: Mapping[int, MetricRecord] | None = None,
) -> VirtualGrid:
    """``nodes`` crafted trainers, speeds 1, 0.8, 0.6, ..., 1 s of work each."""
    return VirtualGrid(
        crafted_app(crafted, evaluations),
        [DeviceProfile(speed=1.0 - 0.2 * i) for i in range(nodes)],
        work_fn=constant_work(1.0),
    )

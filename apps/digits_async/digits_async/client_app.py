"""ClientApp: a plain Flower ClientApp; nothing in it is specific to FedBuff."""

from __future__ import annotations

import zlib
from typing import cast

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_async.task import evaluate, load_partition, new_model, train

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(
        context.node_config["num-partitions"]
    )


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition; reply with full weights."""
    cfg = context.run_config
    partition_id, num_partitions = _partition(context)
    x, y = load_partition(
        partition_id, num_partitions, float(cfg["dirichlet-alpha"]), int(cfg["seed"])
    )
    net = new_model(0)
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
    train_loss = train(
        net,
        x,
        y,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=zlib.crc32(f"{cfg['seed']}/{partition_id}/{server_round}".encode()),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord({"train-loss": train_loss, "num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local partition."""
    cfg = context.run_config
    partition_id, num_partitions = _partition(context)
    x, y = load_partition(
        partition_id, num_partitions, float(cfg["dirichlet-alpha"]), int(cfg["seed"])
    )
    net = new_model(0)
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate(net, x, y)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(y)}
            )
        }
    )
    return Message(content=content, reply_to=msg)

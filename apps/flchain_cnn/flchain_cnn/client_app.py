"""ClientApp: a plain Flower ClientApp; nothing in it is specific to FedBuff.

Node config (``flower-supernode --node-config``, or the simulation's defaults):

- ``partition-id``, ``num-partitions``: this node's share of the training data;
- ``compute-slowdown`` (default 1.0, at least 1): a device profile for
  deployments on uniform hardware; training takes this many times its real time
  (the node sleeps for the difference);
- ``role="verifier"`` with ``verifier-key="<path>"`` and ``verifier-shard=<i>``:
  the node trains nothing and serves as a PoV verifier with its own Ed25519 key
  and trusted shard ``i`` (see :mod:`flchain_flwr.pov.verifiernode`), keeping
  what it signed in ``verifier-state`` (default ``<verifier-key>.state``, see
  :mod:`flchain_flwr.pov.lockstate`);
- ``role="witness"`` with ``witness-dir="<path>"`` (a folder made by ``flchain
  witness init``): the node trains nothing and answers checkpoint cosigning
  queries (see :mod:`flchain_flwr.witness_node`);
- ``attack=...``: robustness experiments only (see :mod:`flchain_flwr.sim.attacks`);
- ``trainer-key="<path>"``: sign every train reply with this node's Ed25519
  trainer key (created 0600 if the file does not exist; see
  :mod:`flchain_flwr.mods.signreply`), so that the server, or anything on the
  path, cannot put an update of its own under this node's id that verifies
  under its key; a server run with ``require-signed-replies = true`` rejects
  unsigned replies.

With ``personal-alpha > 0`` the personalisation mod
(:mod:`flchain_flwr.mods.personal`) reports each node's mix of its local and the
global model beside the global one, and evaluation uses held-out test examples
in the node's label mix (:mod:`flchain_cnn.local_eval`), not its training data.

A train message's config may carry ``lr``, ``local-epochs`` or ``local-steps``
(a straggler policy's per-node choice, see :mod:`flchain_flwr.strategies.fedsa`
and :mod:`flchain_flwr.strategies.bafl`); they override the run config's for
that message. ``local-steps > 0`` trains that many minibatches instead of
epochs. Replies report the work done as ``examples-trained`` beside
``num-examples`` (the partition's size, which weights the update).
"""

from __future__ import annotations

import time
import zlib
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flchain_cnn.local_eval import local_test_indices, local_test_seed
from flchain_cnn.settings import app_settings
from flchain_cnn.task import (
    evaluate,
    held_partition,
    initial_arrays,
    load_test,
    load_trusted,
    reused_model,
    train,
)
from flchain_cnn.verifiers import app_verifier
from flchain_flwr import witness_node
from flchain_flwr.arrays import to_ndarrays
from flchain_flwr.configvalues import integer_value, number_value
from flchain_flwr.mods import (
    PersonalConfig,
    dgc_mod,
    downlink_mod,
    personal_mod,
    signreply_mod,
)
from flchain_flwr.pov import Verifier, verifiernode
from flchain_flwr.sim.attacks import attack_mod, poisoned_labels

NODE = "node config"
"""How errors name a node config key (``--node-config``)."""

# First, outside the rest, the trainer signature (inert unless the node config
# names a trainer-key): it signs the reply exactly as sent, DGC-compressed and
# with the downlink record, and names the model as received.
# Then the lossless sparse downlink's receiving half (inert unless the server runs
# with downlink = true; it builds the run's initial model itself for a server
# run with downlink-from-initial = true), then DGC compression of train replies,
# configured by the run config's dgc-* keys (dgc-density = 1.0, the default, sends dense
# updates and leaves replies alone). Both act only when the server says it
# speaks their format, so the app also runs under Flower's plain FedAvg.
# The attack mod only acts on nodes whose node config names an attack (robustness
# experiments, e.g. --node-config "attack='sign-flip'"); honest nodes pass through.
# The personalisation mod comes last, so it keeps the app's own trained weights
# (inert unless personal-alpha > 0).
app = ClientApp(
    mods=[
        signreply_mod,
        downlink_mod(initial_model=lambda c: to_ndarrays(initial_arrays(c.run_config))),
        dgc_mod(),
        attack_mod(),
        personal_mod(),
    ]
)


def _local_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    settings = app_settings(context.run_config)
    x, y = held_partition(
        (
            settings.dataset,
            _partition_id(context),
            integer_value(
                context.node_config, "num-partitions", minimum=1, source=NODE
            ),
            settings.dirichlet_alpha,
            settings.seed,
            settings.allow_download,
            settings.train_subset,
            settings.tier_classes,
        )
    )
    return x, poisoned_labels(context, y, num_classes=10)


def _partition_id(context: Context) -> int:
    return integer_value(context.node_config, "partition-id", minimum=0, source=NODE)


def _received_model(msg: Message, context: Context):  # type: ignore[no-untyped-def]
    settings = app_settings(context.run_config)
    net = reused_model(settings.dataset, settings.model)
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return net


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition; reply with full weights."""
    if verifiernode.is_verifier(context.node_config):
        raise ValueError("this node is a PoV verifier; it does not train")
    if witness_node.witness_from_node_config(context.node_config) is not None:
        raise ValueError("this node is a witness; it does not train")
    settings = app_settings(context.run_config)
    node = {"compute-slowdown": 1.0, **context.node_config}
    slowdown = number_value(node, "compute-slowdown", low=1.0, source=NODE)
    started = time.perf_counter()
    x, y = _local_data(context)
    net = _received_model(msg, context)
    server_round = int(cast(int, msg.content.config_records["config"]["server-round"]))
    partition_id = _partition_id(context)
    # A per-node lr or amount of local work in the train config (a straggler
    # policy's choice) overrides the run config's.
    config = msg.content.config_records["config"]
    epochs = int(cast(int, config.get("local-epochs", settings.local_epochs)))
    steps = int(cast(int, config.get("local-steps", settings.local_steps)))
    lr = float(cast(float, config.get("lr", settings.lr)))
    batch_size = settings.batch_size
    train_loss = train(
        net,
        x,
        y,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=zlib.crc32(f"{settings.seed}/{partition_id}/{server_round}".encode()),
        steps=steps,
    )
    trained = steps * batch_size if steps else epochs * len(y)
    if slowdown > 1.0:
        time.sleep((slowdown - 1.0) * (time.perf_counter() - started))
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord(
                {
                    "train-loss": train_loss,
                    "num-examples": len(y),
                    "examples-trained": trained,
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _local_test(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """Held-out test examples in this node's label mix, as many as it holds."""
    settings = app_settings(context.run_config)
    _, y_local = _local_data(context)
    x_test, y_test = load_test(
        settings.dataset, settings.allow_download, settings.test_subset
    )
    seed = local_test_seed(settings.seed, _partition_id(context))
    idx = local_test_indices(y_test, y_local, len(y_local), seed)
    return x_test[idx], y_test[idx]


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local partition (with personalisation
    on: on held-out test examples in the partition's label mix)."""
    personal = PersonalConfig.from_run_config(context.run_config) is not None
    x, y = _local_test(context) if personal else _local_data(context)
    loss, accuracy = evaluate(_received_model(msg, context), x, y)
    metrics = MetricRecord(
        {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(y)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def verifier(context: Context) -> Verifier | None:
    """This node's PoV verifier (node config ``role="verifier"``), else None.

    Its trusted data is shard ``verifier-shard`` of ``pov-remote-verifiers``
    shards of ``pov-trusted-examples`` examples (the end of the test set, which
    the server's evaluation leaves out); its reference update, for a direction
    test, is the one an in-process verifier trains (``pov-reference-epochs``).
    """
    cfg = context.run_config

    def make(key, shard: int) -> Verifier:  # type: ignore[no-untyped-def]
        settings = app_settings(cfg)
        count = settings.remote_verifiers
        if not 0 <= shard < count:
            raise ValueError(f"verifier-shard {shard} is not in [0, {count})")
        x, y = load_trusted(
            settings.dataset,
            count,
            settings.trusted_examples,
            settings.allow_download,
        )[shard]
        return app_verifier(cfg, x, y, key, shard)

    return verifiernode.verifier_from_node_config(context.node_config, make)


verifiernode.serve(app, verifier)
witness_node.serve_witness(app)

"""ServerApp: FedBuff in place of FedAvg; the rest is a standard Flower ServerApp."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from digits_async.task import evaluate, load_test, new_model
from flchain_flwr.strategies import FedBuff, staleness_fn

app = ServerApp()


def central_evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
    """Accuracy of a global model version on the server's held-out test set."""
    net = new_model(0)
    net.load_state_dict(arrays.to_torch_state_dict())
    x, y = load_test()
    loss, accuracy = evaluate(net, x, y)
    return MetricRecord({"loss": loss, "accuracy": accuracy})


def strategy_from_config(cfg: dict) -> FedBuff:  # type: ignore[type-arg]
    """Build the FedBuff strategy from the run config."""
    max_wait = float(cfg["max-wait"])
    max_staleness = int(cfg["max-staleness"])
    return FedBuff(
        buffer_size=int(cfg["buffer-size"]),
        max_wait=max_wait if max_wait > 0 else None,
        staleness_fn=staleness_fn(str(cfg["staleness"])),
        max_staleness=max_staleness if max_staleness >= 0 else None,
        server_lr=float(cfg["server-lr"]),
        server_momentum=float(cfg["server-momentum"]),
        min_available_nodes=1,
        seed=int(cfg["seed"]),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedBuff for ``num-server-rounds`` global versions."""
    cfg = context.run_config
    strategy = strategy_from_config(dict(cfg))
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(new_model(int(cfg["seed"])).state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_evaluate,
    )
    final = result.evaluate_metrics_serverapp.get(len(result.versions))
    print(
        f"final accuracy: {final['accuracy']:.4f}" if final else "no versions produced"
    )
    if cfg["results-path"]:
        path = Path(str(cfg["results-path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.history_dict(), indent=2))

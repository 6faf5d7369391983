"""ServerApp: FedBuff in place of FedAvg; the rest is a standard Flower ServerApp."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flchain_cnn.task import evaluate, load_test, new_model
from flchain_flwr.strategies import fedbuff_from_run_config

app = ServerApp()


def central_evaluator(
    dataset: str, allow_download: bool = False, test_subset: int = 0
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for ``dataset``: accuracy on the server's held-out test set."""
    x, y = load_test(dataset, allow_download, test_subset)

    def central_evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        net = new_model(dataset, 0)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(net, x, y)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    return central_evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedBuff until ``num-server-rounds`` global versions exist."""
    cfg = context.run_config
    dataset = str(cfg["dataset"])
    strategy = fedbuff_from_run_config(cfg, min_available_nodes=1)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(new_model(dataset, int(cfg["seed"])).state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_evaluator(
            dataset, bool(cfg["allow-download"]), int(cfg["test-subset"])
        ),
    )
    evaluations = result.evaluate_metrics_serverapp
    if evaluations:
        version = max(evaluations)
        accuracy = evaluations[version]["accuracy"]
        print(f"final accuracy: {accuracy:.4f} (version {version})")
    if cfg["results-path"]:
        path = Path(str(cfg["results-path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.history_dict(), indent=2))

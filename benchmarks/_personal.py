"""Personalised accuracy per device tier at the end of a stragglers run.

With ``personal-alpha > 0`` in the run config, the app's personalisation mod
(:mod:`flchain_flwr.mods.personal`) keeps each node's last trained model in its
``Context.state``; training is unchanged, so the run's trajectory is the one
without it. After the run this module evaluates, for every node, the final
global model and the node's mix (``alpha * local + (1 - alpha) * global``,
the mod's own :func:`~flchain_flwr.mods.personal.mix`) on the node's held-out
local test set (the app's :mod:`flchain_cnn.local_eval`: test examples in the
node's label mix), and averages each over the nodes of a tier. A node that
never finished a training has no local model: its mix is the global model.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord

from flchain_flwr.arrays import to_ndarrays
from flchain_flwr.mods import PersonalState
from flchain_flwr.mods.personal import mix
from flchain_flwr.sim import VirtualGrid


def personal_tiers(
    grid: VirtualGrid,
    final: ArrayRecord,
    tier_of: dict[int, int],
    config: dict[str, Any],
    tiers: int,
) -> dict[str, Any]:
    """Per tier, the mean over its nodes of the global model's and the mix's
    accuracy on each node's local test set; and the nodes without a local model."""
    import torch
    from flchain_cnn.local_eval import local_test_indices, local_test_seed
    from flchain_cnn.task import evaluate, load_partition, load_test, new_model

    torch.set_num_threads(1)
    dataset, size = str(config["dataset"]), str(config["model"])
    alpha, seed = float(config["personal-alpha"]), int(config["seed"])
    x_test, y_test = load_test(dataset, False, int(config["test-subset"]))
    global_model = to_ndarrays(final)
    net = new_model(dataset, 0, size)

    def accuracy(model: dict[str, Any], x: Any, y: Any) -> float:
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.items()})
        return float(evaluate(net, x, y)[1])

    sums = {"global": [0.0] * tiers, "personal": [0.0] * tiers}
    counts, untrained = [0] * tiers, 0
    for node in grid.node_ids:
        pid = grid.partition_of[node]
        _, y_local = load_partition(
            dataset,
            pid,
            len(grid.node_ids),
            float(config["dirichlet-alpha"]),
            seed,
            False,
            int(config["train-subset"]),
            str(config["tier-classes"]),
        )
        idx = local_test_indices(
            y_test, y_local, len(y_local), local_test_seed(seed, pid)
        )
        x, y = x_test[idx], y_test[idx]
        local = PersonalState.load(grid.contexts[node].state).local
        untrained += local is None
        mixed = global_model if local is None else mix(global_model, local, alpha)
        tier = tier_of[node]
        sums["global"][tier] += accuracy(global_model, x, y)
        sums["personal"][tier] += accuracy(mixed, x, y)
        counts[tier] += 1
    means = {
        key: [s / max(c, 1) for s, c in zip(values, counts, strict=True)]
        for key, values in sums.items()
    }
    return {
        "alpha": alpha,
        "global_tier_accuracy": means["global"],
        "personal_tier_accuracy": means["personal"],
        "nodes_without_local_model": untrained,
    }

"""Run whole federations in-process on the virtual-clock grid."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import Result, Strategy

from ..configvalues import ConfigValue
from ..runtime import collect_results
from .devices import DeviceProfile
from .grid import VirtualGrid
from .work import WorkFn


@dataclass
class SimulationRun:
    """What an in-process federation produced.

    ``result`` is the (last) strategy result; ``results`` all published results
    when a whole ServerApp ran; ``grid`` holds per-node traffic and the clock.
    """

    result: Result | None
    results: list[Result]
    grid: VirtualGrid
    wall_seconds: float

    @property
    def simulated_seconds(self) -> float:
        """Simulated time at the end of the run."""
        return self.grid.clock.time


# pylint: disable=too-many-arguments
def simulate(
    strategy: Strategy,
    grid: VirtualGrid,
    initial_arrays: ArrayRecord,
    *,
    num_rounds: int,
    timeout: float = 3600.0,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
) -> SimulationRun:
    """Run any Flower strategy on a :class:`VirtualGrid`, in simulated time.

    Works for :class:`~flchain_flwr.strategies.FedBuff` and for Flower's own
    strategies unchanged (their ``send_and_receive`` advances the clock to the
    slowest reply, which is exactly what a synchronous round costs). Build the
    grid with :class:`VirtualGrid`; ``grid.clock.now()`` is
    the simulated time, e.g. inside ``evaluate_fn``.
    """
    started = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        timeout=timeout,
        train_config=train_config,
        evaluate_config=evaluate_config,
        evaluate_fn=evaluate_fn,
    )
    return SimulationRun(result, [result], grid, time.perf_counter() - started)


def run_federation(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    devices: Sequence[DeviceProfile],
    run_config: dict[str, ConfigValue] | None = None,
    node_configs: Sequence[dict[str, ConfigValue]] | None = None,
    seed: int = 0,
    work_fn: WorkFn | None = None,
) -> SimulationRun:
    """Run a whole ServerApp + ClientApp federation in-process, in simulated time.

    The ServerApp gets a :class:`VirtualGrid` and a Context carrying
    ``run_config``; every result a strategy publishes while it runs is returned.
    """
    config = dict(run_config or {})
    grid = VirtualGrid(
        client_app,
        devices,
        node_configs=node_configs,
        run_config=config,
        seed=seed,
        work_fn=work_fn,
    )
    context = Context(
        run_id=grid.run.run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=config,
    )
    started = time.perf_counter()
    with collect_results() as results:
        server_app(grid, context)
    return SimulationRun(
        results[-1] if results else None,
        list(results),
        grid,
        time.perf_counter() - started,
    )


def app_run_config(
    app_dir: str | Path, overrides: Mapping[str, ConfigValue] | None = None
) -> dict[str, ConfigValue]:
    """Read a Flower App's ``[tool.flwr.app.config]`` (flattened), with overrides."""
    path = Path(app_dir) / "pyproject.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no pyproject.toml in {app_dir}")
    data = tomllib.loads(path.read_text())
    try:
        table = data["tool"]["flwr"]["app"]["config"]
    except KeyError:
        raise ValueError(f"{path} has no [tool.flwr.app.config] table") from None
    config = _flatten(table)
    unknown = sorted(set(overrides or {}) - set(config))
    if unknown:
        raise KeyError(f"unknown run-config keys {unknown}; known: {sorted(config)}")
    config.update(overrides or {})
    return config


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, ConfigValue]:
    out: dict[str, ConfigValue] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out

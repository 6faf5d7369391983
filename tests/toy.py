"""A tiny numpy-only ClientApp with scripted behaviours, for strategy tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY


def initial_arrays() -> ArrayRecord:
    """The toy global model: two float32 arrays."""
    return ArrayRecord(
        {
            "w": Array(np.zeros(3, dtype=np.float32)),
            "b": Array(np.zeros((2, 2), dtype=np.float32)),
        }
    )


def shift_of(partition_id: int) -> float:
    """How far node ``partition_id`` moves every array, per train message."""
    return 0.1 * (partition_id + 1)


def examples_of(partition_id: int) -> int:
    """The example count node ``partition_id`` reports."""
    return 10 * (partition_id + 1)


def _reply(msg: Message, arrays: ArrayRecord, n: object) -> Message:
    content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}
    )  # type: ignore[dict-item]
    return Message(content=content, reply_to=msg)


def _trained(msg: Message, pid: int) -> dict[str, np.ndarray]:
    return {
        k: v.numpy() + np.float32(shift_of(pid))
        for k, v in msg.content["arrays"].items()
    }


def _misbehave(mode: str, msg: Message, pid: int) -> Message:
    trained = _trained(msg, pid)
    n = examples_of(pid)
    if mode == "raise":
        raise RuntimeError("scripted client failure")
    if mode == "error-reply":
        return Message(Error(code=42, reason="scripted error reply"), reply_to=msg)
    if mode in ("nan", "inf"):
        trained["w"][1] = np.nan if mode == "nan" else np.inf
    elif mode == "shape":
        trained["w"] = np.zeros(4, dtype=np.float32)
    elif mode == "dtype":
        trained["w"] = trained["w"].astype(np.float64)
    elif mode == "missing":
        del trained["b"]
    elif mode == "extra":
        trained["z"] = np.zeros(1, dtype=np.float32)
    elif mode == "no-metrics":
        arrays = ArrayRecord({k: Array(v) for k, v in trained.items()})
        return Message(content=RecordDict({"arrays": arrays}), reply_to=msg)
    elif mode == "zero-examples":
        n = 0
    elif mode == "nan-examples":
        return _reply(
            msg, ArrayRecord({k: Array(v) for k, v in trained.items()}), float("nan")
        )
    elif mode == "corrupt-bytes":
        arrays = ArrayRecord({k: Array(v) for k, v in trained.items()})
        arrays["w"].data = arrays["w"].data[:-3]
        return _reply(msg, arrays, n)
    else:
        raise ValueError(f"unknown mode {mode}")
    return _reply(msg, ArrayRecord({k: Array(v) for k, v in trained.items()}), n)


def toy_client_app(
    behaviours: Mapping[int, str] | None = None,
    *,
    on_train: Callable[[Message, Context], None] | None = None,
    mods: list[Callable[..., Message]] | None = None,
) -> ClientApp:
    """A ClientApp whose node ``p`` adds ``shift_of(p)`` to every array.

    ``behaviours`` maps a partition id to a misbehaviour (``raise``, ``nan``,
    ``shape``, ``delta`` ...); others behave.
    """
    app = ClientApp(mods=mods)  # type: ignore[arg-type]
    modes = dict(behaviours or {})

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if on_train is not None:
            on_train(msg, context)
        mode = modes.get(pid, "ok")
        if mode == "ok":
            trained = _trained(msg, pid)
            return _reply(
                msg,
                ArrayRecord({k: Array(v) for k, v in trained.items()}),
                examples_of(pid),
            )
        if mode == "delta":
            delta = {
                k: np.full_like(v.numpy(), shift_of(pid))
                for k, v in msg.content["arrays"].items()
            }
            reply = _reply(
                msg,
                ArrayRecord({k: Array(v) for k, v in delta.items()}),
                examples_of(pid),
            )
            reply.content[UPDATE_INFO_KEY] = ConfigRecord(
                {UPDATE_KIND_KEY: UPDATE_KIND_DELTA}
            )
            return reply
        return _misbehave(mode, msg, pid)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        w = msg.content["arrays"]["w"].numpy()
        metrics = MetricRecord(
            {"mean-w": float(w.mean()), "num-examples": examples_of(pid)}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def constant_work(seconds: float) -> Callable[[Message, Message], float]:
    """A work model where every message costs ``seconds`` at speed 1."""
    return lambda _msg, _reply: seconds


class FlowerLogLines:
    """Collect the messages Flower's logger emits inside a ``with`` block, at
    ``level`` and above, whatever other tests did to its level or propagation."""

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level
        self.lines: list[str] = []
        self._handler = logging.Handler(level)
        self._handler.emit = lambda record: self.lines.append(record.getMessage())  # type: ignore[method-assign]

    def __enter__(self) -> FlowerLogLines:
        self._old_level = FLOWER_LOGGER.level
        FLOWER_LOGGER.setLevel(min(self.level, self._old_level or self.level))
        FLOWER_LOGGER.addHandler(self._handler)
        return self

    def __exit__(self, *_: object) -> None:
        FLOWER_LOGGER.removeHandler(self._handler)
        FLOWER_LOGGER.setLevel(self._old_level)

"""Models, data and training for the app: sklearn digits or Fashion-MNIST.

``dataset = "digits"`` (the default) needs no download: scikit-learn ships it.
``dataset = "fashion-mnist"`` reads Debian's dataset-fashion-mnist IDX files, or
downloads from the Hugging Face hub when ``allow-download`` is true.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib.metadata import version

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from flchain_cnn.settings import app_settings
from flchain_flwr.configvalues import ConfigValue
from flchain_flwr.data import (
    dirichlet_partition,
    load_digits_split,
    parse_tier_classes,
    tier_partition,
)
from flchain_flwr.data.cache import KeyValue, cached_arrays
from flchain_flwr.data.fashion_mnist import load_fashion_mnist, local_dir
from flchain_flwr.training import evaluate, train

__all__ = [
    "CNN",
    "DigitsNet",
    "FashionNet",
    "evaluate",
    "held_partition",
    "initial_arrays",
    "load_partition",
    "load_test",
    "load_trusted",
    "new_model",
    "reused_model",
    "train",
]

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class CNN(nn.Module):
    """Two conv + max-pool blocks, then a two-layer classifier over 10 classes."""

    def __init__(self, image_size: int, channels: tuple[int, int], hidden: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def DigitsNet() -> CNN:
    """The digits CNN for 8x8 images (about 14k parameters)."""
    return CNN(8, (16, 32), 64)


def FashionNet() -> CNN:
    """The Fashion-MNIST CNN (about 1.63M parameters, most in the first dense layer)."""
    return CNN(28, (32, 64), 512)


def SmallFashionNet() -> CNN:
    """A small Fashion-MNIST CNN (about 52k parameters) for many-run benchmarks."""
    return CNN(28, (8, 16), 64)


DATASETS: dict[str, tuple[Callable[[bool], Split], Callable[[], nn.Module]]] = {
    "digits": (lambda _download: load_digits_split(), DigitsNet),
    "fashion-mnist": (load_fashion_mnist, FashionNet),
}
SMALL_MODELS: dict[str, Callable[[], nn.Module]] = {
    "digits": DigitsNet,
    "fashion-mnist": SmallFashionNet,
}
MODEL_SIZES = ("default", "small")


def _dataset(name: str) -> tuple[Callable[[bool], Split], Callable[[], nn.Module]]:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}"
        ) from None


def new_model(dataset: str, seed: int, size: str = "default") -> nn.Module:
    """A freshly initialised model for ``dataset``, identical for the same seed.

    ``size="small"`` picks a smaller network where the dataset has one.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {MODEL_SIZES}")
    build = _dataset(dataset)[1] if size == "default" else SMALL_MODELS[dataset]
    torch.manual_seed(seed)
    return build()


def initial_arrays(run_config: Mapping[str, ConfigValue]) -> ArrayRecord:
    """The run's initial model, as the ServerApp starts from it: seeded by the
    run config's ``seed``, so a node's ``downlink_mod`` rebuilds the same one
    (see :mod:`flchain_flwr.mods.downlink`). Leaves torch's global RNG as it was."""
    settings = app_settings(run_config)
    with torch.random.fork_rng():
        net = new_model(settings.dataset, settings.seed, settings.model)
    return ArrayRecord(net.state_dict())


_NETS = threading.local()


def reused_model(dataset: str, size: str = "default") -> nn.Module:
    """This thread's one model for ``dataset`` and ``size``, to load weights into.

    A ClientApp loads every received model into a network; building a fresh one
    per message drew initial weights only to overwrite them (a tenth of a
    node's time in the in-process simulation). ``load_state_dict`` replaces
    every parameter, and training starts by clearing gradients, so a reused
    network computes exactly what a fresh one would. The next call in the same
    thread reuses it again: keep nothing of it past the message.
    """
    nets: dict[tuple[str, str], nn.Module] = _NETS.__dict__.setdefault("nets", {})
    if (dataset, size) not in nets:
        nets[dataset, size] = new_model(dataset, 0, size)
    return nets[dataset, size]


def load_partition(  # pylint: disable=too-many-arguments
    dataset: str,
    partition_id: int,
    num_partitions: int,
    alpha: float,
    seed: int,
    allow_download: bool = False,
    train_subset: int = 0,
    tier_classes: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """The training examples of one node under a Dirichlet(alpha) label split.

    ``train_subset > 0`` first keeps only that many training examples (for quick
    experiments); 0 uses them all. ``tier_classes`` (e.g. ``"0,1,2,3;4,5,6;7,8,9"``)
    gives partition ``i`` only the classes of tier ``i % tiers``, Dirichlet(alpha)
    within the tier (:func:`~flchain_flwr.data.tier_partition`); "" splits every
    class over every partition.

    The result is cached on disk (:mod:`flchain_flwr.data.cache`), keyed by
    these arguments and the data's source, so a fresh ClientApp process per
    message reads one partition's ``.npy`` files instead of loading the
    dataset and partitioning it again.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {num_partitions})")
    _dataset(dataset)  # an unknown name fails here, before a cache key is made
    key: dict[str, KeyValue] = {
        "what": "partition",
        "dataset": dataset,
        "source": _source(dataset, allow_download),
        "partition-id": partition_id,
        "num-partitions": num_partitions,
        "alpha": float(alpha),
        "seed": seed,
        "train-subset": train_subset,
        "tier-classes": tier_classes,
    }
    x, y = cached_arrays(
        key,
        lambda: _load_partition(
            dataset,
            partition_id,
            num_partitions,
            alpha,
            seed,
            allow_download,
            train_subset,
            tier_classes,
        ),
    )
    return x, y


PartitionArgs = tuple[str, int, int, float, int, bool, int, str]
""":func:`load_partition`'s arguments, in order."""


def held_partition(args: PartitionArgs) -> tuple[np.ndarray, np.ndarray]:
    """``load_partition(*args)``, kept in memory for the process's last 128.

    For a process that serves many messages (the in-process simulation, where
    reading the ``.npy`` files per message was a tenth of a node's time). Kept
    per data source too. Every caller gets the same arrays: do not modify them.
    """
    return _held_partition(_source(args[0], args[5]), args)


@lru_cache(maxsize=128)
def _held_partition(
    _source_key: str, args: PartitionArgs
) -> tuple[np.ndarray, np.ndarray]:
    return load_partition(*args)


def _source(dataset: str, allow_download: bool) -> str:
    """Where ``dataset`` comes from: part of a cache key, so a change of
    source (another IDX folder, the hub) never reads another's cache."""
    if dataset == "digits":
        return f"scikit-learn {version('scikit-learn')}"  # without importing it
    directory = local_dir()
    return str(directory.resolve()) if directory else "hub" if allow_download else ""


def _load_partition(  # pylint: disable=too-many-arguments
    dataset: str,
    partition_id: int,
    num_partitions: int,
    alpha: float,
    seed: int,
    allow_download: bool,
    train_subset: int,
    tier_classes: str,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_partition` without the cache."""
    x_train, y_train, _, _ = _dataset(dataset)[0](allow_download)
    if train_subset > 0:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    idx = _partitions(
        dataset, allow_download, train_subset, num_partitions, alpha, seed, tier_classes
    )[partition_id]
    return x_train[idx], y_train[idx]


@lru_cache(maxsize=8)
def _partitions(  # pylint: disable=too-many-arguments
    dataset: str,
    allow_download: bool,
    train_subset: int,
    num_partitions: int,
    alpha: float,
    seed: int,
    tier_classes: str,
) -> list[np.ndarray]:
    """Every partition's indices (computed once per setting: nodes ask per message)."""
    y_train = _dataset(dataset)[0](allow_download)[1]
    if train_subset > 0:
        y_train = y_train[:train_subset]
    if tier_classes:
        tiers = parse_tier_classes(tier_classes)
        return tier_partition(y_train, num_partitions, tiers, alpha, seed=seed)
    return dirichlet_partition(y_train, num_partitions, alpha, seed=seed)


def load_test(
    dataset: str,
    allow_download: bool = False,
    test_subset: int = 0,
    reserved: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The server's held-out test set (its first ``test_subset`` examples if > 0).

    ``reserved`` examples at the end are left out (they are the PoV verifiers'
    trusted data, see :func:`load_trusted`).
    """
    _, _, x_test, y_test = _dataset(dataset)[0](allow_download)
    end = len(y_test) - reserved
    if end < 1:
        raise ValueError(
            f"the test set has {len(y_test)} examples, {reserved} reserved"
        )
    x_test, y_test = x_test[:end], y_test[:end]
    if test_subset > 0:
        return x_test[:test_subset], y_test[:test_subset]
    return x_test, y_test


def load_trusted(
    dataset: str, count: int, per_verifier: int, allow_download: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Disjoint trusted shards of ``per_verifier`` examples for ``count`` PoV
    verifiers, from the end of the test set (which :func:`load_test` then
    leaves out)."""
    _, _, x_test, y_test = _dataset(dataset)[0](allow_download)
    total = count * per_verifier
    if total >= len(y_test):
        raise ValueError(f"{total} trusted examples do not fit in the test set")
    x, y = x_test[-total:], y_test[-total:]
    return [
        (
            x[i * per_verifier : (i + 1) * per_verifier],
            y[i * per_verifier : (i + 1) * per_verifier],
        )
        for i in range(count)
    ]

"""Fashion-MNIST: offline from IDX files, online through Hugging Face as a fallback.

Offline, the IDX files of Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``, ``make data`` installs it) are read with
numpy (``.gz`` or plain); the ``FLCHAIN_FASHION_MNIST_DIR`` environment variable,
when set, names the only directory looked in instead. With no local copy,
``allow_download=True`` takes the dataset from the Hugging Face hub
(``zalando-datasets/fashion_mnist``) through ``datasets``.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "FLCHAIN_FASHION_MNIST_DIR"
HUB_DATASET = "zalando-datasets/fashion_mnist"
_FILES = {
    "x_train": ("train-images-idx3-ubyte", 2051),
    "y_train": ("train-labels-idx1-ubyte", 2049),
    "x_test": ("t10k-images-idx3-ubyte", 2051),
    "y_test": ("t10k-labels-idx1-ubyte", 2049),
}

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array; check its header."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ValueError(
            f"{path}: header says {dims}, data has {len(raw) - offset} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def local_dir() -> Path | None:
    """The directory holding the four IDX files, if it has them all.

    That is ``$FLCHAIN_FASHION_MNIST_DIR`` when set (and nothing else), else
    Debian's directory.
    """
    directory = Path(os.environ.get(DIR_ENV) or DEBIAN_DIR)
    if all(_find(directory, name) for name, _ in _FILES.values()):
        return directory
    return None


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _normalise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (x.astype(np.float32) / 255.0)[:, None, :, :], y.astype(np.int64)


@lru_cache(maxsize=1)
def load_fashion_mnist(allow_download: bool = False) -> Split:
    """Return ``(x_train, y_train, x_test, y_test)``: float32 (N, 1, 28, 28), int64.

    Raises ``FileNotFoundError`` with what to install when there is no local copy
    and downloading is not allowed.
    """
    directory = local_dir()
    if directory is not None:
        parts = {
            key: read_idx(_find(directory, stem), magic)  # type: ignore[arg-type]
            for key, (stem, magic) in _FILES.items()
        }
        x_train, y_train = _normalise(parts["x_train"], parts["y_train"])
        x_test, y_test = _normalise(parts["x_test"], parts["y_test"])
        return x_train, y_train, x_test, y_test
    if not allow_download:
        raise FileNotFoundError(
            "Fashion-MNIST not found: install Debian's dataset-fashion-mnist "
            f"(IDX files in {DEBIAN_DIR}; `make data`), set {DIR_ENV}, or allow "
            f"the download from the Hugging Face hub ({HUB_DATASET})"
        )
    return _from_hub()


def _from_hub() -> Split:  # pragma: no cover - needs a network
    from datasets import load_dataset

    data = load_dataset(HUB_DATASET)
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        images = np.stack(
            [np.asarray(img, dtype=np.uint8) for img in data[split]["image"]]
        )
        out.extend(_normalise(images, np.asarray(data[split]["label"])))
    return out[0], out[1], out[2], out[3]

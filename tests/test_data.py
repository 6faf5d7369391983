"""Dataset loaders: IDX parsing, Fashion-MNIST discovery, Dirichlet partitions."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flchain_flwr.data import dirichlet_partition, load_digits_split
from flchain_flwr.data import fashion_mnist as fm


def write_idx(path: Path, array: np.ndarray, magic: int, *, gz: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_fashion_mnist(directory: Path, *, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for (stem, magic), shape in zip(
        fm._FILES.values(), [(6, 28, 28), (6,), (4, 28, 28), (4,)], strict=True
    ):
        write_idx(
            directory / (stem + suffix), rng.integers(0, 10, size=shape), magic, gz=gz
        )


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_is_read_from_idx_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool
) -> None:
    fake_fashion_mnist(tmp_path, gz=gz)
    monkeypatch.setenv("FLCHAIN_FASHION_MNIST_DIR", str(tmp_path))
    fm.load_fashion_mnist.cache_clear()
    x_train, y_train, x_test, y_test = fm.load_fashion_mnist()
    fm.load_fashion_mnist.cache_clear()
    assert x_train.shape == (6, 1, 28, 28) and x_test.shape == (4, 1, 28, 28)
    assert x_train.dtype == np.float32 and x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert y_train.dtype == np.int64 and y_test.shape == (4,)


def test_bad_idx_files_are_rejected(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.zeros((2, 3)), 2051, gz=False)
    with pytest.raises(ValueError, match="magic 2049"):
        fm.read_idx(tmp_path / "a", 2049)
    (tmp_path / "b").write_bytes(
        (2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\0"
    )
    with pytest.raises(ValueError, match="data has 1 bytes"):
        fm.read_idx(tmp_path / "b", 2049)


def test_missing_fashion_mnist_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLCHAIN_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    fm.load_fashion_mnist.cache_clear()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load_fashion_mnist()
    fm.load_fashion_mnist.cache_clear()


def test_the_directory_variable_is_the_only_place_looked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "debian"
    debian.mkdir()
    fake_fashion_mnist(debian)
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    monkeypatch.delenv(fm.DIR_ENV, raising=False)
    assert fm.local_dir() == debian
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(fm.DIR_ENV, str(empty))
    assert fm.local_dir() is None  # no silent fallback to Debian's copy
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"")  # one file of four
    assert fm.local_dir() is None


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("benchmark", ["ledger", "compression", "robustness"])
def test_benchmarks_without_fashion_mnist_say_make_data(
    tmp_path: Path, benchmark: str
) -> None:
    """A benchmark that needs Fashion-MNIST stops at once, exit code 2, with one
    line naming `make data`, when the IDX files are not there."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{benchmark}.py"), "--out", str(out)],
        env={**os.environ, fm.DIR_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "make data" in lines[0] and str(tmp_path) in lines[0]
    assert lines[0].startswith(f"{benchmark}.py: Fashion-MNIST")
    assert not out.exists()


@pytest.mark.skipif(
    fm.local_dir() is None, reason="Debian's dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_when_installed() -> None:
    x_train, y_train, x_test, _ = fm.load_fashion_mnist()
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert sorted(np.unique(y_train)) == list(range(10))


def test_dirichlet_partition_is_label_skewed_and_covers_everything() -> None:
    _, y, _, _ = load_digits_split()
    parts = dirichlet_partition(y, 10, 0.3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    again = dirichlet_partition(y, 10, 0.3, seed=1)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))  # seeded
    # skew: some partition is dominated by few labels
    top_share = max(np.bincount(y[p], minlength=10).max() / len(p) for p in parts)
    assert top_share > 0.4
    with pytest.raises(ValueError):
        dirichlet_partition(y, 0, 0.3)

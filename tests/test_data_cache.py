"""The on-disk array cache, and the app's partitions read through it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flchain_flwr.data import fashion_mnist as fm
from flchain_flwr.data.cache import CACHE_ENV, cache_dir, cached_arrays, entry_path

KEY = {"what": "test", "seed": 3}
TASK = Path(__file__).parent.parent / "apps" / "flchain_cnn" / "flchain_cnn" / "task.py"


def this_checkouts_task() -> ModuleType:
    """The app's task module of this checkout (not an installed copy)."""
    spec = importlib.util.spec_from_file_location("checkout_flchain_cnn_task", TASK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counting(arrays: tuple[np.ndarray, ...]) -> tuple[list[int], object]:
    calls: list[int] = []

    def compute() -> tuple[np.ndarray, ...]:
        calls.append(1)
        return arrays

    return calls, compute


def sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((5, 1, 8, 8), dtype=np.float32), np.arange(5, dtype=np.int64)


def test_second_call_reads_the_same_arrays(tmp_path: Path) -> None:
    calls, compute = counting(sample())
    first = cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    second = cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 1
    for a, b, c in zip(sample(), first, second, strict=True):
        assert a.dtype == b.dtype == c.dtype
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_another_key_is_another_entry(tmp_path: Path) -> None:
    calls, compute = counting(sample())
    cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    cached_arrays({**KEY, "seed": 4}, compute, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 2
    assert entry_path(KEY, tmp_path) != entry_path({**KEY, "seed": 4}, tmp_path)


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path: Path) -> None:
    calls, compute = counting(sample())
    cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    (entry_path(KEY, tmp_path) / "0.npy").write_bytes(b"not an npy file")
    again = cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 2 and np.array_equal(again[0], sample()[0])
    cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 2  # the rewritten entry reads back


def test_an_entry_with_another_key_is_recomputed(tmp_path: Path) -> None:
    calls, compute = counting(sample())
    cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    (entry_path(KEY, tmp_path) / "key.json").write_text('{"what": "else"}')
    cached_arrays(KEY, compute, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 2


def test_an_unwritable_cache_still_returns_the_arrays(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    calls, compute = counting(sample())
    out = cached_arrays(KEY, compute, blocker / "cache")  # type: ignore[arg-type]
    assert len(calls) == 1 and np.array_equal(out[1], sample()[1])


def test_cache_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "flchain-flwr"


def test_bad_key_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cache key"):
        cached_arrays({"what": [1, 2]}, sample, tmp_path)  # type: ignore[dict-item]


def test_app_partition_cached_equals_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    task = this_checkouts_task()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    args = ("digits", 1, 3, 0.3, 42, False, 0, "")
    expected = task._load_partition(*args)
    cold = task.load_partition(*args)
    assert len(list(tmp_path.iterdir())) == 1  # written
    warm = task.load_partition(*args)
    for got in (cold, warm):
        for a, b in zip(expected, got, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    other = task.load_partition("digits", 1, 3, 0.3, 43, False, 0, "")
    assert not np.array_equal(other[1], expected[1])  # another seed, another entry
    with pytest.raises(ValueError, match="partition-id"):
        task.load_partition("digits", 3, 3, 0.3, 42)


def test_app_held_partition_is_read_once_per_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, a node's partition is read from the disk cache once, and kept
    apart per data source (another IDX folder is another entry)."""
    pytest.importorskip("torch")
    task = this_checkouts_task()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    args = ("digits", 2, 3, 0.3, 42, False, 0, "")
    first = task.held_partition(args)
    for a, b in zip(task.load_partition(*args), first, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    again = task.held_partition(args)
    assert all(a is b for a, b in zip(first, again, strict=True))  # not re-read
    monkeypatch.setattr(task, "_source", lambda *_: "another folder")
    moved = task.held_partition(args)
    assert all(a is not b for a, b in zip(first, moved, strict=True))


def test_app_reused_model_trains_exactly_like_a_fresh_one() -> None:
    """The app loads each received model into one reused network per thread;
    what a training leaves in it (weights, gradients) must not change the
    next message's result."""
    torch = pytest.importorskip("torch")
    task = this_checkouts_task()
    x, y = task.load_partition("digits", 0, 3, 0.3, 42)
    received = task.new_model("digits", 7).state_dict()

    def trained(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
        net.load_state_dict(received)
        task.train(net, x, y, epochs=1, lr=0.05, batch_size=16, seed=seed)
        return {k: v.clone() for k, v in net.state_dict().items()}

    fresh = trained(task.new_model("digits", 0), seed=1)
    reused = task.reused_model("digits")
    other = trained(reused, seed=2)  # leaves other weights and gradients behind
    assert any(not torch.equal(other[k], fresh[k]) for k in fresh)
    assert task.reused_model("digits") is reused
    again = trained(task.reused_model("digits"), seed=1)
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)


def test_a_miss_returns_the_layout_a_hit_reads(tmp_path: Path) -> None:
    """Rows picked from an image array with an added channel axis keep a
    non-standard stride on that size-1 axis; ``np.load`` gives standard ones.
    A miss must return what a later hit reads, strides included."""
    images = np.random.default_rng(0).random((9, 8, 8), dtype=np.float32)
    rows = images[:, None, :, :][np.array([4, 1, 7])]
    assert rows.strides != np.empty_like(rows, order="C").strides  # the hazard
    cold = cached_arrays(KEY, lambda: (rows,), tmp_path)
    warm = cached_arrays(KEY, lambda: (rows,), tmp_path)
    assert (
        cold[0].strides
        == warm[0].strides
        == np.load(entry_path(KEY, tmp_path) / "0.npy").strides
    )
    assert np.array_equal(cold[0], rows)


@pytest.mark.skipif(
    fm.local_dir() is None, reason="Debian's dataset-fashion-mnist absent"
)
def test_app_trains_the_same_from_a_cold_or_warm_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's training must not depend on whether its partition was computed
    (cold cache) or read back (warm): torch picks its convolution from the
    strides, even those of the size-1 channel axis (the 28x28 images show it;
    the 8x8 digits happen not to)."""
    torch = pytest.importorskip("torch")
    task = this_checkouts_task()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    args = ("fashion-mnist", 0, 3, 100.0, 2, False, 600, "")
    received = task.new_model("fashion-mnist", 7, "small").state_dict()

    def trained(x: np.ndarray, y: np.ndarray) -> list[torch.Tensor]:
        net = task.new_model("fashion-mnist", 0, "small")
        net.load_state_dict(received)
        task.train(net, x, y, epochs=1, lr=0.05, batch_size=32, seed=1)
        return list(net.state_dict().values())

    cold = trained(*task.load_partition(*args))
    warm = trained(*task.load_partition(*args))
    assert all(torch.equal(a, b) for a, b in zip(cold, warm, strict=True))

"""Arrays cached on disk as ``.npy``, keyed by what produced them.

In deployment every message starts a fresh ClientApp process, which would
otherwise load the dataset and partition it again (seconds per message). The
first process writes its arrays under the cache folder; later ones read them
back with :func:`numpy.load` (no pickle).

The folder is ``$FLCHAIN_DATA_CACHE`` when set, else
``$XDG_CACHE_HOME/flchain-flwr`` (``~/.cache/flchain-flwr``). An entry is a
folder named by the SHA-256 of its key (canonical JSON) holding ``key.json``
and ``0.npy``, ``1.npy``, ...; it is written under a temporary name and
renamed into place, so a reader never sees half an entry. An entry whose key
or files do not read back is recomputed (and replaced), never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

CACHE_ENV = "FLCHAIN_DATA_CACHE"
CACHE_FORMAT = 1  # bump when what a key describes is computed differently

KeyValue = str | int | float | bool
Arrays = tuple[np.ndarray, ...]


def cache_dir() -> Path:
    """The cache folder (see the module docstring); not created here."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flchain-flwr"


def _key_text(key: Mapping[str, KeyValue]) -> str:
    for name, value in key.items():
        if not isinstance(value, str | int | float | bool):
            raise TypeError(f"cache key {name!r} must be a str or number: {value!r}")
    return json.dumps(
        {"cache-format": CACHE_FORMAT, **key}, sort_keys=True, separators=(",", ":")
    )


def entry_path(key: Mapping[str, KeyValue], directory: Path | None = None) -> Path:
    """Where the entry for ``key`` lives."""
    digest = hashlib.sha256(_key_text(key).encode()).hexdigest()[:32]
    return (directory or cache_dir()) / digest


def _read(folder: Path, key_text: str) -> Arrays | None:
    """The entry's arrays, or None when it is missing or does not match."""
    try:
        if (folder / "key.json").read_text() != key_text:
            return None
        arrays: list[np.ndarray] = []
        while (path := folder / f"{len(arrays)}.npy").exists():
            arrays.append(np.load(path, allow_pickle=False))
    except (OSError, ValueError):
        return None
    return tuple(arrays) or None


def cached_arrays(
    key: Mapping[str, KeyValue],
    compute: Callable[[], Arrays],
    directory: Path | None = None,
) -> Arrays:
    """``compute()``'s arrays, read from the cache entry for ``key`` if it is
    there, else computed and written there.

    A miss returns the arrays laid out as a hit reads them (C order, standard
    strides), so what is computed from them does not depend on the cache. A
    cache that cannot be written (read-only disk, no home) is skipped: the
    arrays are still returned.
    """
    folder = entry_path(key, directory)
    key_text = _key_text(key)
    cached = _read(folder, key_text)
    if cached is not None:
        return cached
    # A fresh C-order copy has the strides np.load gives a hit. Not
    # np.ascontiguousarray: it keeps an odd stride on a size-1 axis (rows
    # picked from images[:, None]), and torch reads such a batch as
    # channels-last and convolves it by another path: a model trained on a
    # miss's arrays differed from one trained on a hit's.
    arrays = tuple(np.array(a, order="C") for a in compute())
    with contextlib.suppress(OSError):  # unwritable: it costs time only
        _write(folder, key_text, arrays)
    return arrays


def _write(folder: Path, key_text: str, arrays: Arrays) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for index, array in enumerate(arrays):
            np.save(tmp / f"{index}.npy", array, allow_pickle=False)
        (tmp / "key.json").write_text(key_text)
        if folder.exists():  # a bad entry (it did not read back): replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if _read(folder, key_text) is None:  # not another writer's good copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

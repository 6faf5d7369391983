"""A content-addressed store for blobs (models, server state, update payloads):
files named by their SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import RecordDict

from .canonical import decode_model, model_chunks
from .payload import decode_payload, payload_chunks


class BlobStore:
    """Blobs in ``root/<first two hex digits>/<sha256>``.

    A blob is written to a temporary file while it is hashed (one pass over the
    bytes) and renamed into place, so a reader never sees a partial blob, and a
    crash leaves at most a stray temporary file.
    """

    def __init__(self, root: str | Path, *, durable: bool = False) -> None:
        self.root = Path(root)
        self.durable = durable

    def path_of(self, digest: str) -> Path:
        """Where the blob with this SHA-256 lives (whether or not it exists)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put_model(self, arrays: Mapping[str, np.ndarray]) -> str:
        """Store a model; return its SHA-256 (the model hash)."""
        return self._put(model_chunks(arrays))

    def put_update(self, node_id: int, content: RecordDict) -> str:
        """Store a reply's content as received from ``node_id``; return its
        SHA-256 (see :mod:`~flchain_flwr.ledger.payload`)."""
        return self._put(payload_chunks(node_id, content))

    def _put(self, chunks: Iterable[bytes | memoryview]) -> str:
        """Write ``chunks`` as one blob; return its SHA-256."""
        self.root.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                if self.durable:
                    out.flush()
                    os.fsync(out.fileno())
            digest = hasher.hexdigest()
            final = self.path_of(digest)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            if self.durable:  # make the rename itself survive a power loss
                dir_fd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        """The blob's bytes; ``FileNotFoundError`` if it is not stored."""
        return self.path_of(digest).read_bytes()

    def has(self, digest: str) -> bool:
        """Whether a blob with this hash is stored."""
        return self.path_of(digest).is_file()

    def check(self, digest: str, what: str = "model blob") -> str | None:
        """``None`` if the stored blob hashes to ``digest``, else what is wrong."""
        path = self.path_of(digest)
        if not path.is_file():
            return f"{what} {digest[:16]}… is missing from the store"
        hasher = hashlib.sha256()
        with path.open("rb") as blob:
            while chunk := blob.read(1 << 20):
                hasher.update(chunk)
        if hasher.hexdigest() != digest:
            return f"{what} {digest[:16]}… does not hash to its name"
        return None

    def load_model(self, digest: str) -> dict[str, np.ndarray]:
        """Decode a stored model, after checking its hash."""
        problem = self.check(digest)
        if problem is not None:
            raise ValueError(problem)
        return decode_model(self.get(digest))

    def load_update(self, digest: str) -> tuple[int, RecordDict]:
        """Decode a stored update payload (node id, content), after checking
        its hash."""
        path = self.path_of(digest)
        if not path.is_file():
            raise ValueError(f"update payload {digest[:16]}… is missing from the store")
        data = path.read_bytes()  # hashed and decoded from one read
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"update payload {digest[:16]}… does not hash to its name")
        return decode_payload(data)

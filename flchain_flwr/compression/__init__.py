"""The sparse wire format for compressed updates."""

from .sparse import (
    FORMAT_VERSION,
    SPARSE_STYPE,
    SparseFormatError,
    decode,
    encode,
    index_width,
    is_sparse,
)

__all__ = [
    "FORMAT_VERSION",
    "SPARSE_STYPE",
    "SparseFormatError",
    "decode",
    "encode",
    "index_width",
    "is_sparse",
]

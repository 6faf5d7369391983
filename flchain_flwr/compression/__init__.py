"""The sparse wire format for compressed updates."""

from .sparse import (
    FORMAT_VERSION,
    SPARSE_STYPE,
    SUPPORTED_VERSIONS,
    SparseFormatError,
    encode,
    index_width,
    is_sparse,
    payload_size,
)
from .sparse_decode import decode, decode_entries

__all__ = [
    "FORMAT_VERSION",
    "SPARSE_STYPE",
    "SUPPORTED_VERSIONS",
    "SparseFormatError",
    "decode",
    "decode_entries",
    "encode",
    "index_width",
    "is_sparse",
    "payload_size",
]

"""The sparse wire format for compressed updates."""

from .sparse import (
    FORMAT_VERSION,
    SPARSE_STYPE,
    SUPPORTED_VERSIONS,
    SparseFormatError,
    decode,
    decode_entries,
    encode,
    index_width,
    is_sparse,
    payload_size,
)

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

"""A hash-chained, signed ledger of accepted aggregations, with Merkle proofs."""

from .blobs import BlobStore
from .canonical import decode_model, model_hash, update_digest
from .chain import (
    Block,
    Ledger,
    LedgerError,
    VerifyReport,
    check_proof,
    sign_vote,
    vote_payload,
)
from .merkle import InvalidProof, merkle_root
from .rewards import RewardShare, contributions, reward_shares

__all__ = [
    "BlobStore",
    "Block",
    "InvalidProof",
    "Ledger",
    "LedgerError",
    "RewardShare",
    "VerifyReport",
    "check_proof",
    "contributions",
    "decode_model",
    "merkle_root",
    "model_hash",
    "reward_shares",
    "sign_vote",
    "update_digest",
    "vote_payload",
]

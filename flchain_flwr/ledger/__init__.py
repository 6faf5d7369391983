"""A hash-chained, signed ledger of accepted aggregations, with Merkle proofs."""

from .blobs import BlobStore
from .canonical import decode_model, model_hash, sender_update_digest, update_digest
from .chain import (
    Block,
    BlockSigner,
    Ledger,
    LedgerError,
    VerifyReport,
    check_proof,
    check_vote,
    sign_vote,
    vote_payload,
)
from .consensus import PoVRules, PoVState, quorum, select_committee
from .merkle import InvalidProof, merkle_root
from .rewards import RewardShare, contributions, reward_shares

__all__ = [
    "BlobStore",
    "Block",
    "BlockSigner",
    "InvalidProof",
    "Ledger",
    "LedgerError",
    "PoVRules",
    "PoVState",
    "RewardShare",
    "VerifyReport",
    "check_proof",
    "check_vote",
    "contributions",
    "decode_model",
    "merkle_root",
    "model_hash",
    "quorum",
    "reward_shares",
    "select_committee",
    "sender_update_digest",
    "sign_vote",
    "update_digest",
    "vote_payload",
]

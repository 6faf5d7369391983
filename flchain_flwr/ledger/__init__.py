"""A hash-chained, signed ledger of accepted aggregations, with Merkle proofs."""

from .blobs import BlobStore
from .canonical import decode_model, model_hash, sender_update_digest, update_digest
from .chain import (
    Block,
    BlockSigner,
    CheckpointNotWritten,
    Ledger,
    LedgerError,
    VerifyReport,
    VoteContext,
    check_proof,
    check_vote,
    sign_vote,
    vote_payload,
)
from .consensus import (
    PoVRules,
    PoVState,
    VoteRules,
    judged_shares,
    quorum,
    rule_digest,
    select_committee,
)
from .merkle import InvalidProof, merkle_root
from .rewards import RewardShare, contributions, reward_shares

__all__ = [
    "BlobStore",
    "Block",
    "BlockSigner",
    "CheckpointNotWritten",
    "InvalidProof",
    "Ledger",
    "LedgerError",
    "PoVRules",
    "PoVState",
    "RewardShare",
    "VerifyReport",
    "VoteContext",
    "VoteRules",
    "check_proof",
    "check_vote",
    "contributions",
    "decode_model",
    "judged_shares",
    "merkle_root",
    "model_hash",
    "quorum",
    "reward_shares",
    "rule_digest",
    "select_committee",
    "sender_update_digest",
    "sign_vote",
    "update_digest",
    "vote_payload",
]

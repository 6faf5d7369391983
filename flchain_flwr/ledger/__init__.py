"""A hash-chained, signed ledger of accepted aggregations, with Merkle proofs.

The names below are imported on first use (:mod:`flchain_flwr._lazy`), so
importing one light submodule (``canonical`` for a model hash) does not load
the rest.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .blobs import BlobStore
    from .blocks import Block, BlockSigner, LedgerError
    from .canonical import decode_model, model_hash, sender_update_digest, update_digest
    from .chain import Ledger
    from .checkpointwriter import CheckpointNotWritten
    from .consensus import (
        PoVRules,
        VoteRules,
        judged_shares,
        quorum,
        rule_digest,
        select_committee,
    )
    from .merkle import InvalidProof, merkle_root
    from .povstate import PoVState
    from .proofcheck import check_proof
    from .rewards import RewardShare, contributions, reward_shares
    from .verify import VerifyReport
    from .votes import VoteContext, check_vote, sign_vote, vote_payload

_MODULES = {
    "blobs": ["BlobStore"],
    "blocks": ["Block", "BlockSigner", "LedgerError"],
    "canonical": [
        "decode_model",
        "model_hash",
        "sender_update_digest",
        "update_digest",
    ],
    "chain": ["Ledger"],
    "checkpointwriter": ["CheckpointNotWritten"],
    "consensus": [
        "PoVRules",
        "VoteRules",
        "judged_shares",
        "quorum",
        "rule_digest",
        "select_committee",
    ],
    "merkle": ["InvalidProof", "merkle_root"],
    "povstate": ["PoVState"],
    "proofcheck": ["check_proof"],
    "rewards": ["RewardShare", "contributions", "reward_shares"],
    "verify": ["VerifyReport"],
    "votes": ["VoteContext", "check_vote", "sign_vote", "vote_payload"],
}
if not TYPE_CHECKING:  # so that mypy still refuses names not exported
    __getattr__ = lazy_exports(
        __name__, {name: module for module, names in _MODULES.items() for name in names}
    )

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

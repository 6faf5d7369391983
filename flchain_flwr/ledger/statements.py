"""The statements PoV committee members sign besides votes (see :mod:`.quorum`),
and the one a trainer signs over its reply (see :mod:`.trainers`).

Each is a tag line and an RFC 8785 object, signed with Ed25519; both are in
``docs/test-vectors.md``.
"""

from __future__ import annotations

from typing import Final

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .canonical import LATEST_FORMAT, encode, is_hex

HEADER_SIG_TAG: Final = b"flchain-header-sig/1\n"
VIEW_CHANGE_TAG: Final = b"flchain-view-change/1\n"
TRAINER_SIG_TAG: Final = b"flchain-trainer-sig/1\n"


def header_statement(
    chain_id: str, height: int, view: int, block_hash: str, replayed: bool
) -> bytes:
    """What a committee member signs to approve the block ``block_hash``."""
    return HEADER_SIG_TAG + encode(
        LATEST_FORMAT,
        {
            "chain_id": chain_id,
            "height": height,
            "view": view,
            "block": block_hash,
            "replayed": replayed,
        },
    )


def view_change_statement(
    chain_id: str, height: int, view: int, prev_hash: str
) -> bytes:
    """What a committee member signs to give up ``view`` at ``height``."""
    return VIEW_CHANGE_TAG + encode(
        LATEST_FORMAT,
        {"chain_id": chain_id, "height": height, "view": view, "prev_hash": prev_hash},
    )


def trainer_statement(node_id: int, update: str, model: str) -> bytes:
    """What node ``node_id``'s trainer key signs for a train reply: the
    :func:`~.canonical.update_digest` ``update`` of the reply without its
    signature record, and the :func:`~.canonical.model_hash` ``model`` of the
    global model it trained on (the node id as decimal text: a 64-bit id has no
    exact RFC 8785 number)."""
    return TRAINER_SIG_TAG + encode(
        LATEST_FORMAT, {"node_id": str(int(node_id)), "update": update, "model": model}
    )


def signature_ok(public_hex: str, message: bytes, signature_hex: str) -> bool:
    """Whether ``signature_hex`` is ``public_hex``'s Ed25519 signature, both
    in the one form :func:`sign_statement` and the key writers write (lower-
    case hex, :func:`~.canonical.is_hex`: ``bytes.fromhex`` alone also reads
    upper case and spaces, so a stored signature or key that no hash covers
    would have many spellings); ``False`` for anything malformed."""
    if not is_hex(signature_hex, 128) or not is_hex(public_hex, 64):
        return False
    try:
        VerifyKey(bytes.fromhex(public_hex)).verify(
            message, bytes.fromhex(signature_hex)
        )
    except (CryptoError, ValueError):
        return False  # a key that is no curve point, a forgery
    return True


def sign_statement(key: SigningKey, message: bytes) -> str:
    """``key``'s signature over ``message``, as hex."""
    return key.sign(message).signature.hex()

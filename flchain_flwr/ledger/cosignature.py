"""C2SP tlog cosignatures (c2sp.org/tlog-cosignature), Ed25519 ``cosignature/v1``.

A cosignature is a signed-note signature line on a checkpoint, by a *witness*
(cosigner), saying "as of time ``t``, this is the largest consistent tree head I
have seen for this origin". Its key ID uses signature type ``0x04``::

    key ID    = SHA-256(<name> || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]
    signature = u64 big-endian timestamp || Ed25519(message), 72 bytes
    message   = "cosignature/v1\\n" "time <timestamp>\\n" <checkpoint note text>

A witness's secret key is an ordinary Ed25519 note signer key
(:class:`~flchain_flwr.ledger.notekeys.SignerKey`, so its file is the
``PRIVATE+KEY+...`` form of :mod:`~flchain_flwr.ledger.notekeys`); its public
key is published as a vkey with type byte ``0x04``
(``<name>+<hex key ID>+base64(0x04 || public key)``, :class:`CosignerKey`).
An ordinary ``0x01`` note key never verifies a cosignature, and a
cosignature's line is ignored by ordinary note verification (its key ID
differs), as the spec intends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from .notes import (
    SIGNATURE_SIZE,
    NoteError,
    NoteSignature,
    PublicNoteKey,
    SignedNote,
    SignerKey,
    check_note_text,
)

COSIGNATURE_V1: Final = 0x04
"""The signature type byte of Ed25519 ``cosignature/v1`` keys."""
COSIGNATURE_SIZE: Final = 8 + SIGNATURE_SIZE
"""Bytes after the key ID: the 8-byte timestamp and the Ed25519 signature."""
MAX_TIMESTAMP: Final = 2**63 - 1
_HEADER: Final = "cosignature/v1\n"


class CosignatureError(NoteError):
    """A cosignature or cosigner key is malformed or does not verify."""


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a ``cosignature/v1`` signs: header, time line, checkpoint text."""
    check_note_text(text)
    _check_timestamp(timestamp)
    return f"{_HEADER}time {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class CosignerKey(PublicNoteKey):
    """A witness's public key: a name and an Ed25519 key, type ``0x04``
    (its key ID is ``SHA-256(name || 0x0A || 0x04 || key)[:4]``).

    Parameters
    ----------
    name : str
        The witness's key name (a schema-less URL, by the spec's advice).
    public_key : bytes
        The 32-byte Ed25519 public key.
    """

    ALGORITHM: ClassVar[int] = COSIGNATURE_V1
    KIND: ClassVar[str] = "cosignature/v1 (0x04)"
    WHAT: ClassVar[str] = "cosigner key"
    ERROR: ClassVar[type[NoteError]] = CosignatureError

    def verify(self, text: str, signature: NoteSignature) -> int:
        """Check this key's cosignature line on a checkpoint text.

        Returns
        -------
        int
            The cosignature's timestamp (POSIX seconds).

        Raises
        ------
        CosignatureError
            If the line is not by this key (name, key ID), is not 72 bytes, its
            timestamp is out of range, or the Ed25519 signature fails.
        """
        if (signature.name, signature.key_id) != (self.name, self.key_id):
            raise CosignatureError(
                f"the line by {signature.name} ({signature.key_id.hex()}) is not "
                f"a cosignature by {self}"
            )
        timestamp = cosignature_timestamp(signature)
        message = cosigned_message(text, timestamp)
        try:
            VerifyKey(self.public_key).verify(message, signature.signature[8:])
        except CryptoError:
            raise CosignatureError(
                f"the cosignature by {self} does not verify"
            ) from None
        return timestamp


def cosigner_of(signer: SignerKey) -> CosignerKey:
    """The public cosigner key of a witness's secret key."""
    return CosignerKey(signer.name, bytes(signer.signing_key.verify_key))


def parse_cosigner_key(vkey: str) -> CosignerKey:
    """Parse a cosigner vkey, ``<name>+<hex key ID>+base64(0x04 || key)``.

    Raises
    ------
    CosignatureError
        If it is malformed, of another signature type, or its key ID does not
        match its name and key.
    """
    return CosignerKey.parse(vkey.strip())


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The timestamp of a ``cosignature/v1`` line (not verified).

    Raises
    ------
    CosignatureError
        If the signature is not 72 bytes or the timestamp exceeds 2**63 - 1.
    """
    if len(signature.signature) != COSIGNATURE_SIZE:
        raise CosignatureError(
            f"a cosignature/v1 by {signature.name} has 72 bytes after its key ID, "
            f"not {len(signature.signature)}"
        )
    (timestamp,) = struct.unpack(">Q", signature.signature[:8])
    _check_timestamp(timestamp)
    return int(timestamp)


def cosign(text: str, signer: SignerKey, timestamp: int) -> NoteSignature:
    """A witness's ``cosignature/v1`` line on a checkpoint text.

    Parameters
    ----------
    text : str
        The checkpoint's note text (signatures excluded).
    signer : SignerKey
        The witness's secret key.
    timestamp : int
        POSIX seconds, ``0 <= timestamp < 2**63`` (callers choose the clock).
    """
    message = cosigned_message(text, timestamp)
    signature = signer.signing_key.sign(message).signature
    key = cosigner_of(signer)
    return NoteSignature(key.name, key.key_id, struct.pack(">Q", timestamp) + signature)


def add_cosignature(note: SignedNote, line: NoteSignature) -> SignedNote:
    """The note with one more signature line (refused if the same key signed)."""
    return SignedNote(note.text, (*note.signatures, line))


def verify_cosignatures(
    note: SignedNote, keys: Iterable[CosignerKey]
) -> dict[str, int]:
    """Every trusted witness's valid cosignature on a note.

    Lines from unknown keys are ignored; a line whose name and key ID match a
    trusted key but whose signature fails makes the whole note invalid (as in
    signed-note).

    Returns
    -------
    dict[str, int]
        The trusted cosigner vkeys that cosigned, each with its timestamp.

    Raises
    ------
    CosignatureError
        If a trusted key's cosignature line is malformed or does not verify.
    """
    trusted = {(key.name, key.key_id): key for key in keys}
    found: dict[str, int] = {}
    for line in note.signatures:
        key = trusted.get((line.name, line.key_id))
        if key is not None:
            found[key.encode()] = key.verify(note.text, line)
    return found


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise CosignatureError(f"a timestamp is an integer, not {timestamp!r}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise CosignatureError(f"timestamp {timestamp} is out of range")

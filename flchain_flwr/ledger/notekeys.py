"""Ed25519 note keys: key IDs, public keys (vkeys) and signer keys.

A note key is a key name and an Ed25519 key. Its 4-byte key ID, which each
of its signature lines carries, is ``SHA-256(name || 0x0A || type ||
public key)[:4]`` (:func:`key_id`; the type byte is 0x01 for notes, 0x04 for
cosignatures). A verifier key's text form, a vkey, is ``<name>+<hex key
ID>+base64(type || public key)`` (:class:`VerifierKey`,
:func:`parse_verifier_key`). The signed-note spec defines no text form for
signer keys: :class:`SignerKey` writes and reads the one of Go's
``golang.org/x/mod/sumdb/note`` package, so keys move between the two,
``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte Ed25519 seed)``
(:func:`parse_signer_key`; its errors never quote the secret). A key file
holds one text form and a newline (:func:`write_key_file`, mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final, Self

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from ..quoting import clip
from .atomicfile import write_file_atomically
from .inputfile import read_head
from .noteformat import (
    KEY_ID_SIZE,
    NoteError,
    NoteSignature,
    check_key_name,
    check_note_text,
    note_b64decode,
)

ED25519: Final = 0x01
"""The signature type byte of Ed25519 note signatures."""
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SIGNER_KEY_PREFIX: Final = "PRIVATE+KEY+"
MAX_KEY_FILE_BYTES: Final = 1 << 16
"""Largest key file read (a key is one line; its name may be long)."""

_HEX: Final = frozenset("0123456789abcdef")


def key_id(name: str, public_key: bytes, algorithm: int = ED25519) -> bytes:
    """The 4-byte ID of an Ed25519 note key.

    Parameters
    ----------
    name : str
        The key name (checked with :func:`check_key_name`).
    public_key : bytes
        The 32-byte Ed25519 public key.
    algorithm : int
        The signature type byte: 0x01 for notes, 0x04 for cosignature/v1.

    Returns
    -------
    bytes
        ``SHA-256(name || 0x0A || algorithm || public_key)[:4]``.
    """
    check_key_name(name)
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise NoteError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([algorithm]) + public_key
    ).digest()
    return digest[:KEY_ID_SIZE]


@dataclass(frozen=True)
class PublicNoteKey:
    """A named public Ed25519 key of one signature type (its vkey's type byte,
    which its key ID hashes in); :class:`VerifierKey` and
    :class:`~flchain_flwr.ledger.cosignature.CosignerKey` differ only in it.

    Parameters
    ----------
    name : str
        The key name.
    public_key : bytes
        The 32-byte Ed25519 public key.
    """

    ALGORITHM: ClassVar[int] = ED25519
    """The signature type byte."""
    KIND: ClassVar[str] = "Ed25519 (0x01)"
    WHAT: ClassVar[str] = "verifier key"
    ERROR: ClassVar[type[NoteError]] = NoteError

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise self.ERROR(
                f"an Ed25519 public key has 32 bytes, not {len(self.public_key)}"
            )

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID signature lines carry."""
        return key_id(self.name, self.public_key, self.ALGORITHM)

    def encode(self) -> str:
        """The vkey text form: ``<name>+<hex key ID>+base64(type || key)``."""
        data = base64.b64encode(bytes([self.ALGORITHM]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{data.decode('ascii')}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, vkey: str) -> Self:
        """Parse a vkey, ``<name>+<hex key ID>+base64(type || public key)``;
        :attr:`ERROR` if it is malformed, of another type, or its key ID does
        not match its name and key."""
        parts = vkey.split("+", 2)  # names have no '+'; base64 may have some
        if len(parts) != 3:
            raise cls.ERROR(
                f"not a {cls.WHAT} (<name>+<key ID>+<key>): {clip(vkey, 80)!r}"
            )
        name, hex_id, data = parts
        try:
            raw = _key_bytes(name, hex_id, data, cls.WHAT, quote=True, kind=cls)
            key = cls(name, raw)
            _check_key_id(key.key_id, hex_id, name, cls.WHAT)
        except NoteError as exc:
            raise cls.ERROR(str(exc)) from None
        return key


@dataclass(frozen=True)
class VerifierKey(PublicNoteKey):
    """A public Ed25519 note key (type 0x01) and its name."""

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            VerifyKey(self.public_key).verify(message, signature)
        except CryptoError:  # BadSignatureError, or a key that is not a point
            return False
        return True


@dataclass(frozen=True)
class SignerKey:
    """A private Ed25519 note key and its name (the seed is never printed).

    Parameters
    ----------
    name : str
        The key name.
    signing_key : nacl.signing.SigningKey
        The Ed25519 key.
    """

    name: str
    signing_key: SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)

    @property
    def verifier(self) -> VerifierKey:
        """The matching public key."""
        return VerifierKey(self.name, bytes(self.signing_key.verify_key))

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID this key's signature lines carry."""
        return self.verifier.key_id

    def encode(self) -> str:
        """The secret text form: ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01
        || seed)`` (Go's ``sumdb/note`` signer key)."""
        data = base64.b64encode(bytes([ED25519]) + bytes(self.signing_key))
        return (
            f"{SIGNER_KEY_PREFIX}{self.name}+{self.key_id.hex()}+{data.decode('ascii')}"
        )

    def sign(self, text: str) -> NoteSignature:
        """This key's signature line over a note text."""
        check_note_text(text)
        signed = self.signing_key.sign(text.encode("utf-8"))
        return NoteSignature(self.name, self.key_id, signed.signature)


def generate_signer_key(name: str) -> SignerKey:
    """A new random Ed25519 note key named ``name``."""
    return SignerKey(name, SigningKey.generate())


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse a vkey, ``<name>+<hex key ID>+base64(0x01 || public key)``.

    Raises
    ------
    NoteError
        If it is malformed, not Ed25519, or its key ID does not match its name
        and key.
    """
    return VerifierKey.parse(vkey)


def parse_signer_key(skey: str) -> SignerKey:
    """Parse a signer key, ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 ||
    seed)``; errors never quote the secret.

    Raises
    ------
    NoteError
        If it is malformed, not Ed25519, or its key ID does not match.
    """
    if not skey.startswith(SIGNER_KEY_PREFIX):
        raise NoteError(f"a signer key starts with {SIGNER_KEY_PREFIX!r}")
    parts = skey[len(SIGNER_KEY_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise NoteError("not a signer key (PRIVATE+KEY+<name>+<key ID>+<key>)")
    name, hex_id, data = parts
    seed = _key_bytes(name, hex_id, data, "signer key", quote=False)
    key = SignerKey(name, SigningKey(seed))
    _check_key_id(key.key_id, hex_id, name, "signer key")
    return key


def _key_bytes(
    name: str,
    hex_id: str,
    data: str,
    what: str,
    *,
    quote: bool,
    kind: type[PublicNoteKey] = PublicNoteKey,
) -> bytes:
    """The 32 key bytes of a vkey's or skey's parts, checked for form (the
    type byte must be ``kind``'s)."""
    check_key_name(name)
    what = f"{what} {clip(name, 80)}"
    if len(hex_id) != 2 * KEY_ID_SIZE or any(c not in _HEX for c in hex_id):
        raise NoteError(f"{what}: the key ID must be 8 lower-case hex digits")
    raw = note_b64decode(data, what, quote=quote)
    if not raw or raw[0] != kind.ALGORITHM:
        found = f"0x{raw[0]:02x}" if raw else "missing"
        raise NoteError(f"{what}: signature type {found} is not {kind.KIND}")
    if len(raw) != 1 + PUBLIC_KEY_SIZE:
        raise NoteError(f"{what}: an Ed25519 key has 32 bytes, not {len(raw) - 1}")
    return raw[1:]


def _check_key_id(actual: bytes, written: str, name: str, what: str) -> None:
    if actual.hex() != written:
        raise NoteError(
            f"{what} {clip(name, 80)}: key ID {written} does not match the key "
            f"(expected {actual.hex()})"
        )


def write_key_file(
    path: str | Path, key: SignerKey | VerifierKey, *, overwrite: bool = False
) -> None:
    """Write a key's text form and a newline to ``path``, mode 0600, durably.

    Parameters
    ----------
    path : str | Path
        The file; its folder must exist.
    key : SignerKey | VerifierKey
        A signer key (written as ``PRIVATE+KEY+...``) or a vkey.
    overwrite : bool (default: False)
        Replace an existing file; by default an existing key is never lost.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    data = (key.encode() + "\n").encode("utf-8")
    write_file_atomically(path, data, mode=0o600, overwrite=overwrite)


def read_signer_key(path: str | Path) -> SignerKey:
    """The signer key in a file written by :func:`write_key_file`."""
    return parse_signer_key(_read_key_text(path))


def read_verifier_key(path: str | Path) -> VerifierKey:
    """The vkey in a file (one line, as :func:`write_key_file` writes it)."""
    return parse_verifier_key(_read_key_text(path))


def _read_key_text(path: str | Path) -> str:
    data = read_head(path, MAX_KEY_FILE_BYTES)  # a regular file only
    if len(data) > MAX_KEY_FILE_BYTES:
        raise NoteError(f"{path} does not hold a key (over {MAX_KEY_FILE_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{path} does not hold a key (not UTF-8)") from None
    return text.removesuffix("\n")

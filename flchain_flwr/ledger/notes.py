"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, on PyNaCl.

A signed note is a UTF-8 text ending in a newline, a blank line, and one or
more signature lines::

    <text, ending in a newline>

    — <key name> base64(key ID || signature)

Key IDs are the first four bytes of ``SHA-256(key name || 0x0A || 0x01 ||
32-byte Ed25519 public key)`` and signatures are Ed25519 (RFC 8032) over the
note text, its final newline included. A verifier is configured with verifier
keys ("vkeys", ``<name>+<hex key ID>+base64(0x01 || public key)``); signatures
from keys it does not know are ignored, never trusted.

The signed-note spec defines no text form for signer keys. This module writes
and reads the one of Go's ``golang.org/x/mod/sumdb/note`` package, so keys
move between the two: ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 ||
32-byte Ed25519 seed)``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final, Self

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .noteformat import (
    _DASH,
    KEY_ID_SIZE,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    _b64decode,
    _check_characters,
    canonical_b64decode,
    check_key_name,
    check_note_text,
)

__all__ = [  # what this module held before the split, still importable from it
    "ED25519",
    "KEY_ID_SIZE",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SIGNER_KEY_PREFIX",
    "NoteError",
    "NoteSignature",
    "NoteVerificationError",
    "PublicNoteKey",
    "SignedNote",
    "SignerKey",
    "VerifierKey",
    "canonical_b64decode",
    "check_key_name",
    "check_note_text",
    "generate_signer_key",
    "key_id",
    "parse_note",
    "parse_signer_key",
    "parse_verifier_key",
    "read_signer_key",
    "read_verifier_key",
    "sign_note",
    "verify_note",
    "write_file_atomically",
    "write_key_file",
]

ED25519: Final = 0x01
"""The signature type byte of Ed25519 note signatures."""
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
MAX_SIGNATURES: Final = 100
"""Most signature lines a parsed note may hold (the spec asks for >= 16)."""
MAX_NOTE_BYTES: Final = 1 << 20
"""Largest note, in UTF-8 bytes, that :func:`parse_note` reads."""
SIGNER_KEY_PREFIX: Final = "PRIVATE+KEY+"

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
class SignedNote:
    """A note text and its signature lines, in order.

    Parameters
    ----------
    text : str
        The note text, ending in a newline (the blank line that separates it
        from the signatures is not part of it).
    signatures : tuple[NoteSignature, ...]
        At least one signature; no two with the same key name and key ID.
    """

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        check_note_text(self.text)
        if not self.signatures:
            raise NoteError("a signed note needs at least one signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise NoteError(
                f"{len(self.signatures)} signatures: at most {MAX_SIGNATURES} allowed"
            )
        seen: set[tuple[str, bytes]] = set()
        for sig in self.signatures:
            if (sig.name, sig.key_id) in seen:
                raise NoteError(
                    f"two signatures by {sig.name} with key ID {sig.key_id.hex()}"
                )
            seen.add((sig.name, sig.key_id))

    def __str__(self) -> str:
        return self.text + "\n" + "".join(sig.line() for sig in self.signatures)

    def encode(self) -> bytes:
        """The note as UTF-8 bytes, as it is written to a file."""
        return str(self).encode("utf-8")


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
            raise cls.ERROR(f"not a {cls.WHAT} (<name>+<key ID>+<key>): {vkey!r}")
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
    if len(hex_id) != 2 * KEY_ID_SIZE or any(c not in _HEX for c in hex_id):
        raise NoteError(f"{what} {name}: the key ID must be 8 lower-case hex digits")
    raw = _b64decode(data, f"{what} {name}", quote=quote)
    if not raw or raw[0] != kind.ALGORITHM:
        found = f"0x{raw[0]:02x}" if raw else "missing"
        raise NoteError(f"{what} {name}: signature type {found} is not {kind.KIND}")
    if len(raw) != 1 + PUBLIC_KEY_SIZE:
        raise NoteError(
            f"{what} {name}: an Ed25519 key has 32 bytes, not {len(raw) - 1}"
        )
    return raw[1:]


def _check_key_id(actual: bytes, written: str, name: str, what: str) -> None:
    if actual.hex() != written:
        raise NoteError(
            f"{what} {name}: key ID {written} does not match the key "
            f"(expected {actual.hex()})"
        )


# ------------------------------------------------------------------ notes
def parse_note(note: str | bytes) -> SignedNote:
    """Parse a signed note strictly; do not check any signature.

    The text ends at the note's last blank line; every line after it must be a
    signature line ``— <key name> base64(key ID || signature)``.

    Parameters
    ----------
    note : str | bytes
        The whole note (bytes are decoded as strict UTF-8).

    Returns
    -------
    SignedNote
        The text and every signature line, trusted or not.

    Raises
    ------
    NoteError
        If the note is too large, not UTF-8, holds control characters, has no
        blank line or no signature line, or a signature line is malformed
        (bad name, bad or non-canonical base64, shorter than a key ID and one
        byte, repeated key name and ID).
    """
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError(f"note is not valid UTF-8: {exc}") from None
    elif len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    _check_characters(note, "note")
    if not note.endswith("\n"):
        raise NoteError("note does not end in a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("no blank line separates the note text from its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines after its last blank line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"{len(lines)} signature lines: at most {MAX_SIGNATURES}")
    signatures = tuple(
        _parse_signature_line(line, number) for number, line in enumerate(lines, 1)
    )
    return SignedNote(text, signatures)


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    where = f"signature line {number}"
    if not line.startswith(_DASH):
        raise NoteError(f"{where} does not start with an em dash and a space")
    name, space, data = line[len(_DASH) :].partition(" ")
    if not space:
        raise NoteError(f"{where} has no space between key name and signature")
    try:
        check_key_name(name)
    except NoteError as exc:
        raise NoteError(f"{where}: {exc}") from None
    raw = _b64decode(data, f"{where} ({name})", quote=True)
    if len(raw) <= KEY_ID_SIZE:
        raise NoteError(
            f"{where} ({name}) decodes to {len(raw)} bytes: a 4-byte key ID and "
            "a signature need more"
        )
    return NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


def sign_note(note: str | SignedNote, signers: Sequence[SignerKey]) -> SignedNote:
    """Sign a note text, or add signatures to a signed note (cosigning).

    Parameters
    ----------
    note : str | SignedNote
        A note text (ending in a newline), or a signed note whose signatures
        are kept, in front of the new ones.
    signers : Sequence[SignerKey]
        The keys that sign, in the order their lines are written.

    Returns
    -------
    SignedNote
        The note with one more signature line per signer.

    Raises
    ------
    NoteError
        If the text is not a valid note text, no signer is given, or a key
        (same name and key ID) has signed the note already.
    """
    if not signers:
        raise NoteError("signing a note needs at least one key")
    if isinstance(note, SignedNote):
        text, signatures = note.text, note.signatures
    else:
        text, signatures = note, ()
    check_note_text(text)
    added = tuple(signer.sign(text) for signer in signers)
    return SignedNote(text, signatures + added)


def verify_note(
    note: str | bytes | SignedNote, keys: Iterable[VerifierKey]
) -> tuple[VerifierKey, ...]:
    """Check a note's signatures against trusted keys.

    A signature line is checked when its key name and key ID both match a
    trusted key; lines from other keys are ignored (never trusted).

    Parameters
    ----------
    note : str | bytes | SignedNote
        The note (parsed strictly first if not a :class:`SignedNote`).
    keys : Iterable[VerifierKey]
        The trusted keys.

    Returns
    -------
    tuple[VerifierKey, ...]
        The trusted keys whose signatures verified, in signature-line order
        (never empty).

    Raises
    ------
    NoteError
        If the note is malformed, or two trusted keys share a name and key ID.
    NoteVerificationError
        If a trusted key's signature does not verify (the whole note is
        rejected), or no trusted key signed the note.
    """
    signed = note if isinstance(note, SignedNote) else parse_note(note)
    trusted: dict[tuple[str, bytes], VerifierKey] = {}
    for key in keys:
        known = trusted.setdefault((key.name, key.key_id), key)
        if known.public_key != key.public_key:
            raise NoteError(f"two trusted keys named {key.name} share a key ID")
    message = signed.text.encode("utf-8")
    verified: list[VerifierKey] = []
    for sig in signed.signatures:
        signer = trusted.get((sig.name, sig.key_id))
        if signer is None:
            continue
        if not signer.verify(message, sig.signature):
            raise NoteVerificationError(
                f"the signature by trusted key {signer} does not verify"
            )
        verified.append(signer)
    if not verified:
        found = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in signed.signatures)
        raise NoteVerificationError(
            f"no trusted key signed the note (signed by {found})"
        )
    return tuple(verified)


# -------------------------------------------------------------------- files
def write_file_atomically(
    path: str | Path, data: bytes, *, mode: int, overwrite: bool, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` whole or not at all, and make it durable.

    The bytes go to a new temporary file beside ``path`` (created with
    ``mode``), are fsynced, and the file is renamed into place (or, without
    ``overwrite``, linked, which fails if ``path`` exists); then the folder is
    fsynced so the new name survives a power loss. Without ``durable`` neither
    fsync happens (the rename is still atomic: a killed process leaves the old
    file or the new one).

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # exactly ``mode``, whatever the umask
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{path} does not hold a key (not UTF-8)") from None
    return text.removesuffix("\n")

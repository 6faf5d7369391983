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

This module holds the note itself: :class:`SignedNote`, strict parsing
(:func:`parse_note`), signing and cosigning (:func:`sign_note`) and
verification against trusted keys (:func:`verify_note`). The rest lives
beside it: the format's building blocks (key names, note text, base64, a
signature line) in :mod:`.noteformat`, the keys, their text forms (including
the signer key form of Go's ``sumdb/note``) and key files in
:mod:`.notekeys`, whole-or-nothing file writes in :mod:`.atomicfile` (each
name is also importable from here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .atomicfile import write_file_atomically
from .inputfile import read_head
from .noteformat import (
    DASH,
    KEY_ID_SIZE,
    NoteError,
    NoteSignature,
    NoteVerificationError,
    canonical_b64decode,
    check_characters,
    check_key_name,
    check_note_text,
    note_b64decode,
)
from .notekeys import (
    ED25519,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    SIGNER_KEY_PREFIX,
    PublicNoteKey,
    SignerKey,
    VerifierKey,
    generate_signer_key,
    key_id,
    parse_signer_key,
    parse_verifier_key,
    read_signer_key,
    read_verifier_key,
    write_key_file,
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
    "read_note",
    "read_signer_key",
    "read_verifier_key",
    "sign_note",
    "verify_note",
    "write_file_atomically",
    "write_key_file",
]

MAX_SIGNATURES: Final = 100
"""Most signature lines a parsed note may hold (the spec asks for >= 16)."""
MAX_NOTE_BYTES: Final = 1 << 20
"""Largest note, in UTF-8 bytes, that :func:`parse_note` reads."""


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
    check_characters(note, "note")
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


def read_note(path: str | Path) -> SignedNote:
    """:func:`parse_note` of the file at ``path``, of which at most one byte
    more than :data:`MAX_NOTE_BYTES` is read (``OSError`` if it cannot be
    read, ``NoteError`` as :func:`parse_note`)."""
    return parse_note(read_head(path, MAX_NOTE_BYTES))


def read_note_or_error(path: str | Path) -> SignedNote | OSError | NoteError:
    """:func:`read_note`, or the error it raised, kept to be reported later: a
    reader checks a checkpoint against the blocks it reads after it (a writer
    commits a block before writing its checkpoint), and reports a checkpoint
    it could not read once those blocks are checked."""
    try:
        return read_note(path)
    except (OSError, NoteError) as exc:
        return exc


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    where = f"signature line {number}"
    if not line.startswith(DASH):
        raise NoteError(f"{where} does not start with an em dash and a space")
    name, space, data = line[len(DASH) :].partition(" ")
    if not space:
        raise NoteError(f"{where} has no space between key name and signature")
    try:
        check_key_name(name)
    except NoteError as exc:
        raise NoteError(f"{where}: {exc}") from None
    raw = note_b64decode(data, f"{where} ({name})", quote=True)
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

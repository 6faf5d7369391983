"""The signed-note format's building blocks: key names, note text, base64,
and one signature line.

A C2SP signed note (c2sp.org/signed-note, :mod:`.notes`) is a UTF-8 text
ending in a newline, a blank line, and signature lines ``— <key name>
base64(key ID || signature)``. This module holds the rules its pieces
follow, shared by the notes and the keys that sign them (:mod:`.notekeys`):
a key name (:func:`check_key_name`), a note text (:func:`check_note_text`),
strict canonical base64 (:func:`canonical_b64decode`; :func:`decode_b64`
also for checkpoints and tlog proofs), one signature line
(:class:`NoteSignature`), and the errors a malformed one raises
(:class:`NoteError`, :class:`NoteVerificationError`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from ..quoting import clip

KEY_ID_SIZE: Final = 4
DASH: Final = "\u2014 "  # em dash and a space: how a signature line starts


class NoteError(ValueError):
    """A note, signature line or key is malformed."""


class NoteVerificationError(NoteError):
    """A note is not signed by any trusted key, or a trusted key's signature on
    it does not verify."""


def check_key_name(name: str) -> None:
    """Raise :class:`NoteError` unless ``name`` is a valid key name.

    A key name is non-empty UTF-8 without Unicode spaces, plus signs (U+002B)
    or control characters.
    """
    if not name:
        raise NoteError("a key name must not be empty")
    for char in name:
        if char.isspace() or char == "+" or ord(char) < 0x20:
            raise NoteError(
                f"key name {clip(name, 80)!r} contains {char!r}: spaces, '+' and "
                "control characters are not allowed"
            )
    _utf8(name, "key name")


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: who claims to have signed, and the bytes.

    Parameters
    ----------
    name : str
        The key name on the line.
    key_id : bytes
        The 4-byte key ID in front of the signature.
    signature : bytes
        The signature bytes after the key ID (64 for Ed25519).
    """

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_id) != KEY_ID_SIZE:
            raise NoteError(f"a key ID has 4 bytes, not {len(self.key_id)}")
        if not self.signature:
            raise NoteError(f"the signature by {self.name} is empty")

    def line(self) -> str:
        """The signature line, newline included."""
        encoded = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{DASH}{self.name} {encoded}\n"


def check_note_text(text: str) -> None:
    """Raise :class:`NoteError` unless ``text`` can be a note's text.

    The text must be valid UTF-8, end in a newline, and hold no control
    characters (below U+0020) other than newlines.
    """
    if not text.endswith("\n"):
        raise NoteError("a note text must end in a newline")
    check_characters(text, "note text")


def check_characters(text: str, what: str) -> None:
    for char in text:
        if ord(char) < 0x20 and char != "\n":
            raise NoteError(f"{what} holds control character {char!r}")
    _utf8(text, what)


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8: {exc}") from None


def canonical_b64decode(data: str) -> bytes | None:
    """Strict, canonical standard base64 (RFC 4648 section 4, padded).

    Returns ``None`` for text that is not base64 at all; raises ``ValueError``
    for base64 that decodes but is not in its one canonical form.
    """
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    if base64.b64encode(raw).decode("ascii") != data:
        raise ValueError("not canonical base64")
    return raw


def decode_b64(
    data: str, error: type[ValueError], *, not_base64: str, not_canonical: str
) -> bytes:
    """:func:`canonical_b64decode`, raising ``error(not_base64)`` for text that
    is not base64 and ``error(not_canonical)`` for base64 not in its canonical
    form: one decoder, and each caller keeps its own error type and wording."""
    try:
        raw = canonical_b64decode(data)
    except ValueError:
        raise error(not_canonical) from None
    if raw is None:
        raise error(not_base64)
    return raw


def note_b64decode(data: str, what: str, *, quote: bool) -> bytes:
    """:func:`decode_b64`, failing with a :class:`NoteError` that names ``what``
    (and quotes ``data`` if ``quote``)."""
    shown = f" {clip(data, 80)!r}" if quote else ""
    return decode_b64(
        data,
        NoteError,
        not_base64=f"{what}: not valid base64{shown}",
        not_canonical=f"{what}: not canonical base64{shown}",
    )

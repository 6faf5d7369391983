"""Keys from files and text: a ledger's signing key, a trusted key."""

from __future__ import annotations

import stat
from logging import WARNING
from pathlib import Path

from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from .blocks import LedgerError
from .inputfile import read_head
from .notes import NoteError, VerifierKey, parse_verifier_key, write_file_atomically


def load_or_create_key(path: Path) -> SigningKey:
    """The Ed25519 key at ``path`` (hex seed), created if it does not exist:
    mode 0600, fsynced with its folder, never over an existing file."""
    if not path.exists():
        key = SigningKey.generate()
        try:
            write_file_atomically(
                path, key.encode(HexEncoder), mode=0o600, overwrite=False
            )
            return key
        except FileExistsError:  # another process created it first: use theirs
            pass
    try:  # a regular file only, and no more than a key's line could need
        key = SigningKey(read_head(path, 4096).strip(), encoder=HexEncoder)
    except Exception as exc:
        raise LedgerError(
            f"{path} does not hold an Ed25519 signing key: {exc}"
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log(
            WARNING,
            "Signing key %s has mode %s: group or others can read or change it "
            "(chmod 600 it)",
            path,
            oct(mode),
        )
    return key


def parse_trusted_key(text: str, origin: str) -> VerifierKey:
    """A trusted key given as text: a signed-note vkey, or the hex Ed25519 public
    key of a ledger's signer (then named ``origin``, the checkpoint key's name).

    Raises
    ------
    LedgerError
        If ``text`` is neither.
    """
    key = text.strip()
    try:
        if len(key) == 64 and all(c in "0123456789abcdefABCDEF" for c in key):
            return VerifierKey(origin, bytes.fromhex(key))
        return parse_verifier_key(key)
    except NoteError as exc:
        raise LedgerError(
            f"invalid trusted key {key[:70]!r}: not a vkey nor 64 hex digits ({exc})"
        ) from None


class KeyFile:
    """A signing key: the one given, else the one in the file ``path``, loaded
    (created if missing, see :func:`load_or_create_key`) when first needed."""

    def __init__(self, path: Path, key: SigningKey | None = None) -> None:
        self.path = path
        self._key = key

    @classmethod
    def beside(cls, file: Path, key: SigningKey | None = None) -> KeyFile:
        """``key``, else the key in ``<file>.key``, beside ``file``."""
        return cls(file.with_name(file.name + ".key"), key)

    @property
    def key(self) -> SigningKey:
        """The key (loaded or created on first use)."""
        if self._key is None:
            self._key = load_or_create_key(self.path)
        return self._key

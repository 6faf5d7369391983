"""The keys a provenance bundle's buyer holds, and the bundle's errors.

A buyer names each key with its role: ``main=<vkey>`` (the main chain's
checkpoint key, required), ``witness=<cosigner vkey>`` (C2SP
``cosignature/v1`` keys), ``pool=<hex>`` (PoV verifier keys), and
``publisher=<hex>`` (the run publisher's key, if known).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .canonical import is_hex
from .cosignature import CosignerKey, parse_cosigner_key
from .notes import NoteError, VerifierKey, parse_verifier_key

TRUST_ROLES: Final = ("main", "witness", "pool", "publisher")


@dataclass(frozen=True)
class Trust:
    """The keys a buyer holds, got out of band."""

    main: VerifierKey
    witnesses: tuple[CosignerKey, ...] = ()
    pool: frozenset[str] = frozenset()
    publisher: str | None = None
    """The run publisher's hex Ed25519 key, if the buyer knows it."""


def parse_trust(entries: Sequence[str]) -> Trust:
    """Trusted keys from ``role=key`` texts: ``main=<vkey>`` (exactly one),
    ``witness=<cosigner vkey>``, ``pool=<hex>``, ``publisher=<hex>``.

    Raises
    ------
    ValueError
        If an entry is malformed or there is not exactly one main key.
    """
    main: list[VerifierKey] = []
    witnesses: list[CosignerKey] = []
    pool: set[str] = set()
    publisher: str | None = None
    for entry in entries:
        role, sep, key = entry.strip().partition("=")
        if not sep or role not in TRUST_ROLES:
            raise ValueError(
                f"trusted key {entry[:40]!r} is not <role>=<key> with role one of "
                f"{', '.join(TRUST_ROLES)}"
            )
        try:
            if role == "main":
                main.append(parse_verifier_key(key))
            elif role == "witness":
                witnesses.append(parse_cosigner_key(key))
            elif is_hex(key.lower(), 64):
                if role == "pool":
                    pool.add(key.lower())
                else:
                    publisher = key.lower()
            else:
                raise ValueError(f"a {role} key is 64 hex digits")
        except NoteError as exc:
            raise ValueError(f"trusted {role} key: {exc}") from None
    if len(main) != 1:
        raise ValueError(f"give exactly one main=<vkey> trusted key, not {len(main)}")
    return Trust(main[0], tuple(witnesses), frozenset(pool), publisher)


class ProvenanceError(ValueError):
    """A bundle does not prove what it claims (the message says what failed)."""


class BundleMalformed(ProvenanceError):
    """Not a provenance bundle at all (not canonical JSON, fields missing)."""

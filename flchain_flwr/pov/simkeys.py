"""Verifier keys derived from a run's seed, for in-process committees that
write no ledger.

A committee's draw ranks the pool by a hash over each member's public key
(:func:`~flchain_flwr.ledger.select_committee`), so with a committee smaller
than its pool, fresh random keys draw other members, and so other verdicts and
another model, on every run of one seed. Keys derived from the seed make such a
simulation repeat exactly. Anyone who knows the seed and the index holds the
key: use them only where nothing is signed for anyone else to check, never
beside a ledger (a run with a ledger keeps random keys in files; copying those
files and the chain id repeats it, see docs/app.md).
"""

from __future__ import annotations

import hashlib
from typing import Final

from nacl.signing import SigningKey

SEEDED_KEY_TAG: Final = b"flchain-simulation-verifier/1\n"
"""Domain separation: no other key in the project is derived this way."""


def seeded_verifier_key(
    seed: int, index: int, *, domain: bytes = SEEDED_KEY_TAG
) -> SigningKey:
    """Verifier ``index``'s key in a run seeded with ``seed``: the SHA-256 of
    ``domain + "<seed>/<index>"`` as its Ed25519 seed (see the module
    docstring for when not to use it; the robustness benchmark keeps its own
    ``domain``, ``b"bench/"``, so its recorded committees stay as drawn)."""
    if index < 0:
        raise ValueError(f"a verifier index is >= 0, not {index}")
    material = domain + f"{seed}/{index}".encode()
    return SigningKey(hashlib.sha256(material).digest())

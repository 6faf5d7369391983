"""The main chain as a witnessed log: its own checkpoint cosigned by the policy.

After each anchor block the main chain's checkpoint (origin ``flchain-flwr/<main
chain id>``) goes to the same witnesses its genesis policy declares; a witness
treats that origin like any other: it cosigns only a checkpoint consistent
with the last one it cosigned for it (a consistency proof of the main chain's
block hashes), so a truncated, forked or rewritten main chain never gets a
fresh quorum. The cosigned checkpoint replaces the one on file
(``<main>.checkpoint``); :func:`main_witnessing` reads it back.

What this buys, holding only the main key and the witness keys: a main
checkpoint with a quorum of valid policy cosignatures is one the witnesses saw
as an append-only extension of every earlier one they cosigned. An OLD
cosigned checkpoint (the main chain rolled back and its earlier checkpoint put
back) still verifies: only freshness (``max_age`` against the cosignatures'
timestamps) or a newer checkpoint kept elsewhere exposes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .anchorblock import AnchorError, AnchorPolicy
from .checkpoint import parse_checkpoint, write_checkpoint
from .cosignature import parse_cosigner_key, verify_cosignatures
from .notes import NoteError, SignedNote
from .rfc6962 import HashTree

if TYPE_CHECKING:
    from .anchoring import WitnessClient
    from .mainchain import MainChain


@dataclass(frozen=True)
class MainWitnessing:
    """The policy witnesses' valid cosignatures on one main checkpoint."""

    size: int
    cosigners: dict[str, int]
    """Policy witness name -> its cosignature's timestamp (POSIX seconds)."""
    quorum: int
    witnesses: int

    def require(self, max_age: float | None = None, now: float | None = None) -> str:
        """What holds, if a quorum cosigned (within ``max_age`` seconds of
        ``now`` when given); ``AnchorError`` naming what is missing."""
        names = sorted(self.cosigners)
        if len(names) < self.quorum:
            raise AnchorError(
                f"the main chain's checkpoint of {self.size} blocks is cosigned by "
                f"{len(names)} of its policy's witnesses ({', '.join(names) or 'none'})"
                f"; the quorum is {self.quorum} of {self.witnesses}: the main chain "
                "is not witnessed at this size"
            )
        line = (
            f"its checkpoint of {self.size} blocks is cosigned by {len(names)} of "
            f"{self.witnesses} policy witnesses ({', '.join(names)}; quorum "
            f"{self.quorum})"
        )
        if max_age is None:
            return line + (
                " (freshness not checked: an older cosigned checkpoint of a "
                "rolled-back main chain would pass too; give a max age)"
            )
        if now is None:
            raise ValueError("a max age needs the current time")
        fresh = sorted(n for n, t in self.cosigners.items() if now - t <= max_age)
        if len(fresh) < self.quorum:
            newest = max(self.cosigners.values())
            raise AnchorError(
                f"the main chain's checkpoint of {self.size} blocks is stale: "
                f"{len(fresh)} cosignatures are at most {max_age:g} s old, the "
                f"quorum is {self.quorum} (newest {now - newest:.0f} s old); the "
                "main chain may have been rolled back to it"
            )
        return line + f", {len(fresh)} of them at most {max_age:g} s old"

    def describe(self) -> str:
        """What :meth:`require` says, or that the quorum is missing (when it
        was not demanded)."""
        try:
            return self.require()
        except AnchorError:
            return (
                f"its checkpoint is cosigned by {len(self.cosigners)} policy "
                f"witnesses, below the quorum of {self.quorum} (not demanded: a "
                "fork or truncation of the main chain is not detected)"
            )


def main_witnessing(note: SignedNote, policy: AnchorPolicy) -> MainWitnessing:
    """The policy witnesses whose cosignatures on a main checkpoint verify.

    Raises
    ------
    AnchorError
        If a line by a policy witness is forged (the checkpoint is refused).
    """
    try:
        found = verify_cosignatures(note, policy.witnesses)
        size = parse_checkpoint(note.text).size
    except (NoteError, ValueError) as exc:
        raise AnchorError(f"the main chain's checkpoint: {exc}") from None
    names = {parse_cosigner_key(k).name: t for k, t in found.items()}
    return MainWitnessing(size, names, policy.quorum, len(policy.witnesses))


def cosign_main_checkpoint(
    main: MainChain, witnesses: Sequence[WitnessClient], sizes: dict[int, int]
) -> tuple[SignedNote, list[str]]:
    """Sign the main chain's checkpoint now, get the witnesses' cosignatures,
    and store it (with however many came) at ``main.checkpoint_path``.

    Returns the stored note and the refusals; whether a quorum cosigned is
    :func:`main_witnessing`'s to say.
    """
    from .anchoring import collect_cosignatures  # anchoring imports mainchain

    note = main.signed_checkpoint()
    tree = HashTree(bytes.fromhex(h) for h in main.block_hashes())
    size = parse_checkpoint(note.text).size
    signed, refusals = collect_cosignatures(
        note, size, main.public_key, witnesses, 0, tree.consistency, sizes
    )
    write_checkpoint(main.checkpoint_path, signed)
    return signed, refusals

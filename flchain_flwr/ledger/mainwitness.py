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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .anchorblock import AnchorError, AnchorPolicy
from .checkpoint import parse_checkpoint, write_checkpoint
from .cosignature import add_cosignature, parse_cosigner_key, verify_cosignatures
from .merkle import consistency_proof
from .notes import NoteError, SignedNote
from .witness import WitnessError
from .witnessrequest import CosignRequest, WitnessRefused

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


def collect_cosignatures(
    note: SignedNote,
    log_key: str,
    prove: Callable[[int, int], dict[str, Any]],
    witnesses: Sequence[WitnessClient],
    sizes: dict[int, int],
) -> tuple[SignedNote, list[str]]:
    """``note`` with the cosignature of every witness that gives one, and the
    refusals (``"witness <i>: <reason>"``).

    Each witness is asked from the size ``sizes`` says it last cosigned (a
    409 answer names its size: asked once more from there); ``prove(old,
    new)`` makes the consistency proof. ``sizes`` is updated.
    """
    size = parse_checkpoint(note.text).size
    signed, refusals = note, []
    for index, witness in enumerate(witnesses):
        old = sizes.get(index, 0) if sizes.get(index, 0) <= size else 0
        for _ in range(2):
            proof = prove(old, size) if 0 < old < size else None
            try:
                line = witness.add_checkpoint(
                    CosignRequest(old, str(note), proof, log_key)
                )
            except WitnessRefused as exc:
                if exc.status == 409 and exc.size is not None and exc.size != old:
                    old = exc.size
                    continue
                refusals.append(f"witness {index}: {exc.reason}")
            except (ValueError, OSError, WitnessError) as exc:
                # no proof between those sizes, or a witness that cannot work:
                # the main chain's anchor is committed, so nothing may escape
                refusals.append(f"witness {index}: {exc}")
            else:
                signed = add_cosignature(signed, line)
                sizes[index] = size
            break
    return signed, refusals


def cosign_main_checkpoint(
    main: MainChain, witnesses: Sequence[WitnessClient], sizes: dict[int, int]
) -> tuple[SignedNote, list[str]]:
    """Sign the main chain's checkpoint now, get the witnesses' cosignatures,
    and store it (with however many came) at ``main.checkpoint_path``.

    Returns the stored note and the refusals; whether a quorum cosigned is
    :func:`main_witnessing`'s to say.
    """
    note = main.signed_checkpoint()
    hashes = main.block_hashes()  # after signing: the signed size's prefix

    def prove(old: int, new: int) -> dict[str, Any]:
        return consistency_proof(hashes, old, new)

    signed, refusals = collect_cosignatures(
        note, main.public_key.encode(), prove, witnesses, sizes
    )
    write_checkpoint(main.checkpoint_path, signed)
    return signed, refusals

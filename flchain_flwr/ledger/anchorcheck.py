"""Checking a training ledger against the checkpoints anchored for it.

:func:`check_anchored` is ``flchain ledger verify --anchored-in``: the main
chain is verified first, then the ledger must hold every checkpoint anchored
for its origin (:mod:`.anchoring` puts them there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .anchorblock import AnchorError, check_anchor
from .anchoring import log_key_of
from .chain import Ledger
from .checkpoint import LogFrontier, parse_checkpoint
from .checkpointcheck import removed, rewritten
from .mainchain import MainChain
from .maindb import AnchorRefused, MainChainError
from .mainverify import WitnessRule, verify_main_chain
from .notes import SignedNote, VerifierKey


@dataclass(frozen=True)
class AnchoredReport:
    """What :func:`check_anchored` found."""

    ok: bool
    checked: int
    statement: str

    def __str__(self) -> str:
        return ("OK: " if self.ok else "FAILED: ") + self.statement


def check_anchored(
    ledger: Ledger,
    main_path: str | Path,
    log_key: VerifierKey | None = None,
    main_key: VerifierKey | None = None,
    main_checkpoint: SignedNote | None = None,
    witnessed: WitnessRule | None = None,
) -> AnchoredReport:
    """Check a ledger against every checkpoint anchored for its origin.

    Each anchor must pass :func:`~.anchorblock.check_anchor` (signed by the
    ledger's key, ``log_key`` or its genesis leader; cosigned by the policy's
    quorum) and the ledger's first ``size`` blocks must have its root. The
    main chain's own links and checkpoint are checked first
    (:meth:`MainChain.verify`), under ``main_key`` if given (else the key the
    main chain's file names: then the main chain is only self-consistent).
    With ``main_checkpoint`` (a main-chain checkpoint kept elsewhere) the main
    chain must hold it: without one, a main chain rolled back to an older
    checkpoint (its later anchors deleted) is not detected. With
    ``witnessed``, the main chain's checkpoint must be cosigned as it demands
    (:class:`~.mainverify.WitnessRule`), and the report says by whom: of the
    checkpoint that check read, which a live anchorer may since have replaced.
    The report names the first anchored checkpoint the ledger contradicts.
    """
    try:
        main = MainChain(main_path, read_only=True)
    except MainChainError as exc:
        return AnchoredReport(False, 0, str(exc))
    with main:
        if main_key is not None and main_key != main.public_key:
            return AnchoredReport(
                False, 0, f"main chain {main_path} is signed by {main.public_key}"
            )
        try:
            main_checked = verify_main_chain(
                main, pinned=main_checkpoint, witnessed=witnessed
            )
        except (AnchorRefused, MainChainError) as exc:
            return AnchoredReport(False, 0, f"main chain {main_path}: {exc}")
        # From the records the check read, not from a query by origin; before
        # the ledger's blocks, which a live writer commits before their
        # checkpoint is anchored.
        anchors = [b for b in main_checked.blocks if b.origin == ledger.origin]
        hashes = ledger.block_hashes()
        if not anchors:
            return AnchoredReport(
                False, 0, f"no checkpoint of {ledger.origin} is anchored in {main_path}"
            )
        # An emptied ledger has no genesis leader: the anchors' key is checked
        # against itself then, and every anchor says blocks were removed.
        key = log_key or (log_key_of(ledger) if hashes else anchors[0].log_key)
        roots = _roots_at(hashes, [block.checkpoint.size for block in anchors])
        for count, block in enumerate(anchors):
            where = f"anchored checkpoint at main-chain height {block.height}"
            try:
                found = check_anchor(block, main.policy, key)
            except AnchorError as exc:
                return AnchoredReport(False, count, f"{where}: {exc}")
            size, root = found.checkpoint.size, found.checkpoint.root
            problem = None
            if size > len(hashes):
                problem = removed(len(hashes), size)
            elif roots[size] != root:
                problem = rewritten(size, roots[size], root)
            if problem is not None:
                return AnchoredReport(
                    False,
                    count,
                    f"the ledger contradicts the {where} (size {size}, cosigned "
                    f"by {', '.join(found.cosigners)}): {problem}",
                )
    if main_checkpoint is not None:
        kept = parse_checkpoint(main_checkpoint.text).size
        pinned = f"main chain holds the kept checkpoint of {kept} blocks"
    elif main_key is not None:
        pinned = (
            f"main chain pinned to key {main_key.encode()} but to no kept "
            "checkpoint (a rollback of the main chain to an older signed "
            "checkpoint is not detected: give --main-checkpoint)"
        )
    else:
        pinned = "main chain not pinned (no --main-key): self-consistent only"
    witnessing = "" if witnessed is None else f"; {main_checked.witnessing}"
    return AnchoredReport(
        True,
        len(anchors),
        f"the ledger's {len(hashes)} blocks hold all {len(anchors)} checkpoints "
        f"anchored for {ledger.origin} in main chain {main.chain_id} (the last of "
        f"size {found.checkpoint.size}), each signed by {key.encode()} and "
        f"cosigned by {main.policy.quorum} of {len(main.policy.witnesses)} policy "
        f"witnesses; {pinned}{witnessing}",
    )


def _roots_at(hashes: Sequence[str], sizes: Sequence[int]) -> dict[int, bytes]:
    """The log's root at each of ``sizes`` (those it reaches), in one pass."""
    roots: dict[int, bytes] = {}
    frontier = LogFrontier()
    for size in sorted(set(sizes)):
        if size > len(hashes):
            break
        for digest in hashes[frontier.size : size]:
            frontier.append(digest)
        roots[size] = frontier.root()
    return roots

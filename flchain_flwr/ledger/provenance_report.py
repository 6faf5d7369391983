"""What a provenance bundle's check established, in words: the run, the
block, the committee, each thing checked and under which key, and what was
not checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .anchorblock import AnchorError
from .cosignature import verify_cosignatures
from .mainverify import WitnessRule
from .mainwitness import MainWitnessing
from .notes import NoteError, VerifierKey
from .provenance_block import BlockFindings
from .provenance_trust import ProvenanceError, Trust


@dataclass(frozen=True)
class ProvenanceReport:
    """What :func:`verify_bundle` established, and under which keys."""

    origin: str
    block: BlockFindings
    model_hash: str
    checked: tuple[str, ...]
    not_checked: tuple[str, ...]

    def __str__(self) -> str:
        b = self.block
        who = (
            f"committee {', '.join(b.committee)} (leader {b.leader})"
            if b.committee is not None
            else f"no committee: signed by {b.leader}"
        )
        lines = [
            f"model {self.model_hash}",
            f"run (origin): {self.origin}",
            f"block: height {b.height}, hash {b.block_hash}",
            f"produced by: {who}",
            "checked:",
            *(f"  - {line}" for line in self.checked),
            "not checked:",
            *(f"  - {line}" for line in self.not_checked),
        ]
        return "\n".join(lines)


NO_MODEL_FILE: Final = (
    "any model file: none was given (--model), so nothing ties a file you "
    "hold to the bundle's model hash"
)
NOT_CHECKED: Final = (
    "that the model is the aggregation of the block's included updates over "
    "its parent (that needs the updates: `flchain ledger verify --replay` by "
    "someone with access to the run)",
    "the updates themselves, and every block of the run but this one, its "
    "parent's header and the genesis block",
)


def witness_line(anchored: Any, trust: Trust) -> str:
    policy = anchored.policy
    line = (
        f"the main chain's genesis policy (vouched for by the main key) needs "
        f"{policy.quorum} of {len(policy.witnesses)} witnesses; cosigned by "
        f"{', '.join(anchored.check.cosigners)}"
    )
    if not trust.witnesses:
        return line + " (you gave no witness keys: the policy's keys were used)"
    try:
        mine = verify_cosignatures(anchored.block.note, trust.witnesses)
    except NoteError as exc:
        raise ProvenanceError(f"anchor: {exc}") from None
    if len(mine) < policy.quorum:
        raise ProvenanceError(
            f"anchor: {len(mine)} of the witness keys you trust cosigned; the "
            f"quorum is {policy.quorum}"
        )
    return line + f"; {len(mine)} of them are witness keys you trust"


def main_witness_line(witnessing: MainWitnessing, rule: WitnessRule | None) -> str:
    """The main chain's own checkpoint's witnessing, as demanded by ``rule``
    (``ProvenanceError`` if it falls short) or only described."""
    if rule is None:
        return "main chain witnessing: " + witnessing.describe()
    try:
        return "main chain witnessing: " + witnessing.require(rule.max_age, rule.now)
    except AnchorError as exc:
        raise ProvenanceError(f"anchor: {exc}") from None


def training_lines(
    found: BlockFindings, origin: str, log_key: VerifierKey, trust: Trust
) -> list[str]:
    publisher = (
        "the trusted publisher key"
        if trust.publisher is not None
        else "you gave no publisher key: this names the run, it does not say who ran it"
    )
    lines = [
        f"the anchored checkpoint of {origin} is signed by {log_key}, the key "
        f"that signed the run's genesis block ({publisher})",
        f"block {found.height} (hash {found.block_hash}) and the genesis block "
        "are leaves of that checkpoint (RFC 6962 inclusion proofs)",
        f"block {found.height}'s header names the model and is signed by its "
        f"leader {found.leader}",
    ]
    if found.committee is None:
        lines.append(
            "the genesis model: no committee judged it"
            if found.height == 0
            else "no PoV committee: the publisher's key alone vouches for the block"
        )
        return lines
    lines.append(
        f"the committee ({len(found.committee)} members) is the draw from the "
        f"genesis pool for the block's parent and view; every vote is signed for "
        f"this chain, height, parent block {found.height - 1}, parent model "
        f"{found.parent_model} and the genesis rule, at the share applied (before "
        f"trust weighting); each "
        f"of the {found.included} included updates has at least {found.quorum} "
        f"approvals, counting {found.counted}"
    )
    if found.committee_kind != "remote":
        lines.append(
            "the run's genesis records its committee as "
            f"{found.committee_kind or 'unrecorded'!r}: unless 'remote', the "
            "server process may have held verifier keys, and the votes then show "
            "what that process decided, not that independent verifiers agreed"
        )
    return lines

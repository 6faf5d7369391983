"""Main-chain blocks: the policy at genesis, anchor blocks, and their offline checks.

A main chain (:mod:`~flchain_flwr.ledger.mainchain`) holds no model data and no
update digests. Its genesis block declares the anchoring *policy*: the witness
cosigner keys (C2SP ``cosignature/v1``, :mod:`.cosignature`) and how many of
them must cosign (the quorum). Every later block anchors one subchain
checkpoint::

    {"format": "flchain-main/1", "type": "anchor", "chain_id": <main chain>,
     "height": h, "prev_hash": <hex>, "origin": <subchain origin>,
     "log_key": <subchain's checkpoint vkey>,
     "checkpoint": <signed note: the subchain's signature + cosignatures>,
     "consistency": <proof from the origin's previous anchor, or null>}

encoded as RFC 8785 JSON; a block's hash is ``sha256(ANCHOR_TAG || record)``,
the leaf of the main chain's RFC 6962 log. Who can forge what: an anchor
block passes :func:`check_anchor` only if the subchain key signed the
checkpoint and ``quorum`` distinct policy witnesses cosigned it; the policy
itself is vouched for by the main chain's key, through the genesis block's
inclusion in the main chain's signed checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .canonical import ZERO_HASH, encode, parse_canonical, sha256_hex
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint,
)
from .cosignature import CosignerKey, parse_cosigner_key, verify_cosignatures
from .notes import NoteError, SignedNote, VerifierKey, parse_note, parse_verifier_key

MAIN_FORMAT: Final = "flchain-main/1"
ANCHOR_TAG: Final = b"flchain-main-block/1\n"
ENCODING: Final = 2
"""The canonical JSON version of main-chain records (RFC 8785)."""


class AnchorError(ValueError):
    """An anchor block, policy or anchor proof is malformed or does not hold."""


@dataclass(frozen=True)
class AnchorPolicy:
    """Who must cosign an anchor: witness keys and a quorum.

    Parameters
    ----------
    witnesses : tuple[CosignerKey, ...]
        The witnesses' cosigner keys (distinct names, distinct public keys).
    quorum : int
        How many distinct witnesses must cosign, ``1 <= quorum <= len(witnesses)``.
    """

    witnesses: tuple[CosignerKey, ...]
    quorum: int

    def __post_init__(self) -> None:
        names = [key.name for key in self.witnesses]
        if len(set(names)) != len(names):
            raise AnchorError("two policy witnesses share a name")
        keys = [key.public_key for key in self.witnesses]
        if len(set(keys)) != len(keys):
            # one key under two names would fill two seats of the quorum
            raise AnchorError("two policy witnesses share a public key")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int):
            raise AnchorError(f"the quorum is an integer, not {self.quorum!r}")
        if not 1 <= self.quorum <= len(self.witnesses):
            raise AnchorError(
                f"a quorum of {self.quorum} of {len(self.witnesses)} witnesses "
                "is impossible"
            )

    def to_json(self) -> dict[str, Any]:
        """The policy as a JSON object (vkeys as text)."""
        return {
            "witnesses": [k.encode() for k in self.witnesses],
            "quorum": self.quorum,
        }

    @classmethod
    def from_json(cls, value: Any) -> AnchorPolicy:
        """Parse :meth:`to_json`'s form; ``AnchorError`` if malformed."""
        if not isinstance(value, Mapping) or set(value) != {"witnesses", "quorum"}:
            raise AnchorError("a policy is {'witnesses': [...], 'quorum': k}")
        keys = value["witnesses"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise AnchorError("the policy's witnesses are a list of vkeys")
        try:
            witnesses = tuple(parse_cosigner_key(k) for k in keys)
        except NoteError as exc:
            raise AnchorError(f"policy: {exc}") from None
        return cls(witnesses, value["quorum"])

    def check_quorum(self, note: SignedNote) -> tuple[str, ...]:
        """The names of the policy witnesses whose cosignatures on ``note``
        verify; ``AnchorError`` if fewer than the quorum, or if a line by a
        policy witness is forged (the whole note is then refused)."""
        try:
            found = verify_cosignatures(note, self.witnesses)
        except NoteError as exc:
            raise AnchorError(str(exc)) from None
        names = tuple(sorted(parse_cosigner_key(k).name for k in found))
        if len(names) < self.quorum:
            raise AnchorError(
                f"{len(names)} of the policy's witnesses cosigned "
                f"({', '.join(names) or 'none'}); the quorum is {self.quorum} of "
                f"{len(self.witnesses)}"
            )
        return names


@dataclass(frozen=True)
class AnchorBlock:
    """One main-chain block as stored: its canonical record and parsed fields.

    ``checkpoint`` is ``None`` for the genesis block (which holds ``policy``).
    """

    height: int
    hash: str
    record: bytes
    fields: dict[str, Any]

    @property
    def kind(self) -> str:
        """``"genesis"`` or ``"anchor"``."""
        return str(self.fields["type"])

    @property
    def origin(self) -> str | None:
        """The anchored subchain's origin (``None`` for the genesis block)."""
        value = self.fields.get("origin")
        return None if value is None else str(value)

    @property
    def note(self) -> SignedNote:
        """The anchored checkpoint, as a signed note with its cosignatures."""
        return parse_note(str(self.fields["checkpoint"]))

    @property
    def checkpoint(self) -> Checkpoint:
        """The anchored checkpoint (its signatures not checked here)."""
        return parse_checkpoint(self.note.text)

    @property
    def log_key(self) -> VerifierKey:
        """The subchain key the checkpoint is signed by."""
        return parse_verifier_key(str(self.fields["log_key"]))


def block_hash(record: bytes) -> str:
    """The hex hash of a main-chain record: its leaf in the main chain's log."""
    return sha256_hex(ANCHOR_TAG, record)


def genesis_record(chain_id: str, policy: AnchorPolicy) -> bytes:
    """The canonical record of a main chain's genesis block."""
    return encode(
        ENCODING,
        {
            "format": MAIN_FORMAT,
            "type": "genesis",
            "chain_id": chain_id,
            "height": 0,
            "prev_hash": ZERO_HASH,
            "policy": policy.to_json(),
        },
    )


def anchor_record(
    chain_id: str,
    height: int,
    prev_hash: str,
    note: SignedNote,
    log_key: VerifierKey,
    consistency: Mapping[str, Any] | None,
) -> bytes:
    """The canonical record of an anchor block."""
    origin = note.text.split("\n", 1)[0]
    return encode(
        ENCODING,
        {
            "format": MAIN_FORMAT,
            "type": "anchor",
            "chain_id": chain_id,
            "height": height,
            "prev_hash": prev_hash,
            "origin": origin,
            "log_key": log_key.encode(),
            "checkpoint": str(note),
            "consistency": None if consistency is None else dict(consistency),
        },
    )


def parse_block(record: bytes, height: int | None = None) -> AnchorBlock:
    """A stored record as an :class:`AnchorBlock`; ``AnchorError`` if it is not
    canonical or lacks its fields (``height``, if given, must match)."""
    try:
        fields = parse_canonical(record, ENCODING)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AnchorError(f"a main-chain record is not canonical JSON: {exc}") from None
    if not isinstance(fields, dict) or fields.get("format") != MAIN_FORMAT:
        raise AnchorError(f"a main-chain record must be a {MAIN_FORMAT} object")
    kind = fields.get("type")
    needed = {"genesis": {"policy"}, "anchor": {"origin", "log_key", "checkpoint"}}
    if not isinstance(kind, str) or kind not in needed:
        raise AnchorError(f"unknown main-chain block type {str(kind)[:40]!r}")
    missing = ({"chain_id", "height", "prev_hash"} | needed[kind]) - set(fields)
    if missing:
        raise AnchorError(f"the {kind} record lacks {', '.join(sorted(missing))}")
    if height is not None and fields["height"] != height:
        raise AnchorError(f"the record at height {height} says {fields['height']!r}")
    return AnchorBlock(int(fields["height"]), block_hash(record), record, fields)


@dataclass(frozen=True)
class AnchorCheck:
    """What :func:`check_anchor` established about one anchor block."""

    checkpoint: Checkpoint
    log_key: VerifierKey
    cosigners: tuple[str, ...]

    def __str__(self) -> str:
        c = self.checkpoint
        return (
            f"{c.origin} at size {c.size} (root {c.root.hex()}), signed by "
            f"{self.log_key.encode()}, cosigned by {', '.join(self.cosigners)}"
        )


def check_anchor(
    block: AnchorBlock, policy: AnchorPolicy, log_key: VerifierKey | None = None
) -> AnchorCheck:
    """Check one anchor block offline: the checkpoint's signature and the
    witness quorum.

    Parameters
    ----------
    block : AnchorBlock
        An anchor block (not the genesis block).
    policy : AnchorPolicy
        The main chain's policy (from its genesis block).
    log_key : VerifierKey, optional
        The subchain key you trust; by default the key the block names (its
        name must be the checkpoint's origin either way).

    Raises
    ------
    AnchorError
        If the block is no anchor, the key is not the origin's or differs from
        ``log_key``, the subchain's signature fails, or fewer than ``quorum``
        policy witnesses cosigned.
    """
    if block.kind != "anchor":
        raise AnchorError(f"block {block.height} is a {block.kind} block")
    try:
        named = block.log_key
        note = block.note
        checkpoint, _ = open_checkpoint(note, [log_key or named])
    except (NoteError, CheckpointError) as exc:
        raise AnchorError(f"anchor block {block.height}: {exc}") from None
    key = log_key or named
    if log_key is not None and named != log_key:
        raise AnchorError(
            f"anchor block {block.height} names log key {named}, not {log_key}"
        )
    if key.name != checkpoint.origin or block.origin != checkpoint.origin:
        raise AnchorError(
            f"anchor block {block.height}: checkpoint of {checkpoint.origin!r} "
            f"filed under {block.origin!r}, signed by key {key.name!r}"
        )
    try:
        cosigners = policy.check_quorum(note)
    except AnchorError as exc:
        raise AnchorError(f"anchor block {block.height}: {exc}") from None
    return AnchorCheck(checkpoint, key, cosigners)

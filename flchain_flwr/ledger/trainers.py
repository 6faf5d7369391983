"""Trainer signatures: a train reply signed by the node that trained it.

A node holding an Ed25519 trainer key (the client mod
:func:`~flchain_flwr.mods.signreply.signreply_mod`) adds one ConfigRecord,
:data:`~flchain_flwr.protocol.TRAINER_RECORD`, to each train reply: its public
key and its signature over :func:`~.statements.trainer_statement` of the node
id, the :func:`~.canonical.update_digest` of the reply's content without that
record, and the :func:`~.canonical.model_hash` of the global model it trained
on. The reply's candidate digest is still over its whole content as received,
record included, so votes, Merkle roots and stored payloads mean what they
meant.

The live server (:mod:`flchain_flwr.strategies.trainercheck`), a replay
(:mod:`.replaypayload`) and a committee member's replay check a reply with
:func:`signed_by`. An included entry of a signed reply records the key as
``trainer`` (:data:`TRAINER_FIELD`); the first key included under a node id
pins it (trust on first use): from then on that node id's included updates
must be signed by that key (:func:`pin_problem`; the server refuses a reply
that is not, ``verify`` fails a chain that includes one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final

from flwr.app import ConfigRecord, RecordDict
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from ..protocol import TRAINER_PUBLIC_KEY, TRAINER_RECORD, TRAINER_SIGNATURE
from ..quoting import clip
from .blocks import node_key
from .canonical import is_hex, update_digest
from .statements import sign_statement, signature_ok, trainer_statement

TRAINER_FIELD: Final = "trainer"
"""Included-entry field: the hex Ed25519 key that signed the update's reply."""


class TrainerSignatureError(ValueError):
    """A reply's trainer signature record is malformed or does not verify."""


def short_key(key: str) -> str:
    """A trainer key for a reason: its first 16 hex digits."""
    return f"{key[:16]}…"


def unsigned(content: RecordDict) -> RecordDict:
    """``content`` without its trainer signature record (what is signed)."""
    return RecordDict(
        {name: record for name, record in content.items() if name != TRAINER_RECORD}
    )


def sign_reply(
    key: SigningKey, node_id: int, content: RecordDict, model: str
) -> ConfigRecord:
    """The trainer signature record of ``content`` (any record of that name
    in it left out) sent by ``node_id`` after training on the model whose
    hash is ``model``."""
    statement = trainer_statement(node_id, update_digest(unsigned(content)), model)
    return ConfigRecord(
        {
            TRAINER_PUBLIC_KEY: key.verify_key.encode(HexEncoder).decode(),
            TRAINER_SIGNATURE: sign_statement(key, statement),
        }
    )


def signed_by(node_id: int, content: RecordDict, model: str) -> str | None:
    """The trainer key that signed ``content`` as sent by ``node_id`` after
    training on the model hashed ``model``; ``None`` if it carries no trainer
    signature record.

    Raises
    ------
    TrainerSignatureError
        If the record is not exactly a lower-case hex key and signature, or
        the signature does not verify (the reply was changed after signing,
        another node's or model's, another key's).
    """
    record = content.get(TRAINER_RECORD)
    if record is None:
        return None
    where = f"trainer signature record {TRAINER_RECORD!r}"
    if not isinstance(record, ConfigRecord):
        raise TrainerSignatureError(f"{where} is not a ConfigRecord")
    names = sorted(str(name) for name in record)
    if names != sorted((TRAINER_PUBLIC_KEY, TRAINER_SIGNATURE)):
        shown = clip(repr(names), 80)
        raise TrainerSignatureError(
            f"{where} holds {shown}, expected exactly "
            f"{[TRAINER_PUBLIC_KEY, TRAINER_SIGNATURE]}"
        )
    key, signature = record[TRAINER_PUBLIC_KEY], record[TRAINER_SIGNATURE]
    if not is_hex(key, 64):
        raise TrainerSignatureError(
            f"{where}: {TRAINER_PUBLIC_KEY} {_quoted(key)} is not 64 lower-case "
            "hex digits"
        )
    if not is_hex(signature, 128):
        raise TrainerSignatureError(
            f"{where}: {TRAINER_SIGNATURE} {_quoted(signature)} is not 128 "
            "lower-case hex digits"
        )
    assert isinstance(key, str) and isinstance(signature, str)
    statement = trainer_statement(node_id, update_digest(unsigned(content)), model)
    if not signature_ok(key, statement, signature):
        raise TrainerSignatureError(
            f"{where}: the signature of trainer key {short_key(key)} does not "
            f"verify over this reply from node {node_id} trained on model "
            f"{model[:16]}…"
        )
    return key


def _quoted(value: object) -> str:
    """A record value for a reason, short whatever was sent."""
    if isinstance(value, str | bytes):
        return clip(repr(value), 40)
    return f"of type {type(value).__name__}"


def pin_problem(pins: Mapping[int, str], node_id: int, key: str | None) -> str | None:
    """Why an update of ``node_id`` signed by ``key`` (``None``: unsigned)
    breaks the node's pinned trainer key, or ``None``."""
    pinned = pins.get(node_id)
    if pinned is None or pinned == key:
        return None
    signed = "is not signed" if key is None else f"is signed by {short_key(key)}"
    return (
        f"node {node_id}'s update {signed}, but its updates were included signed "
        f"by trainer key {short_key(pinned)}"
    )


def included_trainers_problem(
    pins: MutableMapping[int, str], included: Iterable[Mapping[str, Any]]
) -> str | None:
    """Why a block's included entries break the chain's trainer keys, or
    ``None``; learns the keys they pin into ``pins`` (node id -> key).

    Each ``trainer`` is a lower-case hex key, and every included update of a
    node id whose signed update was included before (earlier in the chain or
    in this block) is signed by that same key.
    """
    for index, entry in enumerate(included):
        node = node_key(entry.get("node_id"))
        key = entry.get(TRAINER_FIELD)
        if key is not None and not is_hex(key, 64):
            return (
                f"included update {index}: {TRAINER_FIELD} {_quoted(key)} is not a "
                "hex Ed25519 key"
            )
        if node is None:
            continue
        problem = pin_problem(pins, node, key)
        if problem is not None:
            return f"included update {index}: {problem}"
        if key is not None:
            pins.setdefault(node, key)
    return None


def pin_included(pins: MutableMapping[int, str], included: Iterable[Any]) -> None:
    """Learn into ``pins`` (node id -> key) the trainer keys a verified
    block's ``included`` entries pin (where they conflict, the first key
    stays): what a resumed server holds its replies to."""
    for entry in included:
        node, key = node_key(entry.get("node_id")), entry.get(TRAINER_FIELD)
        if node is not None and is_hex(key, 64):
            pins.setdefault(node, str(key))

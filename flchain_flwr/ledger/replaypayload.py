"""One included entry checked against its stored update payload.

A replay checks each included update of a block, FedBuff's or a wrapped
strategy's (:mod:`.replaywrapped`), with :func:`check_payload`: the payload
was sent by the entry's node and hashes to its digest, the entry's
``trained_on`` is an earlier version and its staleness the versions' gap,
the payload's trainer signature (:mod:`.trainers`) is the one the entry
records (and present where the block's settings require it), and the update
parses as the server parsed it. A payload that does not raises
:class:`~.replaytypes.Failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import RecordDict

from ..arrays import NDArrays
from ..protocol import UPDATE_KIND_DELTA
from ..strategies.updates import (
    ParsedUpdate,
    UpdateRejected,
    parse_update,
    update_kind,
)
from .blocks import node_key
from .canonical import sender_update_digest
from .payload import PAYLOAD_FIELD
from .replaysettings import Settings, WrappedSettings
from .replaytypes import Failed, ReplayContext
from .trainers import TRAINER_FIELD, TrainerSignatureError, short_key, signed_by


@dataclass(frozen=True)
class Checked:
    """An included entry checked against its stored payload
    (:func:`check_payload`)."""

    node_id: int
    trained_on: int
    trainer: str | None
    parsed: ParsedUpdate


# pylint: disable=too-many-arguments
def check_payload(
    replay: ReplayContext,
    where: str,
    entry: Mapping[str, Any],
    parent: NDArrays,
    parent_version: int,
    settings: Settings | WrappedSettings,
) -> Checked:
    """One included entry checked against its stored payload: sender,
    digest, ``trained_on`` and staleness, trainer signature, and the update
    parsed as the server parsed it (with the block's record keys)."""
    try:
        node_id, content = replay.ledger.blobs.load_update(str(entry[PAYLOAD_FIELD]))
    except ValueError as exc:
        raise Failed(f"{where}: {exc}") from None
    if node_id != node_key(entry["node_id"]):
        raise Failed(f"{where}: its payload was sent by another node")
    if sender_update_digest(node_id, content) != entry["digest"]:
        raise Failed(f"{where}: its stored payload does not hash to its digest")
    trained_on = entry["trained_on"]
    if (
        isinstance(trained_on, bool)
        or not isinstance(trained_on, int)
        or trained_on not in replay.versions
        or trained_on > parent_version
    ):
        raise Failed(f"{where}: trained on {trained_on!r}, not an earlier version")
    staleness = parent_version - trained_on
    if entry["staleness"] != staleness:
        raise Failed(
            f"{where}: records staleness {entry['staleness']!r}, "
            f"the versions give {staleness}"
        )
    base = replay.versions[trained_on]
    trainer = _trainer(where, node_id, content, entry, base, settings.require_signed)
    try:
        kind = update_kind(content)
        reference = parent if kind == UPDATE_KIND_DELTA else replay.model(base)
        parsed = parse_update(
            content,
            reference,
            arrayrecord_key=settings.arrayrecord_key,
            weighted_by_key=settings.weighted_by_key,
            trained_on=trained_on,
        )
    except UpdateRejected as exc:
        raise Failed(f"{where} is not a valid update: {exc.reason}") from None
    return Checked(node_id, trained_on, trainer, parsed)


# pylint: disable=too-many-arguments
def _trainer(
    where: str,
    node_id: int,
    content: RecordDict,
    entry: Mapping[str, Any],
    model: str,
    require_signed: bool,
) -> str | None:
    """The trainer key that signed a stored payload, checked against the
    model it was trained on (hash ``model``) and the entry's ``trainer``;
    with ``require_signed`` (the block's settings), an unsigned one fails."""
    try:
        signer = signed_by(node_id, content, model)
    except TrainerSignatureError as exc:
        raise Failed(f"{where}: {exc}") from None
    recorded = entry.get(TRAINER_FIELD)
    if recorded != signer:
        says = "no trainer" if recorded is None else short_key(str(recorded))
        found = "no trainer signature" if signer is None else short_key(signer)
        raise Failed(
            f"{where}: records trainer {says}, its stored payload carries {found}"
        )
    if signer is None and require_signed:
        raise Failed(
            f"{where}: its payload is not signed by its trainer, and the block's "
            "settings require signed replies"
        )
    return signer

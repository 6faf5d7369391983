"""Train replies signed by their trainers, as a Flower client mod.

With node config ``trainer-key`` (a file path) :func:`signreply_mod` signs
every train reply with the node's Ed25519 trainer key, created (mode 0600,
fsynced) if the file does not exist; a file that does not hold a key is
refused, never replaced, and the node then replies an error instead of
training. It adds one ConfigRecord,
:data:`~flchain_flwr.protocol.TRAINER_RECORD`, holding the public key and the
signature over the node id, the digest of the reply without that record, and
the hash of the global model the node trained on (see
:mod:`flchain_flwr.ledger.trainers`). Without ``trainer-key`` it does nothing.

Put it first, outside every other mod::

    app = ClientApp(mods=[signreply_mod, downlink_mod(), dgc_mod()])

so that it signs the reply exactly as sent (compressed by the DGC mod, with the
downlink mod's record) and sees the train message as received. The model it
trained on is the received model's hash, as blocks hash models; for a downlink
delta, the ``model-hash`` the delta names (which the downlink mod checks the
rebuilt model against before the app trains on it).
"""

from __future__ import annotations

from logging import WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Final

from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from ..arrays import to_ndarrays
from ..ledger.canonical import model_hash
from ..protocol import DOWNLINK_RECORD, TRAINER_RECORD
from ..quoting import clip

if TYPE_CHECKING:
    from nacl.signing import SigningKey

TRAINER_KEY_CONFIG: Final = "trainer-key"
"""Node config key: the path of the node's Ed25519 trainer key file."""
SIGNREPLY_ERROR: Final = ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class SignReplyError(ValueError):
    """The node cannot sign: no usable key, or no model to name."""


def _trained_on(msg: Message) -> str:
    """The model hash of the global model a train message carries."""
    sent = msg.content.config_records.get(DOWNLINK_RECORD)
    if sent is not None:
        wanted = sent.get("model-hash")
        if not isinstance(wanted, str):
            raise SignReplyError("the downlink delta does not name its model hash")
        return wanted
    records = msg.content.array_records
    if len(records) != 1:
        raise SignReplyError(
            f"the train message carries {len(records)} ArrayRecords, not one model"
        )
    try:
        return model_hash(to_ndarrays(next(iter(records.values()))))
    except Exception as exc:  # a forged Array fails to decode in many ways
        raise SignReplyError(
            f"the received model does not decode: {clip(str(exc), 80)}"
        ) from None


def _trainer_key(path: object) -> SigningKey:
    """The key in ``path``, created if absent (imported here: a node without
    a trainer key loads neither PyNaCl nor the ledger's key files)."""
    from ..ledger.blocks import LedgerError
    from ..ledger.keys import load_or_create_key

    if not isinstance(path, str) or not path:
        raise SignReplyError(
            f"node config {TRAINER_KEY_CONFIG!r} must be a file path, got "
            f"{clip(repr(path), 80)}"
        )
    try:
        return load_or_create_key(Path(path))
    except LedgerError as exc:
        raise SignReplyError(clip(str(exc))) from None
    except OSError as exc:
        raise SignReplyError(
            f"trainer key {clip(path, 120)}: {exc.strerror or exc}"
        ) from None


def signreply_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Sign each train reply with the node's trainer key (see the module)."""
    kind = msg.metadata.message_type.split(".")[0]
    if kind != MessageType.TRAIN or TRAINER_KEY_CONFIG not in context.node_config:
        return call_next(msg, context)
    try:
        key = _trainer_key(context.node_config[TRAINER_KEY_CONFIG])
        model = _trained_on(msg)
    except SignReplyError as exc:
        reason = f"train reply not signed: {exc}"
        log(WARNING, "signreply_mod: %s", reason)
        return Message(Error(code=SIGNREPLY_ERROR, reason=reason), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    from ..ledger.trainers import sign_reply  # as _trainer_key's imports

    reply.content[TRAINER_RECORD] = sign_reply(
        key, context.node_id, reply.content, model
    )
    return reply


__all__ = ["TRAINER_KEY_CONFIG", "SignReplyError", "signreply_mod"]

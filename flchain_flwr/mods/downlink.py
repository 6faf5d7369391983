"""The receiving half of the lossless sparse downlink, as a Flower client mod.

A server that sends downlink deltas (``FedBuff(downlink=True)``) says so in its
train messages (:data:`~flchain_flwr.protocol.DOWNLINK_KEY`). This mod then
keeps the last global model its node received in ``Context.state`` and tells
the server, in every train reply, which version and model hash it holds. The
server may send that node, instead of the full model, the entries that changed
since (their final values, in the sparse wire format) and the hash of the model
they make. The mod rebuilds the full model bit for bit, checks its hash, and
hands the ClientApp ordinary full arrays::

    app = ClientApp(mods=[downlink_mod(), dgc_mod()])  # downlink_mod first

A delta the node cannot rebuild (no base: a new node, a restarted SuperNode, a
lost state; a base whose hash differs; a rebuilt model whose hash differs) is
never trained on: the reply is an error saying why, which the server records,
and the node gets the full model next time. Without the server's key the mod
does nothing.

A node's first model need not travel whole either. When the app builds the
run's initial model itself, deterministically (the same seeded initialisation
as its ServerApp), give the mod that function; a server run with
``FedBuff(downlink_from_initial=True)`` then sends a node it has not heard from
the delta from the initial version, and the mod rebuilds it on the model the
function returns, once its hash is the one the server names::

    downlink_mod(initial_model=lambda context: my_initial_arrays(context.run_config))
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING
from typing import Final

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from ..arrays import NDArrays, to_arrayrecord, to_ndarrays
from ..compression.sparse import is_sparse
from ..compression.sparse_decode import decode_entries
from ..ledger.canonical import model_hash
from ..protocol import (
    DOWNLINK_INITIAL_KEY,
    DOWNLINK_KEY,
    DOWNLINK_RECORD,
    MODEL_VERSION_KEY,
)

STATE_BASE: Final = "flchain.downlink.base"
STATE_INFO: Final = "flchain.downlink.info"
DOWNLINK_ERROR: Final = ErrorCode.CLIENT_APP_RAISED_EXCEPTION

InitialModel = Callable[[Context], NDArrays]
"""Builds the run's initial model on the node (see the module)."""


class DownlinkError(ValueError):
    """A downlink delta that cannot be rebuilt into the announced model."""


def apply_delta(base: NDArrays, delta: ArrayRecord) -> NDArrays:
    """The model a delta makes from ``base``: sparse arrays set their entries to
    the values sent, dense arrays replace the tensor.

    Raises
    ------
    DownlinkError
        If the delta names other tensors than the base, or an array does not
        decode against its base tensor.
    """
    if list(delta.keys()) != list(base.keys()):
        raise DownlinkError("the delta's tensors are not the base model's")
    model: NDArrays = {}
    for name, array in delta.items():
        ref = base[name]
        try:
            if is_sparse(array):
                idx, values = decode_entries(array, shape=ref.shape, dtype=ref.dtype)
                value = ref.copy()
                value.reshape(-1)[idx] = values
            else:
                value = array.numpy()
        except Exception as exc:  # np.load raises EOFError, OSError, ValueError...
            raise DownlinkError(f"array {name!r}: {_describe(exc)}") from None
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise DownlinkError(f"array {name!r} does not match the base's")
        model[name] = value
    return model


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _base(state: RecordDict) -> tuple[int, str, NDArrays] | None:
    info = state.get(STATE_INFO)
    arrays = state.get(STATE_BASE)
    if not isinstance(info, ConfigRecord) or not isinstance(arrays, ArrayRecord):
        return None
    return int(info["version"]), str(info["hash"]), to_ndarrays(arrays)  # type: ignore[arg-type]


def _config(msg: Message) -> ConfigRecord | None:
    """The train message's config that announces the downlink, if any."""
    for name, record in msg.content.config_records.items():
        if name != DOWNLINK_RECORD and record.get(DOWNLINK_KEY) is True:
            return record
    return None


def downlink_mod(
    arrayrecord_key: str = "arrays", initial_model: InitialModel | None = None
) -> Mod:
    """A Flower client mod that receives downlink deltas (see the module).

    Parameters
    ----------
    arrayrecord_key : str (default: "arrays")
        Key of the model's ArrayRecord in a train message.
    initial_model : callable | None (default: None)
        Builds the run's initial model from the node's ``Context``, exactly as
        the ServerApp does, so that a delta from the initial version can be
        rebuilt on a node with no model kept. Its hash is checked against the
        one the server names; a different model is refused, never trained on.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        kind = msg.metadata.message_type.split(".")[0]
        config = _config(msg) if kind == MessageType.TRAIN else None
        if config is None:
            return call_next(msg, context)
        arrays = msg.content.array_records.get(arrayrecord_key)
        if arrays is None:
            return call_next(msg, context)
        sent = msg.content.config_records.get(DOWNLINK_RECORD)
        try:
            model = _received(arrays, sent, _Bases(context, initial_model))
        except DownlinkError as exc:
            reason = f"downlink delta not applied: {exc}"
            log(WARNING, "downlink_mod: %s", reason)
            return Message(Error(code=DOWNLINK_ERROR, reason=reason), reply_to=msg)
        version = config.get(MODEL_VERSION_KEY)
        digest = model_hash(model)
        full = to_arrayrecord(model) if sent is not None else arrays
        content = RecordDict(
            {
                k: v
                for k, v in msg.content.items()
                if k not in (arrayrecord_key, DOWNLINK_RECORD)
            }
        )
        content[arrayrecord_key] = full
        msg.content = content
        if isinstance(version, int) and not isinstance(version, bool):
            context.state[STATE_BASE] = to_arrayrecord(model)
            context.state[STATE_INFO] = ConfigRecord(
                {"version": version, "hash": digest}
            )
        reply = call_next(msg, context)
        if reply.has_error() or not isinstance(version, int):
            return reply
        reply.content[DOWNLINK_RECORD] = ConfigRecord(
            {"holds-version": version, "holds-hash": digest}
        )
        return reply

    return mod


class _Bases:
    """The models a node can rebuild a delta on: the one it kept, and the run's
    initial model if the app can build it."""

    def __init__(self, context: Context, initial_model: InitialModel | None) -> None:
        self.context, self.initial_model = context, initial_model

    def kept(self) -> tuple[int, str, NDArrays] | None:
        return _base(self.context.state)

    def initial(self, version: object, wanted: str) -> NDArrays:
        """The initial model, if it hashes to ``wanted``."""
        if self.initial_model is None:
            raise DownlinkError(
                f"the delta is on the run's initial model (version {version!r}), "
                "which this node cannot build: give downlink_mod an initial_model, "
                "or run the server without downlink_from_initial"
            )
        model = self.initial_model(self.context)
        got = model_hash(model)
        if got != wanted:
            raise DownlinkError(
                f"this node's initial model hashes to {got[:12]}, the server's "
                f"initial version {version!r} to {wanted[:12]}"
            )
        return model


def _received(
    arrays: ArrayRecord, sent: ConfigRecord | None, bases: _Bases
) -> NDArrays:
    """The full model a train message carries, rebuilt if it is a delta."""
    if sent is None:
        try:
            return to_ndarrays(arrays)
        except Exception as exc:  # as in apply_delta
            raise DownlinkError(
                f"the full model does not decode: {_describe(exc)}"
            ) from None
    base_version = sent.get("base-version")
    base_hash, wanted = sent.get("base-hash"), sent.get("model-hash")
    if not isinstance(base_hash, str) or not isinstance(wanted, str):
        raise DownlinkError("the delta does not name its base and model hashes")
    held = bases.kept()
    if sent.get(DOWNLINK_INITIAL_KEY) is True and (
        held is None or held[1] != base_hash
    ):
        base = bases.initial(base_version, base_hash)
    elif held is None:
        raise DownlinkError(
            f"no base model kept for a delta on version {base_version!r} "
            "(new node, restart or lost state)"
        )
    elif held[1] != base_hash:
        raise DownlinkError(
            f"holds version {held[0]} ({held[1][:12]}), the delta is on version "
            f"{base_version!r} ({base_hash[:12]})"
        )
    else:
        base = held[2]
    model = apply_delta(base, arrays)
    got = model_hash(model)
    if got != wanted:
        raise DownlinkError(
            f"the rebuilt model hashes to {got[:12]}, the server's to {wanted[:12]}"
        )
    return model

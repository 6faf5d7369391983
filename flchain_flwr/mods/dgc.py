"""Deep Gradient Compression (Lin et al., ICLR 2018) as a Flower client mod.

Shaped like PyTorch's PowerSGD hook: :class:`~.dgcconfig.DGCConfig` says what
to do, :class:`~.dgccompress.DGCState` is the per-node state (momentum ``u``,
residual ``v``, rounds seen), :func:`~.dgccompress.compress` is a pure function
from an update and a state to what is sent and the next state, and
:func:`dgc_mod` (here) wires it into a ClientApp::

    app = ClientApp(mods=[dgc_mod(DGCConfig(density=0.001))])

For each train reply the mod turns the returned weights into the update
``delta = trained - received``, then: clips it by norm (optional), applies
momentum correction (``u <- m u + (1 - m) delta; v <- v + u``), keeps the top
``density`` fraction of ``|v|`` per tensor (exact, or DGC's sampled threshold
with a second top-k for large tensors), zeroes ``u`` and ``v`` where it sent
(momentum factor masking), and keeps the rest of ``v`` as the residual for the
next round. Tensors smaller than ``min_sparse_size`` are sent in full. Each
tensor travels in the smaller of the sparse and the dense encoding. The density
follows a warm-up schedule over the node's first rounds. State lives in
``Context.state``, so it survives across messages in simulation and in
deployment. Evaluate and query messages, and replies that carry an error, pass
through untouched.
"""

from __future__ import annotations

from logging import WARNING
from typing import Any, Final

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..compression.sparse import SPARSE_STYPE
from ..protocol import (
    MODEL_VERSION_KEY,
    SPARSE_REPLIES_KEY,
    TRAINED_ON_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
)
from .dgccompress import DGCState, compress
from .dgcconfig import DGCConfig

FORMAT_KEY: Final = "format"


def server_decodes_sparse(message: Message) -> bool:
    """Whether ``message`` announces that its server decodes sparse replies."""
    return any(
        record.get(SPARSE_REPLIES_KEY) is True
        for record in message.content.config_records.values()
    )


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == MessageType.TRAIN


def _reply_delta(
    msg: Message, reply: Message, key: str
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The update in a train reply as a delta, or ``None`` and why not."""
    sent = msg.content.array_records.get(key)
    got = reply.content.array_records.get(key)
    if sent is None or got is None:
        return None, f"no ArrayRecord {key!r} in the instruction or the reply"
    if any(a.stype == SPARSE_STYPE for a in sent.values()):
        return None, "the instruction is a downlink delta: put downlink_mod() first"
    if list(sent.keys()) != list(got.keys()):
        return None, "the reply's arrays differ from the received ones"
    info = reply.content.config_records.get(UPDATE_INFO_KEY)
    is_delta = info is not None and info.get(UPDATE_KIND_KEY) == UPDATE_KIND_DELTA
    if any(a.stype == SPARSE_STYPE for a in got.values()):
        return None, "the reply is already compressed"
    delta = {}
    for name in sent:
        trained = got[name].numpy()
        if is_delta:
            delta[name] = trained
        elif trained.dtype.kind == "f":
            delta[name] = trained - sent[name].numpy()
        else:  # ints, uints, bools: a signed delta, no wrap-around
            delta[name] = trained.astype(np.int64) - sent[name].numpy().astype(np.int64)
    return delta, ""


def dgc_mod(config: DGCConfig | None = None) -> Mod:
    """A Flower client mod that compresses train replies with DGC.

    With ``config=None`` the mod reads ``dgc-*`` keys from the run config at each
    message (:meth:`DGCConfig.from_run_config`); ``dgc-density`` >= 1 (or absent)
    then means "send dense, no mod".

    The mod compresses only when the train message says the server decodes
    sparse replies (:data:`~flchain_flwr.protocol.SPARSE_REPLIES_KEY`, set by
    ``FedBuff`` and ``DecompressReplies``). Any other server (Flower's plain
    ``FedAvg``) gets the ordinary dense reply, and the node logs once why.
    """
    warned = False

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        nonlocal warned
        reply = call_next(msg, context)
        if not _is_train(msg) or reply.has_error():
            return reply
        cfg = (
            config
            if config is not None
            else DGCConfig.from_run_config(context.run_config)
        )
        if cfg is None:
            return reply
        if not server_decodes_sparse(msg):
            if not warned:
                warned = True
                log(
                    WARNING,
                    "dgc_mod: the server does not announce %r in its train "
                    "messages, so replies are sent dense (uncompressed); use "
                    "FedBuff, or wrap the strategy in DecompressReplies(...)",
                    SPARSE_REPLIES_KEY,
                )
            return reply
        delta, problem = _reply_delta(msg, reply, cfg.arrayrecord_key)
        if delta is None:  # not ours to compress: send it as it is, dense
            log(WARNING, "dgc_mod: reply sent uncompressed: %s", problem)
            return reply
        compressed, state = compress(delta, DGCState.load(context.state), cfg)
        state.save(context.state)
        content = RecordDict(
            {
                name: record
                for name, record in reply.content.items()
                if name not in (cfg.arrayrecord_key, UPDATE_INFO_KEY)
            }
        )
        content[cfg.arrayrecord_key] = ArrayRecord(compressed.arrays)
        info: dict[str, Any] = {
            UPDATE_KIND_KEY: UPDATE_KIND_DELTA,
            FORMAT_KEY: SPARSE_STYPE,
            "density": compressed.density,
        }
        sent_config = msg.content.config_records.get("config")
        if sent_config is not None and MODEL_VERSION_KEY in sent_config:
            info[TRAINED_ON_KEY] = sent_config[MODEL_VERSION_KEY]
        content[UPDATE_INFO_KEY] = ConfigRecord(info)
        reply.content = content
        return reply

    return mod


__all__ = ["dgc_mod"]

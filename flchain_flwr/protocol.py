"""Record keys shared by the server-side strategies and the client side.

Plain Flower ClientApps need none of this: they receive ``arrays`` and ``config`` and
reply with ``arrays`` (full weights) and ``metrics`` (with ``num-examples``), exactly
as with Flower's FedAvg. The keys below are the optional extras.
"""

from __future__ import annotations

from typing import Final

# Keys the strategy writes into each train message's ConfigRecord.
MODEL_VERSION_KEY: Final = "model-version"
"""Global model version the node is asked to train on (0 = initial model)."""
SERVER_ROUND_KEY: Final = "server-round"
"""Flower's usual round counter: the version this update will help produce."""

# Optional ConfigRecord a client (or a client mod) adds to its train reply.
UPDATE_INFO_KEY: Final = "flchain"
"""Key of the optional ConfigRecord describing the update in a train reply."""
UPDATE_KIND_KEY: Final = "update-kind"
"""Inside ``UPDATE_INFO_KEY``: ``"weights"`` (default) or ``"delta"``."""
UPDATE_KIND_WEIGHTS: Final = "weights"
UPDATE_KIND_DELTA: Final = "delta"
UPDATE_KINDS: Final = (UPDATE_KIND_WEIGHTS, UPDATE_KIND_DELTA)
TRAINED_ON_KEY: Final = "trained-on"
"""Inside ``UPDATE_INFO_KEY``, optional: the model version the client trained on;
the server rejects a reply whose claim differs from what it sent."""

# Optional ConfigRecord a client mod (signreply_mod) adds to a train reply.
TRAINER_RECORD: Final = "flchain.trainer"
"""Key of the ConfigRecord signing a train reply for its trainer: ``public-key``
(hex Ed25519 key) and ``signature`` (hex), over the statement
:func:`flchain_flwr.ledger.statements.trainer_statement` of the reply without
this record (see :mod:`flchain_flwr.ledger.trainers`)."""
TRAINER_PUBLIC_KEY: Final = "public-key"
TRAINER_SIGNATURE: Final = "signature"

# Capabilities a server announces in each train message's ConfigRecord, so that
# client mods use a wire format only where the server can read it.
SPARSE_REPLIES_KEY: Final = "flchain-sparse-replies"
"""``True``: the server decodes sparse delta replies (the DGC mod's format)."""
DOWNLINK_KEY: Final = "flchain-downlink"
"""``True``: the server sends sparse downlink deltas to nodes that hold a base."""
DOWNLINK_RECORD: Final = "flchain.downlink"
"""ConfigRecord of a downlink delta (in a train message: ``base-version``,
``base-hash``, ``model-hash``) and of a reply from a node that keeps its base
(``holds-version``, ``holds-hash``). Hashes are the ledger's model hashes."""
DOWNLINK_INITIAL_KEY: Final = "base-initial"
"""Inside ``DOWNLINK_RECORD`` of a train message, optional: ``True`` when the
base is the run's initial model, which a node with no base may build itself."""

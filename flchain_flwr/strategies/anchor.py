"""Anchoring from the strategy: a block stage after the ledger, and its run config.

``FedBuff(..., ledger=..., anchor=Anchorer(...))`` puts an :class:`AnchorStage`
after the ledger stage: after each committed block it anchors the ledger's
checkpoint in the main chain when the :class:`~flchain_flwr.ledger.anchoring.
Anchorer` says it is due (every N blocks, or every T seconds of the run's
virtual time: the block's ``time``), and once more when the run ends. A
refused anchor is logged and training goes on (the next block retries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from flwr.serverapp import Grid

from ..configvalues import (
    ConfigValue,
    integer_value,
    number_value,
    seconds_or_none,
    text_value,
)
from ..ledger import Ledger
from ..ledger.anchoring import Anchorer, WitnessClient
from ..ledger.anchorspool import SpoolAnchorer
from ..ledger.keys import load_or_create_key
from ..ledger.mainchain import MainChain
from ..ledger.witness import Witness
from ..witness_node import RemoteWitness, discover_witnesses
from .block import Block
from .pipeline import BlockStage

DEFAULTS: Mapping[str, ConfigValue] = {
    "anchor-main": "",
    "anchor-spool": "",
    "anchor-key": "",
    "anchor-witnesses": "",
    "anchor-witness-nodes": 0,
    "anchor-every": 0,
    "anchor-every-seconds": 0.0,
    "anchor-discovery-timeout": 180.0,
    "anchor-witness-timeout": 60.0,
}
"""The anchoring keys a run config may leave out, and what they then are."""


class BlockAnchorer(Protocol):
    """What the stage drives: an :class:`~flchain_flwr.ledger.anchoring.Anchorer`
    (it holds the main key) or a :class:`~flchain_flwr.ledger.anchorspool.
    SpoolAnchorer` (it writes requests for the main chain's operator)."""

    @property
    def witnesses(self) -> Sequence[WitnessClient]:
        """The witnesses it asks."""
        ...

    @property
    def every_blocks(self) -> int | None:
        """Blocks between anchors (``None``: not by blocks)."""
        ...

    @property
    def every_seconds(self) -> float | None:
        """Run seconds between anchors (``None``: not by time)."""
        ...

    def after_block(self, ledger: Ledger, time: float) -> Any:
        """Anchor (or spool) if due."""
        ...

    def anchor_now(self, ledger: Ledger, time: float) -> Any:
        """Anchor (or spool) the ledger's current checkpoint now."""
        ...


class AnchorStage(BlockStage):
    """Anchor ``ledger`` through ``anchorer`` after blocks, and at the end."""

    def __init__(self, ledger: Ledger, anchorer: BlockAnchorer) -> None:
        self.ledger = ledger
        self.anchorer = anchorer
        self._time = 0.0

    def commit(self, block: Block) -> None:
        """Anchor if the anchorer says the ledger is due."""
        self._time = block.time
        self.anchorer.after_block(self.ledger, block.time)

    def close(self) -> None:
        """Anchor the run's last block (unless it is anchored already)."""
        if len(self.ledger):
            self.anchorer.anchor_now(self.ledger, self._time)


def anchorer_from_run_config(
    cfg: Mapping[str, ConfigValue], grid: Grid | None = None
) -> BlockAnchorer | None:
    """An anchorer from run-config keys, or ``None`` without ``anchor-main``
    (or with it ``""``).

    Keys: ``anchor-main`` (the main chain's file, which must exist), one of
    ``anchor-spool`` (a folder: a :class:`~flchain_flwr.ledger.anchorspool.
    SpoolAnchorer` writes cosigned anchor requests there for ``flchain main
    ingest``; the main chain is only read: the deployment default) or
    ``anchor-key`` (the main chain's key file: the run appends to the main
    chain itself, and has its witnesses cosign the main chain's checkpoint
    after each anchor), ``anchor-every`` (blocks,
    <= 0: not by blocks) and ``anchor-every-seconds`` (virtual seconds, <= 0
    or inf: not by time; at least one of the two must be on), and the
    witnesses, one of:

    - ``anchor-witnesses``: comma-separated witness folders on this machine;
    - ``anchor-witness-nodes = N``: witness SuperNodes on ``grid`` (node
      config ``role="witness"``), found by :func:`~flchain_flwr.witness_node.
      discover_witnesses` among the main chain policy's witness keys: the
      first ``N`` to prove they hold one (quorum <= N <= the policy's
      witnesses). ``anchor-discovery-timeout`` (seconds, default 180) bounds
      the search, ``anchor-witness-timeout`` (default 60) each round of
      identity queries and each cosigning.

    Every key is read by the typed readers of :mod:`flchain_flwr.configvalues`
    (absent: its :data:`DEFAULTS` entry); a wrong type, a fraction or NaN is
    refused, never turned off silently.

    Raises
    ------
    ValueError
        If a key is malformed or the keys contradict (the message names them).
    TimeoutError
        If the witness nodes are not found in time.
    """
    cfg = {**DEFAULTS, **cfg}
    main_path = text_value(cfg, "anchor-main")
    if not main_path:
        return None
    spool = text_value(cfg, "anchor-spool")
    key_path = text_value(cfg, "anchor-key")
    if bool(spool) == bool(key_path):
        raise ValueError(
            "run config: anchor-main needs anchor-key (the main chain's key) or "
            "anchor-spool (a folder for the main chain's operator), not both"
        )
    key_file = Path(key_path)
    if not spool and not key_file.is_file():
        raise ValueError(f"run config: anchor-key {key_file} is not a file")
    folders = [f.strip() for f in text_value(cfg, "anchor-witnesses").split(",")]
    folders = [f for f in folders if f]
    nodes = integer_value(cfg, "anchor-witness-nodes", minimum=0)
    if bool(folders) == (nodes > 0):
        raise ValueError(
            "run config: anchor-main needs anchor-witnesses (folders) or "
            "anchor-witness-nodes > 0 (witness SuperNodes), not both"
        )
    every = integer_value(cfg, "anchor-every")
    period = seconds_or_none(cfg, "anchor-every-seconds")
    main = MainChain(
        main_path, signing_key=None if spool else load_or_create_key(key_file)
    )
    witnesses: list[WitnessClient]
    if folders:
        witnesses = [Witness(folder) for folder in folders]
    else:
        witnesses = list(_remote_witnesses(cfg, grid, main, nodes))
    blocks = every if every > 0 else None
    if spool:
        return SpoolAnchorer(
            main, spool, witnesses, every_blocks=blocks, every_seconds=period
        )
    main.witnesses = witnesses  # they cosign the main chain's checkpoint too
    return Anchorer(main, witnesses, every_blocks=blocks, every_seconds=period)


def _remote_witnesses(
    cfg: Mapping[str, ConfigValue], grid: Grid | None, main: MainChain, count: int
) -> list[RemoteWitness]:
    """``count`` of the policy's witnesses, as the SuperNodes that hold them."""
    if grid is None:
        raise ValueError("run config: anchor-witness-nodes needs the ServerApp's grid")
    policy = main.policy
    if not policy.quorum <= count <= len(policy.witnesses):
        raise ValueError(
            f"run config: anchor-witness-nodes = {count}, but the main chain's "
            f"policy has {len(policy.witnesses)} witnesses and a quorum of "
            f"{policy.quorum}"
        )
    timeout = _timeout(cfg, "anchor-witness-timeout")
    found = discover_witnesses(
        grid,
        policy.witnesses,
        expected=count,
        timeout=_timeout(cfg, "anchor-discovery-timeout"),
        reply_timeout=timeout,
    )
    keys = {key.encode(): key for key in policy.witnesses}
    return [
        RemoteWitness(grid, node, keys[vkey], timeout) for vkey, node in found.items()
    ]


def _timeout(cfg: Mapping[str, ConfigValue], key: str) -> float:
    """``cfg[key]``: seconds > 0 (inf: no limit)."""
    return number_value(cfg, key, low=0.0, low_open=True, allow_inf=True)


def witness_nodes(anchorer: BlockAnchorer | None) -> frozenset[int]:
    """The node IDs of an anchorer's witness SuperNodes (they never train)."""
    if anchorer is None:
        return frozenset()
    return frozenset(w.node for w in anchorer.witnesses if isinstance(w, RemoteWitness))

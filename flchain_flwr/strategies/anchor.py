"""Anchoring from the strategy: a block stage after the ledger, and its run config.

``FedBuff(..., ledger=..., anchor=Anchorer(...))`` puts an :class:`AnchorStage`
after the ledger stage: after each committed block it anchors the ledger's
checkpoint in the main chain when the :class:`~flchain_flwr.ledger.anchoring.
Anchorer` says it is due (every N blocks, or every T seconds of the run's
virtual time: the block's ``time``), and once more when the run ends. A
refused anchor is logged and training goes on (the next block retries).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..ledger import Ledger
from ..ledger.anchoring import Anchorer
from ..ledger.chain import load_or_create_key
from ..ledger.mainchain import MainChain
from ..ledger.witness import Witness
from .pipeline import Block, BlockStage

ConfigValue = int | float | str | bool


class AnchorStage(BlockStage):
    """Anchor ``ledger`` through ``anchorer`` after blocks, and at the end."""

    def __init__(self, ledger: Ledger, anchorer: Anchorer) -> None:
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


def anchorer_from_run_config(cfg: Mapping[str, ConfigValue]) -> Anchorer | None:
    """An :class:`Anchorer` from run-config keys, or ``None`` without
    ``anchor-main`` (or with it ``""``).

    Keys: ``anchor-main`` (the main chain's file, which must exist),
    ``anchor-key`` (the main chain's key file), ``anchor-witnesses``
    (comma-separated witness folders), ``anchor-every`` (blocks, <= 0: not by
    blocks) and ``anchor-every-seconds`` (virtual seconds, <= 0: not by time);
    at least one of the last two must be on.

    Raises
    ------
    ValueError
        If a key is missing or malformed (the message names it).
    """
    main_path = str(cfg.get("anchor-main", ""))
    if not main_path:
        return None
    for key in ("anchor-key", "anchor-witnesses"):
        if not str(cfg.get(key, "")):
            raise ValueError(f"run config: anchor-main needs {key}")
    key_file = Path(str(cfg["anchor-key"]))
    if not key_file.is_file():
        raise ValueError(f"run config: anchor-key {key_file} is not a file")
    witnesses = [
        Witness(folder.strip())
        for folder in str(cfg["anchor-witnesses"]).split(",")
        if folder.strip()
    ]
    every = cfg.get("anchor-every", 0)
    seconds = cfg.get("anchor-every-seconds", 0.0)
    if isinstance(every, bool) or not isinstance(every, int):
        raise ValueError(f"run config: anchor-every must be an int, not {every!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError("run config: anchor-every-seconds must be a number")
    main = MainChain(main_path, signing_key=load_or_create_key(key_file))
    return Anchorer(
        main,
        witnesses,
        every_blocks=every if every > 0 else None,
        every_seconds=float(seconds) if seconds > 0 else None,
    )

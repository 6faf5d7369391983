"""Anchoring a model-trading subchain in a main chain, through witnesses.

The same protocol as :func:`~flchain_flwr.ledger.anchoring.anchor_ledger` for
training ledgers, by the same collector
(:func:`~flchain_flwr.ledger.anchoring.collect_cosignatures`): the chain's
signed checkpoint goes to every witness with a consistency proof from the size
that witness last cosigned (learned from its 409 answer), and is appended to
the main chain once a quorum of the policy's witnesses cosigned it. An
adapter, because ``anchor_ledger`` reads a training ledger's genesis block for
the log key, and a trading chain has none: its key is the operator's,
recorded in the file
(:meth:`TradingChain.recorded_verifier`; anchoring needs no operator secret).
"""

from __future__ import annotations

from collections.abc import Sequence

from .anchorblock import AnchorBlock
from .anchoring import WitnessClient, collect_cosignatures
from .checkpoint import CheckpointError, open_checkpoint
from .mainchain import MainChain
from .maindb import AnchorRefused
from .notes import NoteError, SignedNote, read_note
from .rfc6962 import HashTree
from .trading import TradingChain


def cosign_trading_checkpoint(
    chain: TradingChain, witnesses: Sequence[WitnessClient], quorum: int
) -> tuple[SignedNote, list[str]]:
    """The chain's current checkpoint with every cosignature the witnesses
    give, and their refusals (``"witness <i>: <reason>"``).

    Raises
    ------
    AnchorRefused
        If the checkpoint is not the operator's, or fewer than ``quorum``
        witnesses cosigned.
    """
    key = chain.recorded_verifier()
    if key is None:
        raise AnchorRefused(f"{chain.path} has no entries: nothing to anchor")
    try:
        note = read_note(chain.checkpoint_path)
        checkpoint, _ = open_checkpoint(note, [key])
    except (OSError, NoteError, CheckpointError) as exc:
        raise AnchorRefused(
            f"the trading chain's checkpoint {chain.checkpoint_path}: {exc}"
        ) from None
    tree = HashTree(bytes.fromhex(digest) for digest in chain.block_hashes())
    return collect_cosignatures(
        note, checkpoint.size, key, witnesses, quorum, tree.consistency
    )


def anchor_trading_chain(
    chain: TradingChain, main: MainChain, witnesses: Sequence[WitnessClient]
) -> AnchorBlock:
    """Anchor the trading chain's current checkpoint in ``main``.

    Raises
    ------
    AnchorRefused
        If the witnesses' quorum or the main chain refuses (nothing appended).
    """
    note, _ = cosign_trading_checkpoint(chain, witnesses, main.policy.quorum)
    key = chain.recorded_verifier()
    assert key is not None  # the checkpoint was checked under it
    previous = main.anchors_for(chain.origin)
    size = int(note.text.split("\n")[1])
    last = previous[-1].checkpoint.size if previous else 0
    proof = chain.prove_consistency(last, size) if 0 < last < size else None
    return main.anchor(note, key, proof)

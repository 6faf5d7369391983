"""Writing a provenance bundle: a model's training block, proved in the
checkpoint the main chain anchored.

The bundle's format, and how it is checked offline, are in
:mod:`flchain_flwr.ledger.provenance`.
"""

from __future__ import annotations

from .blocks import LedgerError
from .canonical import encode
from .chain import Ledger
from .mainchain import MainChain
from .provenance import BUNDLE_FORMAT
from .provenance_quorum import bundle_signatures
from .tlog_proof import TlogProofError, make_tlog_proof


def _stored(ledger: Ledger, height: int) -> dict[str, str]:
    block = ledger.block(height)
    return {
        "header": block.header_bytes.decode("utf-8"),
        "body": block.body_bytes.decode("utf-8"),
        "signature": block.signature,
    }


def build_bundle(ledger: Ledger, main: MainChain, model_hash: str) -> bytes:
    """The provenance bundle of the model ``model_hash`` (canonical bytes).

    The block is the first whose header names the model; the checkpoint the
    first one anchored in ``main`` for the ledger's origin that covers it; the
    main chain's checkpoint the one on file beside it.

    Raises
    ------
    LedgerError
        If no block names the model, no anchor covers it, or the ledger no
        longer holds the anchored checkpoint's log.
    """
    height = next(
        (b.height for b in ledger.blocks() if b.header["model_hash"] == model_hash),
        None,
    )
    if height is None:
        raise LedgerError(f"no block of {ledger.path} names model {model_hash}")
    anchors = [a for a in main.anchors_for(ledger.origin) if a.checkpoint.size > height]
    if not anchors:
        raise LedgerError(
            f"no checkpoint of {ledger.origin} anchored in {main.path} covers "
            f"block {height} yet: anchor the subchain first"
        )
    anchor = anchors[0]
    leaves = [bytes.fromhex(h) for h in ledger.block_hashes()[: anchor.checkpoint.size]]
    try:
        proof = make_tlog_proof(leaves, height, anchor.note)
        genesis_proof = make_tlog_proof(leaves, 0, anchor.note) if height else None
    except TlogProofError as exc:
        raise LedgerError(
            f"{ledger.path} no longer holds its checkpoint anchored at main-chain "
            f"height {anchor.height}: {exc}"
        ) from None
    training = {
        "origin": ledger.origin,
        "height": height,
        "block": _stored(ledger, height),
        "parent_header": ledger.block(height - 1).header_bytes.decode("utf-8")
        if height
        else None,
        "genesis": _stored(ledger, 0) if height else None,
        "proof": proof.text(),
        "genesis_proof": None if genesis_proof is None else genesis_proof.text(),
        **bundle_signatures(ledger, height),
    }
    bundle = {
        "format": BUNDLE_FORMAT,
        "model_hash": model_hash,
        "training": training,
        "anchor": main.prove_anchor(anchor.height),
    }
    return encode(2, bundle)

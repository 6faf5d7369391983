"""The check a ledger makes of its head before it appends a block.

:meth:`~.chain.Ledger.append` extends only a head that is intact and signed
by whom it must be; on a PoV chain that is a member of the verifier pool
its genesis block declares (read once per process, after checking that the
genesis block is intact and signed by the ledger's key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nacl.encoding import HexEncoder

from .blocks import Block, BlockSigner, LedgerError, leader_signed
from .canonical import HEADER_TAG, sha256_hex
from .consensus import PoVRules
from .statements import signature_ok

if TYPE_CHECKING:
    from .chain import Ledger


class HeadCheck:
    """One ledger's head check, with its verifier pool once it was read."""

    def __init__(self) -> None:
        self._pool: frozenset[str] | None = None
        """A PoV chain's verifier pool, once the genesis block was checked."""
        self._genesis_checked = False

    def check(self, ledger: Ledger, head: Block, key: BlockSigner) -> None:
        """``LedgerError`` unless ``head``, the block about to be extended, is
        intact and signed by whom it must be: the ledger's key (or this
        append's signer) outside PoV and for the genesis block, a member of the
        verifier pool on a PoV chain. Only the head is checked (cheap): a
        block below it that was changed fails the checkpoint instead."""
        own = {
            ledger.signing_key.verify_key.encode(HexEncoder).decode(),
            key.verify_key.encode(HexEncoder).decode(),
        }
        header = head.header
        problem = None
        if sha256_hex(HEADER_TAG, head.header_bytes) != head.hash:
            problem = "its hash does not match its header"
        elif header.get("height") != head.height:
            problem = f"its header says height {header.get('height')!r}"
        elif header.get("chain_id") != ledger.chain_id:
            problem = "its header belongs to another chain"
        elif header.get("format") != f"flchain-block/{ledger.format_version}":
            problem = f"its format is {str(header.get('format'))[:40]!r}"
        elif not leader_signed(header, head.header_bytes, head.signature):
            problem = "its signature is invalid"
        else:
            pool = None if head.height == 0 else self.verifier_pool(ledger, own)
            allowed = own if pool is None else pool
            if header.get("leader") not in allowed:
                problem = f"it is signed by {str(header.get('leader'))[:64]}, " + (
                    "not a member of the verifier pool"
                    if pool is not None
                    else "not by this ledger's key"
                )
        if problem is not None:
            raise LedgerError(
                f"refusing to extend block {head.height} of {ledger.path}: "
                f"{problem}; run `flchain ledger verify` on it"
            )

    def verifier_pool(self, ledger: Ledger, own: set[str]) -> frozenset[str] | None:
        """A PoV chain's verifier pool (``None`` outside PoV), from the genesis
        block, which must be intact and signed by one of the keys in ``own``
        (checked once per process)."""
        if not self._genesis_checked:
            genesis = ledger.block(0)
            if sha256_hex(
                HEADER_TAG, genesis.header_bytes
            ) != genesis.hash or not signature_ok(
                str(genesis.header.get("leader")),
                HEADER_TAG + genesis.header_bytes,
                genesis.signature,
            ):
                raise LedgerError(
                    f"refusing to extend {ledger.path}: its genesis block is not "
                    "intact; run `flchain ledger verify` on it"
                )
            if genesis.header.get("leader") not in own:
                raise LedgerError(
                    f"refusing to extend {ledger.path}: its genesis block is not "
                    "signed by this ledger's key"
                )
            if "pov" in genesis.body:
                try:
                    pool = PoVRules.from_json(genesis.body["pov"]).pool
                except (KeyError, TypeError, ValueError) as exc:
                    raise LedgerError(
                        f"{ledger.path}: its genesis declares unusable PoV rules: {exc}"
                    ) from None
                self._pool = frozenset(pool)
            self._genesis_checked = True
        return self._pool

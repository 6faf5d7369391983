"""The records of a model-trading subchain: offers, purchases, receipts.

Each record is a *statement* signed by the party it binds (RFC 8785 JSON,
:func:`~flchain_flwr.ledger.canonical.encode` version 2, signed with Ed25519
over ``STATEMENT_TAG || json``):

``offer`` (signed by the seller)
    ``{"type", "market", "seller", "model_hash", "training_origin", "terms"}``:
    the seller offers the model with this hash, trained on the subchain with
    this origin, on these terms (a JSON object; ``max_buyers``, a positive
    integer, if present, caps the purchases the market accepts).
``purchase`` (signed by the buyer)
    ``{"type", "market", "offer", "buyer"}``: the buyer takes the offer whose
    id is ``offer``.
``receipt`` (signed by the buyer)
    ``{"type", "market", "purchase", "buyer", "model_hash"}``: the buyer
    received a model with this hash for that purchase.

A statement's id is ``sha256(STATEMENT_TAG || json)``; ``market`` is the
market operator's checkpoint vkey (``<origin>+<key hash>+<key>``,
:attr:`TradingChain.market <flchain_flwr.ledger.trading.TradingChain.market>`),
so a statement signed for one market cannot be replayed into another, even
one of the same chain id run under another operator key. :class:`TradeBook`
holds what a market has recorded and says why a new statement may not follow
it; the SQLite chain (:mod:`flchain_flwr.ledger.trading`) and its ``verify``
both use it, so what is appended is exactly what is checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from .canonical import encode, is_hex, sha256_hex
from .notes import NoteError, check_key_name
from .statements import signature_ok

STATEMENT_TAG: Final = b"flchain-trade-statement/1\n"
MAX_TERMS_BYTES: Final = 4096
"""Largest encoded ``terms`` object an offer may carry."""
FIELDS: Final = {
    "offer": frozenset(
        {"type", "market", "seller", "model_hash", "training_origin", "terms"}
    ),
    "purchase": frozenset({"type", "market", "offer", "buyer"}),
    "receipt": frozenset({"type", "market", "purchase", "buyer", "model_hash"}),
}
SIGNER_FIELD: Final = {"offer": "seller", "purchase": "buyer", "receipt": "buyer"}


class TradeRefused(ValueError):
    """A statement may not be recorded: malformed, badly signed, or not
    following what the market holds (the message says which)."""


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """What a party signs: ``STATEMENT_TAG`` and the RFC 8785 JSON."""
    return STATEMENT_TAG + encode(2, dict(statement))


def statement_id(statement: Mapping[str, Any]) -> str:
    """The statement's id: SHA-256 of :func:`statement_bytes`, hex."""
    return sha256_hex(statement_bytes(statement))


def public_hex(key: SigningKey) -> str:
    """A signing key's public half, as 64 lower-case hex digits."""
    return key.verify_key.encode(HexEncoder).decode("ascii")


def sign_statement(key: SigningKey, statement: Mapping[str, Any]) -> str:
    """The party's hex Ed25519 signature over the statement."""
    return key.sign(statement_bytes(statement)).signature.hex()


def make_offer(
    seller: SigningKey,
    market: str,
    model_hash: str,
    training_origin: str,
    terms: Mapping[str, Any],
) -> tuple[dict[str, Any], str]:
    """A seller's signed offer: the statement and its signature."""
    statement = {
        "type": "offer",
        "market": market,
        "seller": public_hex(seller),
        "model_hash": model_hash,
        "training_origin": training_origin,
        "terms": dict(terms),
    }
    return statement, sign_statement(seller, statement)


def make_purchase(
    buyer: SigningKey, market: str, offer_id: str
) -> tuple[dict[str, Any], str]:
    """A buyer's signed purchase of an offer."""
    statement = {
        "type": "purchase",
        "market": market,
        "offer": offer_id,
        "buyer": public_hex(buyer),
    }
    return statement, sign_statement(buyer, statement)


def make_receipt(
    buyer: SigningKey, market: str, purchase_id: str, model_hash: str
) -> tuple[dict[str, Any], str]:
    """A buyer's signed receipt for the model a purchase delivered."""
    statement = {
        "type": "receipt",
        "market": market,
        "purchase": purchase_id,
        "buyer": public_hex(buyer),
        "model_hash": model_hash,
    }
    return statement, sign_statement(buyer, statement)


def check_form(statement: Any, signature: Any, market: str) -> str:
    """The statement's type if it is well formed, for ``market``, and signed by
    the party it names.

    Raises
    ------
    TradeRefused
        Saying what is wrong.
    """
    if not isinstance(statement, Mapping):
        raise TradeRefused("a statement is a JSON object")
    kind = statement.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise TradeRefused(f"unknown statement type {str(kind)[:40]!r}")
    if set(statement) != FIELDS[kind]:
        raise TradeRefused(f"a {kind} has exactly the fields {sorted(FIELDS[kind])}")
    if statement["market"] != market:
        raise TradeRefused(
            f"the {kind} is for market {str(statement['market'])[:80]!r}, "
            f"not {market!r}"
        )
    for name in ("seller", "buyer", "offer", "purchase", "model_hash"):
        if name in statement and not is_hex(statement[name], 64):
            raise TradeRefused(f"{kind} {name} is not 64 lower-case hex digits")
    if kind == "offer":
        _check_offer_fields(statement)
    try:
        message = statement_bytes(statement)
    except ValueError as exc:
        raise TradeRefused(f"the {kind} has no canonical encoding: {exc}") from None
    signer = statement[SIGNER_FIELD[kind]]
    if not signature_ok(signer, message, str(signature)):
        raise TradeRefused(
            f"the {kind}'s signature is not {SIGNER_FIELD[kind]} {signer[:16]}…'s"
        )
    return str(kind)


def _check_offer_fields(statement: Mapping[str, Any]) -> None:
    origin = statement["training_origin"]
    if not isinstance(origin, str):
        raise TradeRefused("offer training_origin must be a string")
    try:
        check_key_name(origin)
    except NoteError as exc:
        raise TradeRefused(f"offer training_origin is not an origin: {exc}") from None
    terms = statement["terms"]
    if not isinstance(terms, Mapping):
        raise TradeRefused("offer terms must be a JSON object")
    try:
        size = len(encode(2, dict(terms)))
    except ValueError as exc:
        raise TradeRefused(f"offer terms have no canonical encoding: {exc}") from None
    if size > MAX_TERMS_BYTES:
        raise TradeRefused(f"offer terms take {size} bytes; at most {MAX_TERMS_BYTES}")
    cap = terms.get("max_buyers")
    if cap is not None and (
        isinstance(cap, bool)
        or not isinstance(cap, int | float)
        or not math.isfinite(cap)
        or cap != int(cap)
        or cap < 1
    ):
        raise TradeRefused("offer terms max_buyers must be a positive integer")


@dataclass
class TradeBook:
    """What a market has recorded: offers, purchases and receipts by id."""

    market: str
    offers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    purchases: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    receipts: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    sold: dict[str, int] = field(default_factory=dict)
    """Purchases recorded per offer id."""
    received: set[str] = field(default_factory=set)
    """Purchase ids that have a receipt."""

    def check(self, statement: Any, signature: Any) -> str:
        """The id ``statement`` would be recorded under.

        Raises
        ------
        TradeRefused
            If it is malformed or badly signed (:func:`check_form`), already
            recorded (a replay), a purchase of an offer the market does not
            hold or whose ``max_buyers`` are all served, or a receipt for a
            purchase the market does not hold, signed by another buyer, for
            another model, or a second one for the same purchase.
        """
        kind = check_form(statement, signature, self.market)
        record_id = statement_id(statement)
        if record_id in self.offers or record_id in self.purchases:
            raise TradeRefused(f"this {kind} is already recorded (a replay)")
        if record_id in self.receipts:
            raise TradeRefused(f"this {kind} is already recorded (a replay)")
        if kind == "purchase":
            offer = self.offers.get(statement["offer"])
            if offer is None:
                raise TradeRefused(
                    "the purchase names an offer the market does not hold"
                )
            cap = offer["terms"].get("max_buyers")
            if cap is not None and self.sold.get(statement["offer"], 0) >= cap:
                raise TradeRefused(
                    f"the offer allows {int(cap)} buyer(s) and has them all"
                )
        elif kind == "receipt":
            purchase = self.purchases.get(statement["purchase"])
            if purchase is None:
                raise TradeRefused(
                    "the receipt names a purchase the market does not hold"
                )
            if purchase["buyer"] != statement["buyer"]:
                raise TradeRefused(
                    "the receipt is signed by a buyer other than the purchase's"
                )
            if self.offers[purchase["offer"]]["model_hash"] != statement["model_hash"]:
                raise TradeRefused(
                    "the receipt is for a model other than the one offered"
                )
            if statement["purchase"] in self.received:
                raise TradeRefused("the purchase already has a receipt")
        return record_id

    def record(self, statement: Mapping[str, Any], record_id: str) -> None:
        """Add a statement :meth:`check` accepted."""
        kind = statement["type"]
        if kind == "offer":
            self.offers[record_id] = statement
        elif kind == "purchase":
            self.purchases[record_id] = statement
            self.sold[statement["offer"]] = self.sold.get(statement["offer"], 0) + 1
        else:
            self.receipts[record_id] = statement
            self.received.add(statement["purchase"])

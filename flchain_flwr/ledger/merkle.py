"""RFC 9162-style Merkle trees (pymerkle): roots and self-contained proofs.

Leaves are 32-byte digests (update digests inside a block, block hashes in the
chain's log). pymerkle hashes a leaf as ``sha256(0x00 || data)`` and a node as
``sha256(0x01 || left || right)``: leaf and node domains are separated, so a
node can never pass as a leaf (merkletools' second-preimage weakness).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pymerkle import (
    ConsistencyProof,
    InclusionProof,
    InmemoryTree,
    InvalidProof,
    verify_consistency,
    verify_inclusion,
)

ALGORITHM = "sha256"
_INCLUSION_FIELDS: Final = frozenset({"type", "leaf", "index", "size", "root", "proof"})
MAX_PROOF_DEPTH: Final = 16
"""How deeply a proof's JSON may nest (the proofs made here nest 4 deep)."""
MAX_PROOF_BYTES: Final = 64 << 20
"""Largest proof, in UTF-8 bytes, that :func:`parse_proof` reads (a proof
carries at most a few blocks' headers and bodies)."""

__all__ = [
    "MAX_PROOF_BYTES",
    "MAX_PROOF_DEPTH",
    "InvalidProof",
    "MalformedProof",
    "consistency_proof",
    "inclusion_proof",
    "merkle_root",
    "parse_proof",
    "proof_field",
    "verify_proof",
]


class MalformedProof(InvalidProof):  # type: ignore[misc]  # pymerkle is untyped
    """Not a proof at all: not JSON, nested too deeply, a field missing or of
    the wrong type, an unknown kind. A subclass of ``InvalidProof``, so code
    that catches that catches this too; a proof that is well formed but does
    not hold raises plain ``InvalidProof``."""


_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def _json_type(value: object) -> str:
    """What JSON calls ``value``'s type, for messages."""
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _nests_deeper_than(value: object, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest more than ``limit`` levels
    (without recursion, so no input can exhaust the stack)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = list(item)
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_proof(text: str | bytes) -> dict[str, Any]:
    """A proof's JSON text (bytes: UTF-8) as a dict; ``MalformedProof`` if it
    is not one.

    A proof longer than :data:`MAX_PROOF_BYTES` (read it with
    :func:`~.inputfile.read_head`), or nesting deeper than
    :data:`MAX_PROOF_DEPTH`, is refused here, so nothing that later walks the
    proof can run out of memory or stack; so are a key repeated in one object
    and ``NaN`` or ``Infinity``, which other JSON readers take otherwise or
    not at all.
    """
    size = len(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
    if size > MAX_PROOF_BYTES:
        raise MalformedProof(f"it is larger than {MAX_PROOF_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedProof(f"not UTF-8 text ({exc})") from None
    try:
        value = json.loads(
            text, object_pairs_hook=_object_once, parse_constant=_not_json
        )
    except RecursionError:
        raise MalformedProof(
            f"JSON nested deeper than {MAX_PROOF_DEPTH} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise MalformedProof(f"not JSON ({exc})") from None
    except ValueError:  # Python refuses to convert integers of 4,300+ digits
        raise MalformedProof("it holds an integer too long to read") from None
    if not isinstance(value, dict):
        raise MalformedProof(f"a proof is a JSON object, not {_json_type(value)}")
    if _nests_deeper_than(value, MAX_PROOF_DEPTH):
        raise MalformedProof(f"JSON nested deeper than {MAX_PROOF_DEPTH} levels")
    return value


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every key appears once: one that repeats a key
    reads differently in other parsers (the first or the last wins)."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise MalformedProof(f"the key {key[:40]!r} appears twice in one object")
        value[key] = item
    return value


def _not_json(name: str) -> None:
    """``NaN``, ``Infinity`` and ``-Infinity``, which Python's reader takes
    but JSON has not."""
    raise MalformedProof(f"{name} is not a JSON value")


def proof_field(proof: Mapping[str, Any], name: str, expected: type) -> Any:
    """``proof[name]``, which must be of JSON type ``expected`` (``dict``,
    ``list``, ``str`` or ``int``; a boolean is no integer); ``MalformedProof``
    if it is missing or of another type."""
    if name not in proof:
        raise MalformedProof(f"the proof has no {name!r} field")
    value = proof[name]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise MalformedProof(
            f"{name!r} must be {_JSON_TYPE_NAMES[expected]}, not {_json_type(value)}"
        )
    return value


def _digest_field(proof: Mapping[str, Any], name: str) -> str:
    """``proof[name]``, which must be a hex SHA-256 digest."""
    value: str = proof_field(proof, name, str)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise MalformedProof(
            f"{name!r} must be a SHA-256 digest in 64 lower-case hex digits"
        )
    return value


def _tree(leaves: Sequence[str]) -> InmemoryTree:
    tree = InmemoryTree(algorithm=ALGORITHM)
    for leaf in leaves:
        tree.append_entry(bytes.fromhex(leaf))
    return tree


def merkle_root(leaves: Sequence[str]) -> str:
    """Hex root over hex leaves, in order (the empty tree's root for none)."""
    return str(_tree(leaves).get_root().hex())


def inclusion_proof(leaves: Sequence[str], index: int) -> dict[str, Any]:
    """A self-contained proof that ``leaves[index]`` is in the tree of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    tree = _tree(leaves)
    return {
        "type": "inclusion",
        "leaf": leaves[index],
        "index": index,
        "size": len(leaves),
        "root": tree.get_root().hex(),
        "proof": tree.prove_inclusion(index + 1).serialize(),
    }


def consistency_proof(
    leaves: Sequence[str], prior_size: int, later_size: int
) -> dict[str, Any]:
    """A self-contained proof that the first ``prior_size`` leaves are a prefix."""
    if not 0 < prior_size <= later_size <= len(leaves):
        raise ValueError(
            f"need 0 < prior ({prior_size}) <= later ({later_size}) <= {len(leaves)}"
        )
    tree = _tree(leaves[:later_size])
    return {
        "type": "consistency",
        "prior_size": prior_size,
        "later_size": later_size,
        "prior_root": tree.get_root(prior_size).hex(),
        "later_root": tree.get_root().hex(),
        "proof": tree.prove_consistency(prior_size, later_size).serialize(),
    }


def verify_proof(proof: dict[str, Any], expected_type: str | None = None) -> None:
    """Check a proof made by this module, offline; raise ``InvalidProof`` if bad.

    ``MalformedProof`` (an ``InvalidProof``) if it is not a well-formed proof:
    a field missing or of the wrong type, an unknown kind, or, with
    ``expected_type`` (``"inclusion"`` or ``"consistency"``), a proof of the
    other kind standing in for the one a caller needs.
    """
    kind = proof_field(proof, "type", str)
    if kind not in ("inclusion", "consistency"):
        raise MalformedProof(f"unknown proof type {kind[:40]!r}")
    if expected_type is not None and kind != expected_type:
        raise MalformedProof(f"expected an {expected_type} proof, got {kind!r}")
    if kind == "inclusion" and set(proof) != _INCLUSION_FIELDS:
        raise MalformedProof(
            f"an inclusion proof has exactly the fields {sorted(_INCLUSION_FIELDS)}"
        )
    body = proof_field(proof, "proof", dict)
    meta = proof_field(body, "metadata", dict)
    if meta.get("algorithm") != ALGORITHM or meta.get("security") is not True:
        raise InvalidProof("proof must use sha256 with domain separation")
    try:
        if kind == "inclusion":
            leaf, root = _digest_field(proof, "leaf"), _digest_field(proof, "root")
            index = proof_field(proof, "index", int)
            size = proof_field(proof, "size", int)
            if (meta.get("index"), meta.get("size")) != (index + 1, size):
                raise InvalidProof("proof metadata does not match the claimed position")
            inclusion = _deserialize(InclusionProof, body)
            verify_inclusion(
                _tree([leaf]).get_leaf(1),
                bytes.fromhex(root),
                inclusion,
                index=index + 1,
                size=size,
            )
        else:
            prior_root = _digest_field(proof, "prior_root")
            later_root = _digest_field(proof, "later_root")
            prior_size = proof_field(proof, "prior_size", int)
            later_size = proof_field(proof, "later_size", int)
            if (meta.get("prior_size"), meta.get("size")) != (prior_size, later_size):
                raise InvalidProof("proof metadata does not match the claimed sizes")
            consistency = _deserialize(ConsistencyProof, body)
            verify_consistency(
                bytes.fromhex(prior_root),
                bytes.fromhex(later_root),
                consistency,
                prior_size=prior_size,
                later_size=later_size,
            )
    except InvalidProof:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise MalformedProof(f"malformed proof: {exc!r}") from None


def _deserialize(kind: type[Any], body: dict[str, Any]) -> Any:
    """pymerkle's proof object from its JSON form; ``MalformedProof`` if it is
    not one (pymerkle says ``InvalidProof`` for both malformed and false), or
    not spelled as pymerkle writes it: pymerkle reads hex in either case and
    with spaces, a boolean as a bit, and ignores fields it does not know, so
    one path would otherwise have many spellings no hash or signature covers."""
    try:
        parsed = kind.deserialize(body)
    except InvalidProof as exc:
        cause = f": {exc.__cause__!r}" if exc.__cause__ is not None else ""
        raise MalformedProof(f"the Merkle path is malformed ({exc}{cause})") from None
    written = json.dumps(parsed.serialize(), sort_keys=True)
    # One boolean is pymerkle's (metadata.security); any other stands for a bit.
    if written != json.dumps(body, sort_keys=True) or _booleans(body) != 1:
        raise MalformedProof("the Merkle path is not in the form pymerkle writes")
    return parsed


def _booleans(value: object) -> int:
    """How many JSON booleans ``value`` holds, at any depth."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, dict):
        return sum(_booleans(v) for v in value.values())
    if isinstance(value, list):
        return sum(_booleans(v) for v in value)
    return 0

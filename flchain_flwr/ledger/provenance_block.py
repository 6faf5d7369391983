"""What one training block says about its model, checked from its own bytes.

A provenance bundle (:mod:`.provenance`) carries the block that produced a
model (header, body, leader signature), its parent's header and the run's
genesis block, never the updates. :func:`check_training_block` checks, given
that the block and the genesis are leaves of a checkpoint the caller has
verified:

- the header names the model hash, is the genesis's chain and format, and is
  signed by its leader; the body and parent header are the ones the header's
  hashes name; the genesis is signed by the publisher;
- on a PoV chain (the genesis declares a verifier pool and format-2 votes):
  the committee is the draw from the genesis pool for the block's parent
  hash and view, its first member signed the header, every vote is signed
  by a committee member for this chain, height, view, parent block, parent
  model and judging rule, judged at the share the block applies (before trust
  weighting; from included updates whose values are what every writer
  records, :func:`~.blocks.included_problem`), and every included update has
  approvals from more than 2/3 of the committee (counted among the pool keys
  the caller trusts, when it gives any);
- outside PoV: the publisher signed the block.

Not checked (the bundle cannot): that the model is the aggregation of the
included updates over the parent (that needs the updates:
``flchain ledger verify --replay``), and any earlier block. A pool shrunk by
slashing before this block draws another committee than the genesis pool
does: such a block is refused here, not guessed at.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .blocks import BLOCK_FORMATS, entries_problem, included_problem
from .canonical import BODY_TAG, HEADER_TAG, NotCanonical, parse_canonical, sha256_hex
from .consensus import (
    PoVRules,
    VoteRules,
    block_view,
    judged_shares,
    quorum,
    select_committee,
)
from .statements import signature_ok
from .votes import VoteContext, check_vote


class BlockCheckFailed(ValueError):
    """The training block, its parent or genesis does not hold (says why)."""


@dataclass(frozen=True)
class StoredBlock:
    """A block as a bundle carries it: exact header and body bytes, signature."""

    header: bytes
    body: bytes
    signature: str

    @property
    def hash(self) -> str:
        """``sha256(HEADER_TAG || header)``: the block's leaf in its log."""
        return sha256_hex(HEADER_TAG, self.header)


@dataclass(frozen=True)
class BlockFindings:
    """What :func:`check_training_block` established."""

    height: int
    chain_id: str
    block_hash: str
    leader: str
    publisher: str
    parent_model: str | None
    committee: tuple[str, ...] | None
    """``None`` outside PoV and for the genesis block."""
    quorum: int = 0
    included: int = 0
    counted: str = ""
    """Whose votes counted toward the quorum."""
    committee_kind: str | None = None
    """The genesis body's ``committee_kind`` (``"in-process"``: the server
    process held every verifier key)."""


def _header(data: bytes, what: str) -> tuple[dict[str, Any], int]:
    """A header in the encoding its ``format`` names, and that version."""
    try:
        loose = parse_canonical(data, 2)
    except NotCanonical:
        loose = None
    name = loose.get("format") if isinstance(loose, dict) else None
    version = BLOCK_FORMATS.get(name, 1) if isinstance(name, str) else 1
    try:
        header = parse_canonical(data, version)
    except NotCanonical as exc:
        raise BlockCheckFailed(f"the {what}'s header is not canonical: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("format"), str):
        raise BlockCheckFailed(f"the {what}'s header is not a block header")
    if header["format"] not in BLOCK_FORMATS:
        raise BlockCheckFailed(f"the {what}'s header is not a block header")
    return header, version


def _parsed(
    block: StoredBlock | None, what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored block's header and body, the body checked against the header."""
    if block is None:
        raise BlockCheckFailed(f"the bundle lacks the {what}")
    header, version = _header(block.header, what)
    if header.get("body_hash") != sha256_hex(BODY_TAG, block.body):
        raise BlockCheckFailed(f"the {what}'s body is not the one its header names")
    try:
        body = parse_canonical(block.body, version)
    except NotCanonical as exc:
        raise BlockCheckFailed(f"the {what}'s body is not canonical: {exc}") from None
    if not isinstance(body, dict):
        raise BlockCheckFailed(f"the {what}'s body is not a JSON object")
    return header, body


def _signed_by(block: StoredBlock, key: str, what: str) -> None:
    if not signature_ok(key, HEADER_TAG + block.header, block.signature):
        raise BlockCheckFailed(f"the {what}'s header is not signed by {key}")


# pylint: disable=too-many-locals
def check_training_block(
    block: StoredBlock,
    parent: bytes | None,
    genesis: StoredBlock | None,
    model_hash: str,
    pool_keys: Collection[str],
) -> BlockFindings:
    """Check a block that a verified checkpoint includes (see the module doc).

    Parameters
    ----------
    block : StoredBlock
        The block whose header names the model.
    parent : bytes | None
        The parent's header bytes (``None`` for the genesis block).
    genesis : StoredBlock | None
        The run's genesis block (``None`` when ``block`` is it).
    model_hash : str
        The model's SHA-256 hex.
    pool_keys : Collection[str]
        Hex verifier keys the caller trusts; empty to count the genesis pool's.

    Raises
    ------
    BlockCheckFailed
        Saying what does not hold.
    """
    header, body = _parsed(block, "training block")
    height = header.get("height")
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise BlockCheckFailed("the block's height is not an integer >= 0")
    first = block if height == 0 else genesis
    if height == 0 and genesis is not None:
        raise BlockCheckFailed("a genesis block's bundle carries no second genesis")
    g_header, g_body = _parsed(first, "genesis block")
    if g_header.get("height") != 0 or g_header.get("prev_hash") != "0" * 64:
        raise BlockCheckFailed("the genesis block is not at height 0")
    publisher = str(g_header.get("leader"))
    assert first is not None
    _signed_by(first, publisher, "genesis block")
    for name in ("chain_id", "format"):
        if header.get(name) != g_header.get(name):
            raise BlockCheckFailed(f"the block's {name} is not the genesis block's")
    if header.get("model_hash") != model_hash:
        raise BlockCheckFailed(
            f"block {height} names model {str(header.get('model_hash'))[:64]}, "
            f"not {model_hash}"
        )
    leader = str(header.get("leader"))
    _signed_by(block, leader, f"block {height}")
    chain_id = str(header.get("chain_id"))
    found = BlockFindings(height, chain_id, block.hash, leader, publisher, None, None)
    if height == 0:
        return found
    if parent is None or sha256_hex(HEADER_TAG, parent) != header.get("prev_hash"):
        raise BlockCheckFailed("the parent header is not the one the block follows")
    p_header, _ = _header(parent, "parent block")
    if p_header.get("height") != height - 1:
        raise BlockCheckFailed("the parent header is not at the height before")
    parent_model = str(p_header.get("model_hash"))
    if "pov" not in g_body:
        if leader != publisher:
            raise BlockCheckFailed("outside PoV every block is the publisher's")
        return replace(found, parent_model=parent_model)
    checked = _check_committee(
        found, header, body, g_body["pov"], parent_model, pool_keys
    )
    kind = g_body.get("committee_kind")
    return replace(checked, committee_kind=kind if isinstance(kind, str) else None)


def _check_committee(
    found: BlockFindings,
    header: Mapping[str, Any],
    body: Any,
    pov: Any,
    parent_model: str,
    pool_keys: Collection[str],
) -> BlockFindings:
    try:
        rules = PoVRules.from_json(pov)
        votes_rules = VoteRules.from_genesis(pov)
    except (KeyError, TypeError, ValueError) as exc:
        raise BlockCheckFailed(
            f"the genesis declares unusable PoV rules: {exc}"
        ) from None
    if votes_rules is None:
        raise BlockCheckFailed(
            "the run's votes are format 1 (they do not bind the parent model): "
            "a bundle cannot vouch for them"
        )
    view = block_view(body)
    if view is None:
        raise BlockCheckFailed("the block's view is not an integer >= 0")
    prev_hash = str(header["prev_hash"])
    committee = select_committee(rules.pool, prev_hash, rules.committee_size, view)
    if body.get("committee") != committee:
        raise BlockCheckFailed(
            "the block's committee is not the draw from the genesis pool for its "
            "parent and view (a pool shrunk by slashing cannot be checked from a "
            "bundle: verify the subchain)"
        )
    if found.leader != committee[0]:
        raise BlockCheckFailed("the block is signed by someone other than its leader")
    context = VoteContext(
        str(header["chain_id"]),
        found.height,
        prev_hash,
        parent_model,
        votes_rules.digest,
        view,
    )
    problem = entries_problem(body, ("included",)) or included_problem(body["included"])
    if problem is not None:
        raise BlockCheckFailed(f"the block's included updates are malformed: {problem}")
    try:
        included = list(body["included"])
        shares = judged_shares(
            votes_rules.server_lr,
            [u["weight"] for u in included],
            [u["num_examples"] for u in included],
        )
        applied = {str(u["digest"]): s for u, s in zip(included, shares, strict=True)}
        votes = list(body.get("votes", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise BlockCheckFailed(
            f"the block's included updates are malformed: {exc!r}"
        ) from None
    counted = set(committee) & set(pool_keys) if pool_keys else set(committee)
    approvals: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for index, vote in enumerate(votes):
        problem = check_vote(context, vote)
        if problem is not None:
            raise BlockCheckFailed(f"vote {index}: {problem}")
        key = (str(vote["verifier"]), str(vote["candidate"]))
        if key[0] not in committee or key in seen:
            raise BlockCheckFailed(f"vote {index} is not a committee member's first")
        seen.add(key)
        if key[1] in applied and vote["weight"] != applied[key[1]]:
            raise BlockCheckFailed(f"vote {index} judged another share than applied")
        if vote["verdict"] is True and key[0] in counted:
            approvals[key[1]] = approvals.get(key[1], 0) + 1
    needed = quorum(len(committee))
    for digest in applied:
        if approvals.get(digest, 0) < needed:
            raise BlockCheckFailed(
                f"update {digest[:16]}… has {approvals.get(digest, 0)} approvals "
                f"counted; the quorum is {needed} of {len(committee)}"
            )
    whose = (
        "only the pool keys you trust"
        if pool_keys
        else "the pool the genesis declares (signed by the publisher alone: you "
        "gave no pool keys)"
    )
    return replace(
        found,
        parent_model=parent_model,
        committee=tuple(committee),
        quorum=needed,
        included=len(applied),
        counted=whose,
    )

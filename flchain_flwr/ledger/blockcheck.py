"""The rules :meth:`Ledger.verify <flchain_flwr.ledger.chain.Ledger.verify>`
checks each stored block against, carrying what it learned from the blocks
before it (:class:`ChainRules`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .blocks import (
    BLOCK_FORMATS,
    COMMITTEE_KIND_FIELD,
    COMMITTEES,
    CONFIG_FIELD,
    digest_of,
    entries_problem,
    header_problem,
    included_problem,
    leader_signed,
    parse_block,
)
from .canonical import BODY_TAG, HEADER_TAG, NotCanonical, is_hex, sha256_hex
from .consensus import PoVRules, VoteRules, block_view
from .evidence import settled_evidence
from .included import IncludedDigests
from .merkle import merkle_root
from .payload import PAYLOAD_FIELD
from .povstate import PoVState
from .quorum import check_signed_block, headers_declared
from .rewards import contribution_problem
from .serverstate import state_blobs
from .trainers import TRAINER_FIELD, included_trainers_problem
from .votes import VoteContext, check_vote

if TYPE_CHECKING:
    from .chain import Ledger


@dataclass
class ChainRules:
    """What :meth:`Ledger.verify` carries from block to block."""

    leader: str | None
    pov: PoVState | None = None
    format: str | None = None
    """The genesis block's format: every block must have it."""
    committee_kind: str | None = None
    model: str = ""
    """The previous block's model hash: the parent a vote was judged against."""
    replayed: int = 0
    """Quorum-signed blocks whose signers' quorum replayed the model."""
    evidence: list[str] = field(default_factory=list)
    """What the equivocation evidence in the chain says, by block."""
    digests: IncludedDigests = field(default_factory=IncludedDigests)
    """The signed updates the blocks checked included, and where."""
    trainers: dict[int, str] = field(default_factory=dict)
    """The trainer key each node id's included updates are pinned to."""
    included: int = 0
    """Included updates in the blocks checked."""
    named: int = 0
    """Of those, the ones whose entry names a trainer key."""

    def vote_context(
        self, chain_id: str, height: int, prev_hash: str, body: Mapping[str, Any]
    ) -> VoteContext:
        """The context a vote stored in this block must have been signed in."""
        if self.pov is None or self.pov.votes is None:
            return VoteContext(chain_id, height)
        return VoteContext(
            chain_id,
            height,
            prev_hash,
            self.model,
            self.pov.votes.digest,
            block_view(body) or 0,
        )


# pylint: disable=too-many-return-statements,too-many-arguments
def check_block(
    ledger: Ledger,
    row: tuple[Any, ...],
    expected_height: int,
    prev_hash: str,
    chain: ChainRules,
    check_models: bool,
) -> str | None:
    height, stored_hash, header_raw, body_raw, signature = row
    if not isinstance(header_raw, bytes) or not isinstance(body_raw, bytes):
        return "header or body is not stored as bytes"
    if height != expected_height:
        return f"block {expected_height} is missing (next stored height is {height})"
    try:
        header, body = parse_block(header_raw, body_raw)
    except NotCanonical as exc:
        return f"stored header or body is corrupt: {exc}"
    if not isinstance(header, dict) or not isinstance(body, dict):
        return "header or body is not a JSON object"
    if sha256_hex(HEADER_TAG, header_raw) != stored_hash:
        return "block hash does not match the header"
    problem = header_problem(header) or entries_problem(body)
    if problem is not None:
        return problem
    if height == 0:
        chain.format = header["format"]
    try:
        checks = [
            (
                header["format"] == chain.format,
                f"block format {header['format']!r} is not the genesis "
                f"block's {chain.format!r}",
            ),
            (
                header["format"] == "flchain-block/1" or "wall_time" not in header,
                "a format-2 header must not hold a wall_time",
            ),
            (header["height"] == height, f"header says height {header['height']}"),
            (
                header["chain_id"] == ledger.chain_id,
                "header belongs to another chain",
            ),
            (header["prev_hash"] == prev_hash, "previous-hash link is broken"),
            (
                is_hex(header["model_hash"], 64),
                "model_hash is not lower-case SHA-256 hex",
            ),
            (
                header["body_hash"] == sha256_hex(BODY_TAG, body_raw),
                "body does not match the header's body hash",
            ),
            (
                header["updates_root"]
                == merkle_root([str(u["digest"]) for u in body["included"]]),
                "Merkle root of included updates does not match",
            ),
            (
                chain.leader is None
                or (chain.pov is not None and height > 0)
                or header["leader"] == chain.leader,
                "signed by an unexpected leader",
            ),
        ]
    except (KeyError, TypeError, ValueError) as exc:
        return f"header or body is missing a field: {exc!r}"
    for ok, reason in checks:
        if not ok:
            return reason
    if not leader_signed(header, header_raw, signature):
        return "leader signature is invalid"
    problem = (
        _check_entries(body)
        or chain.digests.block_problem(body["included"])
        or included_trainers_problem(chain.trainers, body["included"])
    )
    if problem is not None:
        return problem
    chain.digests.add_block(height, body["included"])
    chain.included += len(body["included"])
    chain.named += sum(TRAINER_FIELD in u for u in body["included"])
    context = chain.vote_context(ledger.chain_id, height, prev_hash, body)
    for index, vote in enumerate(body.get("votes", [])):
        problem = check_vote(context, vote)
        if problem is not None:
            return f"vote {index}: {problem}"
    if CONFIG_FIELD in body and (
        not isinstance(body[CONFIG_FIELD], dict)
        or digest_of(body[CONFIG_FIELD], BLOCK_FORMATS[header["format"]])
        != header["config_digest"]
    ):
        return "recorded config does not hash to the header's config_digest"
    try:
        server_blobs = state_blobs(body)
    except ValueError as exc:
        return f"malformed server_state: {exc}"
    if height == 0 and "pov" in body:
        try:
            chain.pov = PoVState(
                PoVRules.from_json(body["pov"]),
                votes=VoteRules.from_genesis(body["pov"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return f"genesis declares unusable PoV rules: {exc}"
        kind = body.get(COMMITTEE_KIND_FIELD)
        chain.committee_kind = kind if kind in COMMITTEES else None
        try:
            chain.pov.signed_headers = headers_declared(body["pov"])
        except ValueError as exc:
            return f"genesis declares unusable PoV rules: {exc}"
    elif chain.pov is not None:
        if chain.pov.signed_headers:
            problem = _check_quorum(ledger, chain, height, prev_hash, stored_hash, body)
            if problem is not None:
                return problem
        problem = chain.pov.check_block(prev_hash, header, body)
        if problem is not None:
            return f"PoV: {problem}"
        chain.evidence += settled_evidence(height, body)
    if check_models:
        problem = ledger.blobs.check(str(header["model_hash"]))
        if problem is not None:
            return problem
        for part, digest in server_blobs.items():
            problem = ledger.blobs.check(digest)
            if problem is not None:
                return f"server_state {part}: {problem}"
        for index, entry in enumerate(body["included"]):
            if isinstance(entry, dict) and PAYLOAD_FIELD in entry:
                payload = entry[PAYLOAD_FIELD]
                problem = (
                    ledger.blobs.check(payload, "update payload")
                    if is_hex(payload, 64)
                    else "payload is not a SHA-256 hex digest"
                )
                if problem is not None:
                    return f"included update {index}: {problem}"
    chain.model = str(header["model_hash"])
    return None


# pylint: disable=too-many-arguments
def _check_quorum(
    ledger: Ledger,
    chain: ChainRules,
    height: int,
    prev_hash: str,
    block_hash: str,
    body: Mapping[str, Any],
) -> str | None:
    """A quorum-signed chain's block: its view changes and header
    signatures, against the committee the genesis pool draws."""
    assert chain.pov is not None
    view = block_view(body)
    committee = chain.pov.committee(prev_hash, view or 0)
    problem, replayed = check_signed_block(
        committee,
        ledger.chain_id,
        height,
        prev_hash,
        block_hash,
        body,
        ledger.header_signatures(height),
    )
    if problem is not None:
        return f"PoV: {problem}"
    chain.replayed += replayed
    return None


def _check_entries(body: Mapping[str, Any]) -> str | None:
    """Why a body's included set, rejections or contributions (each a JSON
    array of objects, :func:`entries_problem`) are inconsistent, or ``None``:
    a digest that is not lower-case SHA-256 hex, an update digest included
    twice, an included update's values :func:`included_problem` refuses, or
    contributions :func:`contribution_problem` refuses."""
    seen: set[str] = set()
    for update in body["included"]:
        digest = update["digest"]
        if not is_hex(digest, 64):
            return f"included digest {str(digest)[:70]!r} is not lower-case SHA-256 hex"
        if digest in seen:
            return f"update {digest} is included twice"
        seen.add(digest)
    for entry in body["rejected"]:
        if "digest" in entry and not is_hex(entry["digest"], 64):
            return (
                f"rejected digest {str(entry['digest'])[:70]!r} is not lower-case "
                "SHA-256 hex"
            )
    problem = included_problem(body["included"])
    if problem is not None:
        return problem
    problem = contribution_problem(body)
    return None if problem is None else f"contributions: {problem}"

"""The PoV committee: verifiers vote on a batch of candidate updates, the leader
collects valid signed votes, and a candidate counts iff more than 2/3 of the
committee approve.

This module is the :class:`Committee`: its pool and deposits, its chain
(genesis, resuming, the next block's vote context) and sealing a block. The
rest lives beside it. The committee is mixed from deciding a batch (how
candidates are scored, the members' votes, the leader confirming) in
:mod:`.deciding`, who leads and the view changes in :mod:`.views`, and the
members' header signatures in :mod:`.headers`. The decision records are in
:mod:`.decision`, the tally (valid votes, quorum, passes at growing shares)
in :mod:`.tally`, in-process members' votes in :mod:`.localvotes`, the
genesis fields and resuming a chain in :mod:`.genesis`, the next block's vote
context in :mod:`.position`, and a block's deposits and equivocation
evidence in :mod:`.settlement`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..arrays import NDArrays
from ..ledger import Ledger, PoVRules, PoVState, VoteContext, VoteRules
from .deciding import Deciding
from .filters import Prefilter
from .genesis import check_resumable, genesis_body, in_chain_order, recorded_pov
from .headers import HeaderSigner, HeaderSigning
from .judging import Rule, Threshold
from .outage import OUTAGE_LIMIT, checked_outage_limit
from .position import vote_position
from .settlement import block_fields, checked_evidence, settle
from .verifier import Verifier


class Committee(Deciding, HeaderSigning):
    """A pool of verifiers, the committee rule and the deposits.

    Parameters
    ----------
    verifiers : Sequence[Verifier]
        The pool. Each block's committee (and leader) is drawn from the verifiers
        still in the pool, deterministically from the previous block's hash.
    committee_size : int | None (default: None)
        Members per block; ``None`` = the whole pool.
    threshold : Threshold (default: loss at most 5 % above the global's)
        Each verifier's approval rule.
    initial_stake, slash, floor : float (default: 100, 1, 50)
        Deposits: each member loses ``slash`` per candidate on which its vote
        contradicts the quorum's outcome (or is missing or invalid); below
        ``floor`` it leaves the pool.
    prefilters : Sequence[Prefilter] (default: none)
        Cheap filters run first, in order (:class:`~flchain_flwr.pov.IQRFilter`,
        :class:`~flchain_flwr.pov.MedianFilter`); what they rule out never
        reaches the committee and carries the filter's reason.
    scoring : "share" | "full" (default: "share")
        Score ``global + share * delta`` (what the block would do) or
        ``global + delta``.
    consensus_delay : float (default: 0.0)
        Seconds (finite, >= 0) charged per decision on a virtual clock (the
        BFEL paper uses 0.5 s per block). On a wall clock the committee's real
        time is its cost, and this is not added.
    chain_id : str (default: "flchain-local")
        Signed into votes when no ledger is used (a ledger's own id otherwise).
    remote_members : Sequence[str] (default: none)
        Public keys of pool members that vote on machines of their own
        (:class:`~flchain_flwr.pov.remote.RemoteCommittee` asks them).
    trust_weighting : bool (default: False)
        Weigh each approved update by the committee's signed cosines and clip
        it to the median norm (:mod:`~flchain_flwr.pov.trust`, after FLTrust)
        instead of giving every approved update its full weight. Needs the
        direction test alone deciding (``metric="none"``, ``min_cosine >=
        0``): the votes' scores are then the cosines, and no verdict rests on
        the share a candidate was scored at.
    outage_limit : float | None (default: 1800)
        Seconds on the grid's clock that vote requests may go without valid
        votes from a quorum of members before the run stops
        (:mod:`~flchain_flwr.pov.outage`); ``None`` or 0 waits for ever.
    """

    needs_payloads = False
    """Whether candidates must carry their replies (a remote committee's do)."""
    parse_keys = ("arrays", "num-examples")
    """The ``arrayrecord_key`` and ``weighted_by_key`` the server parses
    replies with (the strategy sets them; a remote committee sends them)."""

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        verifiers: Sequence[Verifier],
        *,
        committee_size: int | None = None,
        threshold: Threshold | None = None,
        initial_stake: float = 100.0,
        slash: float = 1.0,
        floor: float = 50.0,
        prefilters: Sequence[Prefilter] = (),
        scoring: str = "share",
        consensus_delay: float = 0.0,
        chain_id: str = "flchain-local",
        remote_members: Sequence[str] = (),
        trust_weighting: bool = False,
        outage_limit: float | None = OUTAGE_LIMIT,
    ) -> None:
        if not 0 <= consensus_delay < math.inf:  # NaN too
            raise ValueError(
                f"consensus_delay must be a finite number >= 0, not {consensus_delay!r}"
            )
        if threshold is not None and threshold.min_cosine is not None:
            missing = [v for v in verifiers if v.reference_fn is None]
            if missing:
                raise ValueError(
                    f"the direction test (min_cosine) needs a reference_fn on "
                    f"every verifier; {len(missing)} have none"
                )
        if scoring not in ("share", "full"):
            raise ValueError(f"scoring must be 'share' or 'full', not {scoring!r}")
        self.scoring = scoring
        self.verifiers = {v.public_key: v for v in verifiers}
        pool = (*(v.public_key for v in verifiers), *remote_members)
        if len(set(pool)) != len(pool):
            raise ValueError("two verifiers share a key")
        self.rules = PoVRules(
            pool=pool,
            committee_size=committee_size or len(pool),
            initial_stake=initial_stake,
            slash=slash,
            floor=floor,
        )
        self.threshold = threshold or Threshold()
        self.rule = Rule(self.threshold, scoring, trust_weighting)  # type: ignore[arg-type]
        self.state = PoVState(self.rules)
        self.prefilters = tuple(prefilters)
        self.consensus_delay = consensus_delay
        self.outage_limit = checked_outage_limit(outage_limit)
        self.chain_id = chain_id
        self._evidence: list[dict[str, Any]] = []
        """Equivocation evidence the next block settles."""

    def __repr__(self) -> str:
        return (
            f"Committee(pool={len(self.rules.pool)}, "
            f"size={self.rules.committee_size}, threshold={self.threshold}, "
            f"scoring={self.scoring}, prefilters={list(self.prefilters)}"
            + (", trust_weighting=True)" if self.trust_weighting else ")")
        )

    @property
    def trust_weighting(self) -> bool:
        """Whether its rule weighs approved updates by trust."""
        return self.rule.trust_weighting

    @property
    def removed(self) -> list[str]:
        """Keys of verifiers that lost their place in the pool."""
        active = set(self.state.pool)
        return [k for k in self.rules.pool if k not in active]

    # ------------------------------------------------------------------ ledger
    def genesis_fields(self, server_lr: float = 1.0) -> dict[str, Any]:
        """Body fields of a PoV chain's genesis block: the pool, its deposit
        rules, and what votes are judged by (the rule, and the ``server_lr`` of
        the shares they are judged at)."""
        votes = VoteRules(self.rule.to_json(), float(server_lr))
        self.state.votes = votes
        self.state.signed_headers = True
        return genesis_body(self.rules, votes, self.kind)

    @property
    def kind(self) -> str:
        """Who held the verifier keys (``verify`` words its report by it):
        ``"in-process"`` when this process held every one, ``"remote"`` when
        none, ``"mixed"`` otherwise."""
        local = len(self.verifiers)
        remote = len(self.rules.pool) - local
        return "remote" if not local else "in-process" if not remote else "mixed"

    def resume(self, ledger: Ledger, server_lr: float = 1.0) -> None:
        """Take stakes from an existing PoV ledger (same pool, rules and judging
        rule); ``ValueError`` if it was written otherwise."""
        recorded = recorded_pov(ledger)
        self.rules = in_chain_order(self.rules, recorded)
        check_resumable(ledger, recorded, self.genesis_fields(server_lr)["pov"])
        self.state = PoVState.replayed(
            self.rules, (b.body for b in ledger.blocks()), self.state.votes
        )
        self.state.signed_headers = True

    def position(
        self, ledger: Ledger | None, model: NDArrays, height: int, view: int = 0
    ) -> VoteContext:
        """What the votes on the block being decided sign: from the ledger's
        head (its hash, its model's hash), or without a ledger this
        committee's chain id, ``height`` and the current model's hash as both
        the rotation seed and the parent."""
        return vote_position(
            ledger,
            model,
            height,
            view,
            chain_id=self.chain_id,
            rule_digest=self.rule.digest,
        )

    # ----------------------------------------------------------------- sealing
    def seal(
        self,
        committee: list[str],
        votes: Sequence[dict[str, Any]],
        view: int = 0,
        view_changes: Sequence[dict[str, Any]] = (),
        ledger: Ledger | None = None,
    ) -> tuple[dict[str, Any], HeaderSigner]:
        """A block's PoV body fields (committee, deposits for its votes and
        the equivocation evidence reported since the last block) and what
        signs it (its leader, then its committee; a leader that does not
        sign has its view given up, recorded beside ``ledger``, the block's).
        The stakes change, and
        the evidence leaves the queue, only when the block has its quorum of
        header signatures (:meth:`_settle`, called by the signer): a block
        that is never signed changes nothing (:mod:`.settlement`)."""
        evidence = list(self._evidence)
        fields, deposits = block_fields(
            self.state, committee, votes, evidence, view, view_changes
        )
        signer = HeaderSigner(
            self,
            self.signer(committee[0]),
            committee,
            view,
            on_quorum=lambda: self._settle(deposits, evidence),
            ledger=ledger,
        )
        return fields, signer

    def _settle(
        self, deposits: list[dict[str, Any]], evidence: list[dict[str, Any]]
    ) -> None:
        """Apply a signed block's deposits; drop the evidence it settles."""
        self._evidence = settle(self.state, deposits, evidence, self._evidence)

    def report_equivocation(self, record: dict[str, Any]) -> None:
        """Queue equivocation evidence for the next block to settle;
        ``ValueError`` if the record is not valid evidence against a pool
        member that still has stake."""
        self._evidence.append(checked_evidence(self.state, self._evidence, record))

    @property
    def reserved_nodes(self) -> frozenset[int]:
        """Nodes that verify and must not be sent training (none in-process)."""
        return frozenset()

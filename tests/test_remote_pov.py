"""PoV verifiers on nodes of their own: discovery, remote votes and remote block
signing, inside FedBuff on the virtual grid (the same messages as a deployment)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flchain_flwr.ledger import Block, Ledger, VoteContext
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.keys import load_or_create_key
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.pov import (
    Behaviour,
    Committee,
    Rule,
    Threshold,
    Verifier,
    discovery,
    queries,
    verifiernode,
    voterequest,
)
from flchain_flwr.pov.members import header_request
from flchain_flwr.pov.queries import RemoteVerifierError
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.views import lead_statement
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.sim.attacks import attack_mod
from flchain_flwr.strategies import Constant, FedBuff

from .pov_replies import reply_candidate
from .test_pov import CHAIN, context, model, toward_target, toy_score
from .test_pov_chain import _remote_fedbuff, _verifier_grid
from .toy import constant_work, initial_arrays, toy_client_app

TRAINERS = 5
VERIFIERS = 4


def _toy_verifier(context: Context) -> Verifier | None:
    """The node's verifier, as an app builds it from its node config: the loss
    rule at ``tolerance``, or with ``min-cosine`` the direction test alone
    (reference :func:`toward_target`), weighing by trust if ``trust-weighting``."""
    cfg = context.node_config
    behaviour = str(cfg.get("behaviour", "honest"))
    threshold = Threshold(value=float(cfg.get("tolerance", 0.05)))
    if "min-cosine" in cfg:
        threshold = Threshold("none", min_cosine=float(cfg["min-cosine"]))
    rule = Rule(threshold, trust_weighting=bool(cfg.get("trust-weighting", False)))
    reference = toward_target if "min-cosine" in cfg else None
    return verifiernode.verifier_from_node_config(
        cfg,
        lambda key, shard: Verifier(
            toy_score,
            key,
            behaviour=behaviour,
            seed=shard,
            rule=rule,
            reference_fn=reference,
        ),
    )


def _misbehaving_answer(msg: Message, context: Context) -> Message:
    """Scripted verifier-node faults, chosen by node config ``fault``."""
    fault = str(context.node_config.get("fault", ""))
    verifier = _toy_verifier(context)
    if fault == "garbage-votes" and msg.metadata.message_type == queries.VOTE:
        cfg = ConfigRecord({"votes": "{not json"})
        return Message(RecordDict({"pov": cfg}), reply_to=msg)
    if fault == "forge-votes" and msg.metadata.message_type == queries.VOTE:
        # votes signed with a key that is not this node's registered one
        assert verifier is not None
        forger = Verifier(
            toy_score, behaviour=Behaviour.APPROVE_ALL, rule=verifier.rule
        )
        reply = verifiernode.answer(msg, forger)
        votes = json.loads(str(reply.content.config_records["pov"]["votes"]))
        for vote in votes:
            vote["verifier"] = verifier.public_key  # claims to be the member
        cfg = ConfigRecord({"votes": json.dumps(votes)})
        return Message(RecordDict({"pov": cfg}), reply_to=msg)
    if fault == "claim-key" and msg.metadata.message_type == queries.IDENTITY:
        # presents another verifier's public key without holding its private key
        assert verifier is not None
        reply = verifiernode.answer(msg, Verifier(toy_score))
        reply.content.config_records["pov"]["public-key"] = str(
            context.node_config["claimed-key"]
        )
        return reply
    return verifiernode.answer_in_run(msg, context, verifier)


def _app(app: ClientApp | None = None) -> ClientApp:
    """``app`` (default: the toy trainers, with attacks) answering PoV queries."""
    app = app or toy_client_app({}, mods=[attack_mod()])
    for action in queries.ACTIONS:
        app.query(action)(_misbehaving_answer)
    return app


def _grid(
    tmp_path: Path,
    verifier_configs: Sequence[Mapping[str, str | int | float | bool]],
    attackers: set[int],
    app: ClientApp | None = None,
) -> VirtualGrid:
    configs: list[dict[str, int | float | str | bool]] = []
    for pid in range(TRAINERS):
        cfg: dict[str, int | float | str | bool] = {
            "partition-id": pid,
            "num-partitions": TRAINERS,
        }
        if pid in attackers:
            cfg["attack"] = "sign-flip"
        configs.append(cfg)
    for index, extra in enumerate(verifier_configs):
        configs.append(
            {
                "partition-id": 0,
                "num-partitions": TRAINERS,
                "role": "verifier",
                "verifier-key": str(tmp_path / f"verifier-{index}.key"),
                "verifier-shard": index,
                **extra,
            }
        )
    return VirtualGrid(
        _app(app),
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )


def _keys(tmp_path: Path, n: int) -> list[str]:
    return [
        load_or_create_key(tmp_path / f"verifier-{i}.key").verify_key.encode().hex()
        for i in range(n)
    ]


def test_a_fractional_verifier_shard_is_refused_naming_its_key(tmp_path: Path) -> None:
    """A verifier node's shard is read by the typed readers: ``1.5`` used to
    become shard 1 (another verifier's trusted data) without an error."""
    shards: list[int] = []

    def make(signing_key: object, shard: int) -> Verifier:
        shards.append(shard)
        return Verifier(toy_score, signing_key)

    node = {
        "role": "verifier",
        "verifier-key": str(tmp_path / "verifier.key"),
        "verifier-shard": 1.5,
    }
    with pytest.raises(ValueError, match="verifier-shard"):
        verifiernode.verifier_from_node_config(node, make)
    assert not shards, f"read as shard {shards}"


def test_fedbuff_with_remote_verifiers_and_ledger(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"tolerance": 0.0}] * VERIFIERS, attackers={4})
    nodes = discovery.discover_verifiers(grid, expected=VERIFIERS, timeout=30)
    assert sorted(nodes) == sorted(_keys(tmp_path, VERIFIERS))
    committee = RemoteCommittee(
        grid, nodes, threshold=Threshold(value=0), chain_id=CHAIN
    )
    strategy = FedBuff(
        buffer_size=TRAINERS,
        staleness_fn=Constant(),
        committee=committee,
        ledger=tmp_path / "chain.db",
        seed=0,
    )
    result = simulate(strategy, grid, initial_arrays(), num_rounds=3).result
    assert len(result.versions) == 3
    bad_node = next(nid for nid, i in grid.partition_of.items() if i == 4)
    rejected = result.rejected
    assert {r.node_id for r in rejected} == {bad_node} and len(rejected) == 3
    assert all(len(r.votes) == VERIFIERS for r in rejected)
    # verifier nodes were asked to vote and sign, never to train
    assert not set(result.participation) & set(nodes.values())
    assert all(grid.stats[node].messages > 0 for node in nodes.values())
    with Ledger(tmp_path / "chain.db", create=False) as ledger:
        report = ledger.verify()
        assert report.ok and report.pov, report
        leaders = {b.header["leader"] for b in ledger.blocks() if b.height}
    assert leaders and leaders <= set(nodes)


def test_byzantine_and_broken_verifier_nodes_are_outvoted(tmp_path: Path) -> None:
    # n = 7 = 3f + 1 with f = 2: one node sends garbage, one forges votes
    faults: list[dict[str, str | int]] = [{}] * 5 + [
        {"fault": "garbage-votes"},
        {"fault": "forge-votes"},
    ]
    grid = _grid(tmp_path, faults, attackers=set())
    nodes = discovery.discover_verifiers(grid, expected=len(faults), timeout=30)
    committee = RemoteCommittee(grid, nodes, chain_id=CHAIN)
    good = reply_candidate(1, 0.5, 0.5)
    bad = reply_candidate(2, -3.0, 0.5)
    decision = committee.decide(
        context=context(1, rule=committee.rule.digest),
        global_model=model(0.0),
        candidates=[good, bad],
        round_=0,
    )
    assert [o.accepted for o in decision.outcomes] == [True, False]
    assert any("unreadable votes" in d for d in decision.dropped_votes)
    # the forger's votes on both, then on the good one judged again at its share
    assert sum("signature is invalid" in d for d in decision.dropped_votes) == 3


def test_discovery_refuses_a_node_claiming_a_key_it_does_not_hold(
    tmp_path: Path,
) -> None:
    honest_key = _keys(tmp_path, 1)[0]
    grid = _grid(
        tmp_path,
        [{}, {"fault": "claim-key", "claimed-key": honest_key}],
        attackers=set(),
    )
    with pytest.raises(RemoteVerifierError, match="found 1 of 2"):
        discovery.discover_verifiers(grid, expected=2, timeout=1)
    nodes = discovery.discover_verifiers(grid, expected=1, timeout=1)
    assert list(nodes) == [honest_key]
    honest_node = next(n for n, i in grid.partition_of.items() if i == TRAINERS)
    assert nodes[honest_key] == honest_node  # not the claimant's


def test_discovery_keeps_only_the_declared_pool(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{}, {}, {}], attackers=set())
    keys = _keys(tmp_path, 3)
    nodes = discovery.discover_verifiers(grid, expected=2, pool=keys[:2], timeout=1)
    assert sorted(nodes) == sorted(keys[:2])


def test_remote_leader_signs_only_its_own_blocks(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{}, {}], attackers=set())
    nodes = discovery.discover_verifiers(grid, expected=2, timeout=1)
    (first, node), (second, _) = sorted(nodes.items())
    signer = RemoteCommittee(grid, nodes, chain_id=CHAIN).signer(first)
    from flchain_flwr.ledger.canonical import HEADER_TAG, canonical_json
    from flchain_flwr.pov.views import lead_statement

    signer.sign(lead_statement(context(1), first))  # it leads height 1
    position = {"chain_id": CHAIN, "height": 1, "prev_hash": "ab" * 32}
    header = HEADER_TAG + canonical_json({**position, "leader": first})
    signature = signer.sign(header).signature
    signer.verify_key.verify(header, signature)
    for bad in (
        HEADER_TAG + canonical_json({**position, "leader": second}),
        HEADER_TAG + b"{not json",
        b"not a header",
    ):
        with pytest.raises(RemoteVerifierError, match="refused"):
            signer.sign(bad)
    assert node in nodes.values()


def test_trainer_nodes_answer_identity_but_refuse_votes(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [], attackers=set())
    content = voterequest.vote_request(
        context(1, rule=Rule().digest),
        model(0.0),
        [reply_candidate(1, 0.1)],
        [1.0],
    )
    trainer = next(iter(grid.partition_of))
    msg = Message(content, trainer, queries.VOTE, ttl=60)
    (reply,) = grid.send_and_receive([msg], timeout=60)
    assert reply.has_error() and "not a PoV verifier" in reply.error.reason


# ------------------------------------- a keyless server's forged block (review12)
FORGED_HEIGHT = 2


def _ask_each(
    grid: VirtualGrid, nodes: dict[str, int], cfg: dict[str, ConfigRecord]
) -> dict[str, Message]:
    """One ``query.pov_sign`` message per member (its own request); replies by key."""
    by_node = {node: key for key, node in nodes.items()}
    replies = grid.send_and_receive(
        [
            Message(RecordDict({"pov": cfg[key]}), node, queries.SIGN, ttl=60)
            for key, node in nodes.items()
        ],
        timeout=60,
    )
    return {by_node[r.metadata.src_node_id]: r for r in replies}


def _forged_block(ledger: Ledger, committee: list[str]) -> Block:
    """An empty view-0 block at ``FORGED_HEIGHT`` whose committee is
    ``committee`` (the view-1 draw), not yet signed by its leader."""
    head = ledger.head()
    assert head is not None
    body = {
        "view": 0,
        "committee": committee,
        "included": [],
        "rejected": [],
        "votes": [],
        "contributions": [],
        "deposits": [],
    }
    body_bytes = encode(2, body)
    header = {
        "format": "flchain-block/2",
        "chain_id": ledger.chain_id,
        "height": FORGED_HEIGHT,
        "prev_hash": head.hash,
        "sim_time": 0.0,
        "model_version": 2,
        "base_version": 1,
        "config_digest": head.header["config_digest"],
        "model_hash": head.header["model_hash"],
        "updates_root": merkle_root([]),
        "body_hash": sha256_hex(BODY_TAG, body_bytes),
        "leader": committee[0],
    }
    header_bytes = encode(2, header)
    return Block(
        FORGED_HEIGHT,
        sha256_hex(HEADER_TAG, header_bytes),
        header_bytes,
        body_bytes,
        "",
        header,
        body,
    )


def _forge(
    tmp_path: Path, path: Path
) -> tuple[dict[str, Message], dict[str, Message], str | None]:
    """Height 1 written honestly; then a server holding no key asks each
    verifier node to take the position at height 2 (a lead statement naming
    itself) and to sign the header of a forged block (a view-1 draw at view
    0): first without its leader's signature, then with it (the view-1
    leader node signs any header at its position naming it). The members'
    replies to each, and what ``verify``'s own PoV check says of the block."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    simulate(_remote_fedbuff(grid, path, None), grid, initial_arrays(), num_rounds=1)
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    check = Committee(
        (), remote_members=tuple(sorted(nodes)), threshold=Threshold(value=0.0)
    )
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == FORGED_HEIGHT
        check.resume(ledger, server_lr=0.3)  # _remote_fedbuff's
        head = ledger.head()
        assert head is not None
        block = _forged_block(ledger, check.state.committee(head.hash, 1))
        position = VoteContext(
            ledger.chain_id, FORGED_HEIGHT, head.hash, head.header["model_hash"]
        )
    leads = {
        key: ConfigRecord({"message": lead_statement(position, key)}) for key in nodes
    }
    assert all(not r.has_error() for r in _ask_each(grid, nodes, leads).values())
    unsigned = _ask_each(
        grid, nodes, {key: header_request(block, 0, check.state) for key in nodes}
    )
    leader = block.header["leader"]
    asked = {leader: ConfigRecord({"message": HEADER_TAG + block.header_bytes})}
    reply = _ask_each(grid, {leader: nodes[leader]}, asked)[leader]
    signature = reply.content.config_records["pov"]["signature"]
    assert isinstance(signature, bytes)
    block = replace(block, signature=signature.hex())
    signed = _ask_each(
        grid, nodes, {key: header_request(block, 0, check.state) for key in nodes}
    )
    problem = check.state.check_block(str(head.hash), block.header, block.body)
    return unsigned, signed, problem


def _reasons(replies: dict[str, Message]) -> list[str]:
    return [r.error.reason if r.has_error() else "signed" for r in replies.values()]


def test_members_refuse_a_header_whose_committee_is_not_the_draw(
    tmp_path: Path,
) -> None:
    """review12 #2: a server holding no key got honest verifier nodes to sign
    the header of a block ``verify`` rejects (its committee is the view-1
    draw at view 0, and its leader never signed it): members checked only
    that they were in the body's committee, and once more than ``n -
    quorum(n)`` had signed they were locked at that (height, view) for good.
    Now they check the leader's signature and ``verify``'s own PoV check."""
    unsigned, signed, problem = _forge(tmp_path, tmp_path / "remote.db")
    assert problem is not None and "committee is not the one drawn" in problem
    assert all("leader's signature" in r for r in _reasons(unsigned))
    assert all("committee is not the one drawn" in r for r in _reasons(signed))


def test_an_honest_restart_after_the_forged_header_goes_on(tmp_path: Path) -> None:
    """review12 #2: the members refused the forged block, so an honest
    server restarted with every record it has writes on past that height."""
    path = tmp_path / "remote.db"
    _forge(tmp_path, path)
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    simulate(_remote_fedbuff(grid, path, None), grid, initial_arrays(), num_rounds=4)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5 and ledger.verify().ok

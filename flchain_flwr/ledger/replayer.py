"""The replayer: one block recomputed from its parent and its stored updates.

:class:`Replayer` carries what a replay needs from block to block (each
global version's model hash, the recorded settings by digest, each node's
included updates, a few decoded models) and checks one block over its parent:
each included payload against its entry (sender, digest, ``trained_on``,
staleness) and parsed as the server parsed it, the weighing
(:mod:`.replayweights`), trust weighting from the committee's votes, the
momentum velocity it continues or restarts, and then the server's own step,
whose model, velocity and contributions must equal the recorded ones. A
block that does not raises :class:`~.replaytypes.Failed`; one that lacks
what the replay needs, :class:`~.replaytypes.NotReplayable`. A block whose
model a wrapped Flower strategy aggregated (PoVStrategy's) has its payloads,
their signatures and its contributions checked, and then raises
:class:`~.replaytypes.ModelNotRecomputed`.
:mod:`.replay` drives it over a ledger or a pending block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict

from ..arrays import NDArrays
from ..pov.trust import TrustError, weigh_by_trust
from ..protocol import UPDATE_KIND_DELTA
from ..strategies.block import BufferedUpdate
from ..strategies.serverstep import OVERFLOW_REASON, StepResult
from ..strategies.state import state_names
from ..strategies.updates import (
    ParsedUpdate,
    UpdateRejected,
    parse_update,
    update_kind,
)
from .blocks import CONFIG_FIELD, Block, ids_as_text, node_key
from .canonical import encode, model_hash, sender_update_digest
from .payload import PAYLOAD_FIELD
from .replaysettings import (
    REPLAYABLE_STRATEGY,
    Settings,
    WrappedSettings,
    rule_weighs_by_trust,
)
from .replaytypes import (
    Failed,
    ModelNotRecomputed,
    NotReplayable,
    ReplaySource,
    StepFn,
)
from .replayweights import check_weights, weighed_examples
from .rewards import contributions, model_step
from .serverstate import ServerState
from .trainers import TRAINER_FIELD, TrainerSignatureError, short_key, signed_by
from .wrapper import POV_WRAPPER, wraps

_MODEL_CACHE = 4
"""Decoded models kept: the parent, plus a few versions stale updates need."""


@dataclass
class Replayer:
    """What a replay carries from block to block."""

    ledger: ReplaySource
    step: StepFn
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Recorded settings by their digest."""
    versions: dict[int, str] = field(default_factory=dict)
    """Model hash of each global version."""
    models: OrderedDict[str, NDArrays] = field(default_factory=OrderedDict)
    participation: dict[int, int] = field(default_factory=dict)
    """Each node's included updates in the blocks before the one replayed."""
    rule_trust: bool | None = None
    """Whether the genesis block's judging rule weighs by trust (``None``:
    no PoV genesis seen)."""
    checked: int = 0
    """Included updates whose payload was checked (in blocks replayed)."""
    signed: int = 0
    """Of those, the ones whose payload carries a valid trainer signature."""

    def record(self, block: Block) -> None:
        """Learn the block's version and recorded settings."""
        if block.height == 0:
            self.rule_trust = rule_weighs_by_trust(block.body)
        self.versions[int(block.header["model_version"])] = str(
            block.header["model_hash"]
        )
        config = block.body.get(CONFIG_FIELD)
        if isinstance(config, dict):  # checked to hash to the digest (verify, or
            # PendingReplay.check for a pending block)
            self.configs[str(block.header["config_digest"])] = config

    def model(self, digest: str) -> NDArrays:
        """A stored model, decoded (a few are cached)."""
        if digest in self.models:
            self.models.move_to_end(digest)
            return self.models[digest]
        model = self.ledger.blobs.load_model(digest)
        self.models[digest] = model
        if len(self.models) > _MODEL_CACHE:
            self.models.popitem(last=False)
        return model

    def keep(self, digest: str, model: NDArrays) -> None:
        """Cache a model known to hash to ``digest``."""
        self.models[digest] = model
        self.models.move_to_end(digest)
        if len(self.models) > _MODEL_CACHE:
            self.models.popitem(last=False)

    def block(self, prev: Block, block: Block) -> None:
        """Replay ``block`` over ``prev``; raise :class:`Failed` or
        :class:`NotReplayable`."""
        header, body = block.header, block.body
        included: list[dict[str, Any]] = body["included"]
        parent_version = int(prev.header["model_version"])
        if header["base_version"] != parent_version:
            raise Failed(
                f"base_version {header['base_version']!r} is not the previous "
                f"block's model_version {parent_version}"
            )
        if not included:
            if header["model_hash"] != prev.header["model_hash"]:
                raise Failed("it includes no update but changes the model")
            return
        if any(PAYLOAD_FIELD not in u for u in included):
            raise NotReplayable(
                "written without stored update payloads (before they were stored, "
                "or by PoVStrategy before it stored them)"
            )
        config = self.configs.get(str(header["config_digest"]))
        if config is None:
            raise NotReplayable(
                "the settings behind its config_digest are not recorded"
            )
        self._unmixed(prev, block, config)
        wrapped = WrappedSettings.of(config)
        if wrapped is not None:
            self._wrapped(prev, block, wrapped)
        if config.get("strategy") != REPLAYABLE_STRATEGY:
            raise NotReplayable(
                f"written by {str(config.get('strategy'))[:40]!r}, not FedBuff"
            )
        settings = Settings.of(config)
        if self.rule_trust is not None and settings.trust != self.rule_trust:
            raise Failed(
                "its recorded settings weigh updates "
                f"{'by' if settings.trust else 'without'} trust, the chain's judging "
                f"rule {'with' if self.rule_trust else 'without'} it"
            )
        parent = self.model(str(prev.header["model_hash"]))
        state = self.ledger.server_state(block)
        before = self.ledger.server_state(prev)
        names = state_names(parent, settings.patterns)
        updates = [
            self._update(i, entry, parent, parent_version, names, settings)
            for i, entry in enumerate(included)
        ]
        signed = sum(1 for u in updates if u.trainer is not None)
        counts = weighed_examples(
            [(u.node_id, u.update.num_examples) for u in updates],
            included,
            body,
            state,
            before,
            settings.weighting,
        )
        for u, count in zip(updates, counts, strict=True):
            u.examples = count
        check_weights(updates, included, body, settings, self.participation)
        if settings.trust:
            try:
                weigh_by_trust(
                    updates, body.get("votes", []), len(body.get("committee", []))
                )
            except TrustError as exc:
                raise Failed(f"trust weighting: {exc}") from None
        velocity = self._velocity(body, state, before, settings, parent, updates, names)
        result = self._step(parent, updates, velocity, names, settings)
        if result is None:
            raise Failed("the replayed aggregate overflows the model")
        replayed = model_hash(result.model)
        if replayed != header["model_hash"]:
            raise Failed(
                f"the replayed model {replayed[:16]}… is not the recorded "
                f"{str(header['model_hash'])[:16]}…"
            )
        self.keep(replayed, result.model)  # the next block's parent: no reload
        if settings.momentum > 0.0:
            assert state is not None and state.velocity is not None
            assert result.velocity is not None
            if model_hash(result.velocity) != model_hash(state.velocity):
                raise Failed("the replayed momentum velocity is not the recorded one")
        shares = contributions(
            [u.node_id for u in updates],
            [u.update.delta for u in updates],
            [u.step_examples for u in updates],
            result.step,
        )
        version = block.format_version
        if encode(version, ids_as_text(shares)) != encode(
            version, body["contributions"]
        ):
            raise Failed("the recorded contributions are not the replayed ones")
        self.checked += len(updates)
        self.signed += signed

    def _unmixed(self, prev: Block, block: Block, config: Mapping[str, Any]) -> None:
        """Fail a block whose settings differ from its previous block's where
        either is :data:`~.wrapper.POV_WRAPPER`'s: that wrapper records its
        settings once, in a fresh ledger's genesis block, so a block marked
        as its in a chain begun by another strategy (whose model replay would
        then not recompute) is a forgery, as is the converse."""
        digest = str(prev.header["config_digest"])
        before = self.configs.get(digest)
        if block.header["config_digest"] != digest and (
            wraps(config) or (before is not None and wraps(before))
        ):
            raise Failed(
                f"its recorded settings are not its previous block's, and one of "
                f"them is {POV_WRAPPER}'s, which records its settings once, in the "
                "genesis block: a chain does not mix its blocks with another "
                "strategy's"
            )

    def _wrapped(self, prev: Block, block: Block, settings: WrappedSettings) -> None:
        """Check a block whose model a wrapped Flower strategy aggregated
        (:data:`~.wrapper.POV_WRAPPER`'s): each included payload as
        :meth:`_payload` does, trained on the parent version (a synchronous
        round), its entry's example count the recorded weighting of the
        payload's claim (as :meth:`block` checks it), and the recorded
        contributions from the payloads and the recorded model.
        The model itself is not recomputed: :class:`ModelNotRecomputed`."""
        header, body = block.header, block.body
        included: list[dict[str, Any]] = body["included"]
        parent_version = int(prev.header["model_version"])
        parent = self.model(str(prev.header["model_hash"]))
        updates = []
        for index, entry in enumerate(included):
            where = f"included update {index}"
            if entry["trained_on"] != parent_version:
                raise Failed(
                    f"{where}: trained on {str(entry['trained_on'])[:24]}, not the "
                    f"version its round sent ({parent_version})"
                )
            update = self._payload(
                where,
                entry,
                parent,
                parent_version,
                (settings.arrayrecord_key, settings.weighted_by_key),
                settings.require_signed,
            )
            updates.append(update)
        counts = weighed_examples(
            [(u.node_id, u.parsed.num_examples) for u in updates],
            included,
            body,
            self.ledger.server_state(block),
            self.ledger.server_state(prev),
            settings.weighting,
        )
        shares = contributions(
            [u.node_id for u in updates],
            [u.parsed.delta for u in updates],
            counts,
            model_step(self.model(str(header["model_hash"])), parent),
        )
        version = block.format_version
        if encode(version, ids_as_text(shares)) != encode(
            version, body["contributions"]
        ):
            raise Failed("the recorded contributions are not the payloads'")
        self.checked += len(updates)
        self.signed += sum(1 for u in updates if u.trainer is not None)
        raise ModelNotRecomputed(
            f"aggregated by the wrapped strategy {settings.strategy[:40]!r}, "
            "which replay does not recompute"
        )

    # pylint: disable=too-many-arguments
    def _update(
        self,
        index: int,
        entry: Mapping[str, Any],
        parent: NDArrays,
        parent_version: int,
        names: frozenset[str],
        settings: Settings,
    ) -> BufferedUpdate:
        """Check one included entry against its payload; the update to replay."""
        checked = self._payload(
            f"included update {index}",
            entry,
            parent,
            parent_version,
            (settings.arrayrecord_key, settings.weighted_by_key),
            settings.require_signed,
        )
        staleness = parent_version - checked.trained_on
        base = self.versions[checked.trained_on]
        state_base = {n: self.model(base)[n] for n in names} if names else {}
        return BufferedUpdate(
            node_id=checked.node_id,
            trained_on=checked.trained_on,
            staleness=staleness,
            weight=settings.staleness(staleness),  # checked once factors are known
            update=checked.parsed,
            examples=checked.parsed.num_examples,  # the claim, until weighed
            metrics=RecordDict(),
            digest=str(entry["digest"]),
            state_base=state_base,
            trainer=checked.trainer,
        )

    # pylint: disable=too-many-arguments
    def _payload(
        self,
        where: str,
        entry: Mapping[str, Any],
        parent: NDArrays,
        parent_version: int,
        keys: tuple[str, str],
        require_signed: bool,
    ) -> _Checked:
        """One included entry checked against its stored payload: sender,
        digest, ``trained_on`` and staleness, trainer signature, and the
        update parsed as the server parsed it (``keys``: the array record's
        and the example count's)."""
        try:
            node_id, content = self.ledger.blobs.load_update(str(entry[PAYLOAD_FIELD]))
        except ValueError as exc:
            raise Failed(f"{where}: {exc}") from None
        if node_id != node_key(entry["node_id"]):
            raise Failed(f"{where}: its payload was sent by another node")
        if sender_update_digest(node_id, content) != entry["digest"]:
            raise Failed(f"{where}: its stored payload does not hash to its digest")
        trained_on = entry["trained_on"]
        if (
            isinstance(trained_on, bool)
            or not isinstance(trained_on, int)
            or trained_on not in self.versions
            or trained_on > parent_version
        ):
            raise Failed(f"{where}: trained on {trained_on!r}, not an earlier version")
        staleness = parent_version - trained_on
        if entry["staleness"] != staleness:
            raise Failed(
                f"{where}: records staleness {entry['staleness']!r}, "
                f"the versions give {staleness}"
            )
        base = self.versions[trained_on]
        trainer = _trainer(where, node_id, content, entry, base, require_signed)
        try:
            kind = update_kind(content)
            reference = parent if kind == UPDATE_KIND_DELTA else self.model(base)
            parsed = parse_update(
                content,
                reference,
                arrayrecord_key=keys[0],
                weighted_by_key=keys[1],
                trained_on=trained_on,
            )
        except UpdateRejected as exc:
            raise Failed(f"{where} is not a valid update: {exc.reason}") from None
        return _Checked(node_id, trained_on, trainer, parsed)

    # pylint: disable=too-many-arguments
    def _step(
        self,
        parent: NDArrays,
        updates: Sequence[BufferedUpdate],
        velocity: NDArrays | None,
        names: frozenset[str],
        settings: Settings,
    ) -> StepResult | None:
        """The server's step over ``updates`` with the recorded settings."""
        return self.step(
            parent,
            updates,
            lr=settings.lr,
            momentum=settings.momentum,
            velocity=velocity,
            state_names=names,
            state_rule=settings.rule,
        )

    def _velocity(
        self,
        body: Mapping[str, Any],
        state: ServerState | None,
        before: ServerState | None,
        settings: Settings,
        parent: NDArrays,
        updates: Sequence[BufferedUpdate],
        names: frozenset[str],
    ) -> NDArrays | None:
        """The velocity the block's step continues (``None``: from zero).

        A restart from zero is accepted at the start of a run (the previous
        block records no velocity), or when continuing the previous velocity
        over this block's updates overflows the model. A recorded overflow
        rejection alone proves nothing (the block builder writes it, and the
        overflowing updates' payloads are not stored): a restart resting only
        on one is not replayable, and one without any fails.
        """
        if settings.momentum == 0.0:
            return None
        if state is None or state.velocity is None:
            raise NotReplayable("it records no momentum velocity")
        previous = None if before is None else before.velocity
        if not state.velocity_from_zero:
            if previous is None:
                raise Failed(
                    "it continues a momentum velocity the previous block does "
                    "not record"
                )
            return previous
        if previous is None:
            return None
        overflowed = any(
            isinstance(r, dict) and r.get("reason") == OVERFLOW_REASON
            for r in body["rejected"]
        )
        if not overflowed:
            raise Failed(
                "it restarts the momentum from zero, but the previous block records "
                "a velocity and no aggregate overflowed in between"
            )
        continued = self._step(parent, updates, previous, names, settings)
        if continued is None:
            return None
        raise NotReplayable(
            "it restarts the momentum from zero after an overflow it records "
            "among its rejections, whose payloads are not stored; continuing "
            "the previous velocity over its updates does not overflow, so the "
            "restart cannot be checked"
        )


@dataclass(frozen=True)
class _Checked:
    """An included entry checked against its stored payload
    (:meth:`Replayer._payload`)."""

    node_id: int
    trained_on: int
    trainer: str | None
    parsed: ParsedUpdate


# pylint: disable=too-many-arguments
def _trainer(
    where: str,
    node_id: int,
    content: RecordDict,
    entry: Mapping[str, Any],
    model: str,
    require_signed: bool,
) -> str | None:
    """The trainer key that signed a stored payload, checked against the
    model it was trained on (hash ``model``) and the entry's ``trainer``;
    with ``require_signed`` (the block's settings), an unsigned one fails."""
    try:
        signer = signed_by(node_id, content, model)
    except TrainerSignatureError as exc:
        raise Failed(f"{where}: {exc}") from None
    recorded = entry.get(TRAINER_FIELD)
    if recorded != signer:
        says = "no trainer" if recorded is None else short_key(str(recorded))
        found = "no trainer signature" if signer is None else short_key(signer)
        raise Failed(
            f"{where}: records trainer {says}, its stored payload carries {found}"
        )
    if signer is None and require_signed:
        raise Failed(
            f"{where}: its payload is not signed by its trainer, and the block's "
            "settings require signed replies"
        )
    return signer

"""The replayer: one block recomputed from its parent and its stored updates.

:class:`Replayer` carries what a replay needs from block to block (each
global version's model hash, the recorded settings by digest, each node's
included updates, a few decoded models) and checks one block over its parent:
each included payload against its entry (:mod:`.replaypayload`), the
weighing (:mod:`.replayweights`), trust weighting from the committee's votes,
the momentum velocity it continues or restarts, and then the server's own
step, whose model, velocity and contributions must equal the recorded ones.
A block that does not raises :class:`~.replaytypes.Failed`; one that lacks
what the replay needs, :class:`~.replaytypes.NotReplayable`. A block whose
model a wrapped Flower strategy aggregated (PoVStrategy's) has its payloads,
their signatures and its contributions checked (:mod:`.replaywrapped`), and
then raises :class:`~.replaytypes.ModelNotRecomputed`.
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
from ..strategies.block import BufferedUpdate
from ..strategies.serverstep import OVERFLOW_REASON, StepResult
from ..strategies.state import state_names
from .blocks import CONFIG_FIELD, Block, ids_as_text
from .canonical import encode, model_hash
from .payload import PAYLOAD_FIELD
from .replaypayload import Checked, check_payload
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
from .replaywrapped import check_unmixed, check_wrapped, round_problem
from .rewards import contributions
from .serverstate import ServerState
from .wrapper import wraps

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
        config = self.configs.get(str(header["config_digest"]))
        if config is not None and wraps(config):
            problem = round_problem(header, parent_version)
            if problem is not None:
                raise Failed(problem)
            # the round was sent the previous block's model: no block between
            self.versions[int(header["base_version"])] = str(prev.header["model_hash"])
        elif header["base_version"] != parent_version:
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
        if config is None:
            raise NotReplayable(
                "the settings behind its config_digest are not recorded"
            )
        check_unmixed(self.configs, prev, block, config)
        wrapped = WrappedSettings.of(config)
        if wrapped is not None:
            self._count(check_wrapped(self, prev, block, wrapped))
            raise ModelNotRecomputed(
                f"aggregated by the wrapped strategy {wrapped.strategy[:40]!r}, "
                "which replay does not recompute"
            )
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
        self._count(updates)

    def _count(self, updates: Sequence[BufferedUpdate | Checked]) -> None:
        """Count a replayed block's checked payloads and their signed ones."""
        self.checked += len(updates)
        self.signed += sum(1 for u in updates if u.trainer is not None)

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
        where = f"included update {index}"
        checked = check_payload(self, where, entry, parent, parent_version, settings)
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

"""The checks of a block whose model a wrapped Flower strategy aggregated.

:class:`~flchain_flwr.pov.PoVStrategy` hands the committee's approved updates
to a Flower strategy's own aggregation, which replay does not recompute.
:func:`check_wrapped` checks what it can of such a block: each included
payload (:func:`~.replaypayload.check_payload`, as for a FedBuff block),
trained on the parent version (a synchronous round), each entry's example
count the recorded weighting of its payload's claim
(:mod:`.replayweights`), and the recorded contributions from the payloads
and the recorded model. :func:`check_unmixed` refuses a chain that mixes
the wrapper's blocks with another strategy's. Both raise
:class:`~.replaytypes.Failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .blocks import Block, ids_as_text
from .canonical import encode
from .replaypayload import Checked, check_payload
from .replaysettings import WrappedSettings
from .replaytypes import Failed, ReplayContext
from .replayweights import weighed_examples
from .rewards import contributions, model_step
from .wrapper import POV_WRAPPER, wraps


def check_unmixed(
    configs: Mapping[str, Mapping[str, Any]],
    prev: Block,
    block: Block,
    config: Mapping[str, Any],
) -> None:
    """Fail a block whose settings (``config``) differ from its previous
    block's (looked up in ``configs``, the recorded settings by digest) where
    either is :data:`~.wrapper.POV_WRAPPER`'s: that wrapper records its
    settings once, in a fresh ledger's genesis block, so a block marked as
    its in a chain begun by another strategy (whose model replay would then
    not recompute) is a forgery, as is the converse."""
    digest = str(prev.header["config_digest"])
    before = configs.get(digest)
    if block.header["config_digest"] != digest and (
        wraps(config) or (before is not None and wraps(before))
    ):
        raise Failed(
            f"its recorded settings are not its previous block's, and one of "
            f"them is {POV_WRAPPER}'s, which records its settings once, in the "
            "genesis block: a chain does not mix its blocks with another "
            "strategy's"
        )


def round_problem(header: Mapping[str, Any], parent_version: int) -> str | None:
    """Why a wrapper block's versions are not a synchronous round's over its
    previous block (``parent_version``), or ``None``: the round's number is
    its ``model_version``, and the round was sent ``base_version``, one
    before it, at or after the previous block's version (a round that wrote
    no block keeps the model, and Flower's round numbers go on)."""
    base, version = header["base_version"], header["model_version"]
    if isinstance(base, bool) or not isinstance(base, int) or base < parent_version:
        return (
            f"base_version {str(base)[:24]} is before the previous block's "
            f"model_version {parent_version}"
        )
    if version != base + 1:
        return f"model_version {str(version)[:24]} is not its round's, {base + 1}"
    return None


def check_wrapped(
    replay: ReplayContext, prev: Block, block: Block, settings: WrappedSettings
) -> list[Checked]:
    """Check a block whose model a wrapped Flower strategy aggregated
    (:data:`~.wrapper.POV_WRAPPER`'s) over ``prev`` (its versions checked by
    :func:`round_problem`, its round's version known to the replay as
    ``prev``'s model); its payloads, checked.

    The model itself is not recomputed: the caller reports that."""
    header, body = block.header, block.body
    included: list[dict[str, Any]] = body["included"]
    sent = int(header["base_version"])  # checked by round_problem
    parent = replay.model(str(prev.header["model_hash"]))
    updates = []
    for index, entry in enumerate(included):
        where = f"included update {index}"
        if entry["trained_on"] != sent:
            raise Failed(
                f"{where}: trained on {str(entry['trained_on'])[:24]}, not the "
                f"version its round sent ({sent})"
            )
        updates.append(check_payload(replay, where, entry, parent, sent, settings))
    counts = weighed_examples(
        [(u.node_id, u.parsed.num_examples) for u in updates],
        included,
        body,
        replay.ledger.server_state(block),
        replay.ledger.server_state(prev),
        settings.weighting,
    )
    shares = contributions(
        [u.node_id for u in updates],
        [u.parsed.delta for u in updates],
        counts,
        model_step(replay.model(str(header["model_hash"])), parent),
    )
    version = block.format_version
    if encode(version, ids_as_text(shares)) != encode(version, body["contributions"]):
        raise Failed("the recorded contributions are not the payloads'")
    return updates

"""The lossless sparse downlink (issue 15 item 1): every node's rebuilt model is
the server's, bit for bit, after many versions, a lost state, a forged delta
and a server restart; memory stays bounded; the smaller of delta and full."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from flchain_flwr.arrays import to_arrayrecord, to_ndarrays
from flchain_flwr.ledger.canonical import model_hash
from flchain_flwr.mods import DGCConfig, dgc_mod, downlink_mod
from flchain_flwr.mods.downlink import STATE_BASE, STATE_INFO, apply_delta
from flchain_flwr.protocol import DOWNLINK_KEY, DOWNLINK_RECORD, MODEL_VERSION_KEY
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import AsyncResult, Constant, FedBuff
from flchain_flwr.strategies.downlink import DownlinkSync, changed_entries

from .toy import constant_work, toy_client_app

SPEEDS = (1.0, 0.7, 0.5, 0.3)


def model() -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.zeros(20_000, np.float32)),
            "b": Array(np.zeros((2, 3), np.float32)),
        }
    )


class Spy:
    """Mods around downlink_mod: what arrived (outer) and what the app got (inner)."""

    def __init__(self) -> None:
        self.deltas = 0
        self.fulls = 0
        self.trained_on: list[tuple[int, int, str]] = []  # node, version, hash

    def outer(self, msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        if msg.metadata.message_type == "train":
            if DOWNLINK_RECORD in msg.content:
                self.deltas += 1
            else:
                self.fulls += 1
        return call_next(msg, context)

    def inner(self, msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        if msg.metadata.message_type == "train":
            assert DOWNLINK_RECORD not in msg.content  # the app sees full arrays
            assert all(
                a.stype == "numpy.ndarray" for a in msg.content["arrays"].values()
            )
            version = int(msg.content["config"][MODEL_VERSION_KEY])  # type: ignore[arg-type]
            digest = model_hash(to_ndarrays(msg.content["arrays"]))
            self.trained_on.append((context.node_id, version, digest))
        return call_next(msg, context)


def run(
    downlink: bool,
    versions: int = 12,
    extra_mods: list[Any] | None = None,
    dgc: bool = True,
    grid: VirtualGrid | None = None,
    initial: ArrayRecord | None = None,
    inner_mods: list[Any] | None = None,
    initial_model: Any = None,
    **kwargs: Any,
):  # type: ignore[no-untyped-def]
    spy = Spy()
    mods = [
        *(extra_mods or []),
        spy.outer,
        downlink_mod(initial_model=initial_model),
        spy.inner,
        *([dgc_mod(DGCConfig(density=0.01))] if dgc else []),
        *(inner_mods or []),
    ]
    grid = grid or VirtualGrid(
        toy_client_app(mods=mods),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=constant_work(1.0),
        seed=4,
    )
    server: dict[int, str] = {}

    def record(version: int, arrays: ArrayRecord) -> None:
        server[version] = model_hash(to_ndarrays(arrays))

    strategy = FedBuff(
        buffer_size=2,
        fraction_evaluate=0.0,
        seed=0,
        staleness_fn=Constant(),
        downlink=downlink,
        retry_backoff=1.0,
        **kwargs,
    )
    result = simulate(
        strategy,
        grid,
        initial or model(),
        num_rounds=versions,
        evaluate_fn=record,
    ).result  # type: ignore[arg-type]
    assert isinstance(result, AsyncResult)
    return result, spy, server, grid


def assert_bit_identical(spy: Spy, server: dict[int, str]) -> None:
    assert spy.trained_on
    for _, version, digest in spy.trained_on:
        assert digest == server[version]


def test_every_rebuilt_model_is_the_servers_bit_for_bit() -> None:
    result, spy, server, _ = run(True, versions=15)
    assert result.failures == [] and result.rejected == []
    assert spy.deltas > spy.fulls  # after each node's first message, deltas
    sent = sum(d["sent"] for d in result.downlink.values())
    assert sent == spy.deltas and min(result.downlink) >= 1
    for stats in result.downlink.values():  # unions of changes, within bounds
        assert 0 < stats["entries"] <= stats["offered"] * 20_006
    assert_bit_identical(spy, server)
    plain, plain_spy, _, _ = run(False, versions=15)
    assert plain_spy.deltas == 0
    # the same training, so the same models; fewer bytes down
    np.testing.assert_array_equal(result.arrays["w"].numpy(), plain.arrays["w"].numpy())
    assert sum(v.bytes_down for v in result.versions) < 0.5 * sum(
        v.bytes_down for v in plain.versions
    )


def test_without_the_option_the_mod_is_inert_and_messages_are_full() -> None:
    result, spy, _, _ = run(False, versions=3)
    assert spy.deltas == 0 and spy.fulls > 0
    assert result.failures == []


def test_dense_updates_make_deltas_no_smaller_so_the_full_model_goes() -> None:
    result, spy, server, _ = run(True, versions=6, dgc=False)
    assert spy.deltas == 0 and result.failures == []
    assert_bit_identical(spy, server)


def _lose_state_once(node_index: int, at_message: int):  # type: ignore[no-untyped-def]
    seen: Counter[int] = Counter()

    def mod(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        if msg.metadata.message_type == "train":
            seen[context.node_id] += 1
            mine = (
                len(seen) > node_index and sorted(seen)[node_index] == context.node_id
            )
            if mine and seen[context.node_id] == at_message:
                for key in (STATE_BASE, STATE_INFO):
                    context.state.pop(key, None)
        return call_next(msg, context)

    return mod


def test_a_lost_state_is_recorded_never_trained_on_then_resynced() -> None:
    result, spy, server, _ = run(True, versions=15, extra_mods=[_lose_state_once(0, 3)])
    reasons = [f.reason for f in result.failures]
    assert len(reasons) == 1 and "no base model kept" in reasons[0]
    assert_bit_identical(spy, server)  # nothing was trained on a wrong model
    node = result.failures[0].node_id
    later = [
        v for n, v, _ in spy.trained_on if n == node and v > result.failures[0].version
    ]
    assert later  # the node got the full model and trained again


def test_a_forged_delta_is_rejected_by_its_hash() -> None:
    forged = {"done": False}

    def forge(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        sync = msg.content.config_records.get(DOWNLINK_RECORD)
        if sync is not None and not forged["done"]:
            forged["done"] = True
            w = msg.content["arrays"]["w"]
            data = bytearray(w.data)
            data[-1] ^= (
                0x01  # one value's last byte (float32, little-endian: a high bit)
            )
            msg.content["arrays"]["w"] = Array(
                dtype=w.dtype, shape=w.shape, stype=w.stype, data=bytes(data)
            )
        return call_next(msg, context)

    result, spy, server, _ = run(True, versions=10, extra_mods=[forge])
    assert forged["done"]
    reasons = [f.reason for f in result.failures]
    assert len(reasons) == 1 and "rebuilt model hashes to" in reasons[0]
    assert_bit_identical(spy, server)


def test_empty_array_bytes_get_the_downlink_error_reply() -> None:
    emptied: list[str] = []

    def empty_b(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        arrays = msg.content.array_records.get("arrays")
        kind = "delta" if DOWNLINK_RECORD in msg.content else "full"
        if msg.metadata.message_type == "train" and arrays and kind not in emptied:
            emptied.append(kind)
            arrays["b"] = Array(
                dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b""
            )
        return call_next(msg, context)

    result, spy, server, _ = run(True, versions=10, extra_mods=[empty_b])
    assert sorted(emptied) == ["delta", "full"]
    reasons = sorted(f.reason for f in result.failures)
    assert len(reasons) == 2
    assert "array 'b': EOFError" in reasons[0]
    assert "the full model does not decode: EOFError" in reasons[1]
    assert all(r.startswith("downlink delta not applied") for r in reasons)
    assert_bit_identical(spy, server)


def test_a_base_mismatch_is_rejected(tmp_path: Path) -> None:
    def swap_base(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        info = context.state.get(STATE_INFO)
        if DOWNLINK_RECORD in msg.content and isinstance(info, ConfigRecord):
            info["hash"] = "0" * 64
        return call_next(msg, context)

    result, spy, server, _ = run(True, versions=4, extra_mods=[swap_base])
    assert result.failures and all(
        "the delta is on version" in f.reason for f in result.failures
    )
    assert_bit_identical(spy, server)


def test_after_a_server_restart_nodes_resync_bit_for_bit(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    _, spy1, server1, grid = run(True, versions=5, ledger=ledger)
    assert_bit_identical(spy1, server1)
    deltas_before, trained_before = spy1.deltas, len(spy1.trained_on)
    # A new server resumes the ledger; the nodes keep their Context.state. The
    # grid runs the first call's mods, so the first spy sees both runs.
    second, spy2, server2, _ = run(True, versions=12, ledger=ledger, grid=grid)
    assert second.failures == [] and second.versions[0].version == 6
    assert spy2.trained_on == [] and len(spy1.trained_on) > trained_before
    assert server2[5] == server1[5]  # the resumed model
    assert_bit_identical(spy1, {**server1, **server2})
    assert spy1.deltas > deltas_before  # deltas again once nodes said what they hold


def _keep_frozen(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
    """The app returns the non-float32 tensors it was sent, unchanged."""
    reply = call_next(msg, context)
    if reply.has_content() and "arrays" in reply.content:
        for name in ("ids", "f64"):
            reply.content["arrays"][name] = msg.content["arrays"][name]
    return reply


def test_unchanged_int64_and_float64_tensors_go_whole_bit_for_bit() -> None:
    # the sparse format carries float32/float16 values only: an unchanged
    # int64 or float64 tensor once made an int64 "sparse" payload and crashed
    initial = model()
    initial["ids"] = Array(np.arange(100, dtype=np.int64))
    initial["f64"] = Array(np.linspace(0.0, 1.0, 50))
    result, spy, server, _ = run(
        True, versions=8, initial=initial, inner_mods=[_keep_frozen]
    )
    assert result.failures == [] and len(result.versions) == 8
    assert spy.deltas > 0
    assert_bit_identical(spy, server)
    np.testing.assert_array_equal(result.arrays["ids"].numpy(), np.arange(100))
    # directly: the delta holds them dense and rebuilds the model exactly
    start = to_ndarrays(initial)
    sync = DownlinkSync(0, start, lambda: None)
    after = {**start, "w": start["w"].copy()}
    after["w"][7] = 1.0
    sync.advance(1, after)
    sync.holds[3] = (0, sync.hashes[0])
    full = FedBuff().train_content(to_arrayrecord(after), ConfigRecord(), 1)
    delta = sync.content(3, full)
    assert DOWNLINK_RECORD in delta
    for name in ("ids", "f64"):
        assert delta["arrays"][name].stype == "numpy.ndarray"
    rebuilt = apply_delta(start, delta["arrays"])
    assert model_hash(rebuilt) == model_hash(after)


def test_changed_entries_compare_bits() -> None:
    old = np.array([0.0, 1.0, 2.0, np.float32(1e-45)], np.float32)
    new = np.array([-0.0, 1.0, 2.5, 0.0], np.float32)
    assert changed_entries(old, new).tolist() == [0, 2, 3]
    assert changed_entries(np.arange(3), np.arange(3)).tolist() == []
    assert changed_entries(np.arange(3), np.arange(3) + 1) is None  # ints: whole
    assert changed_entries(np.zeros(2), np.ones(2)) is None  # float64: whole


def test_memory_is_bounded_by_the_window() -> None:
    start = {"w": np.zeros(1000, np.float32)}
    sync = DownlinkSync(0, start, lambda: 4)
    current = start
    for v in range(1, 30):
        current = {"w": current["w"].copy()}
        current["w"][v] = 1.0
        sync.advance(v, current)
        assert len(sync.changes) <= 3 and len(sync.hashes) <= 4
    # a node on a version beyond the window gets the full model
    sync.holds[1] = (3, "x")
    content = {"arrays": ArrayRecord({"w": Array(current["w"])})}
    from flwr.app import RecordDict

    full = RecordDict(content)  # type: ignore[arg-type]
    assert sync.content(1, full) is full
    sync.holds[1] = (27, sync.hashes[27])
    delta = sync.content(1, full)
    assert DOWNLINK_RECORD in delta and delta["arrays"].count_bytes() < 200


def test_dense_changes_keep_no_indices_and_far_unions_go_whole() -> None:
    from flwr.app import RecordDict

    n = 10_000
    start = {"w": np.zeros(n, np.float32)}
    sync = DownlinkSync(0, start, lambda: 30)
    sync.advance(1, {"w": start["w"] + np.float32(1.0)})  # every entry changes
    assert sync.changes[1]["w"] is None  # no 10k indices kept: it goes whole
    models = {0: start, 1: {"w": start["w"] + np.float32(1.0)}}
    for v in range(2, 12):  # then 10% new entries per version
        w = models[v - 1]["w"].copy()
        w[(v - 2) * 1000 : (v - 1) * 1000] = v
        models[v] = {"w": w}
        sync.advance(v, models[v])
        kept = sync.changes[v]["w"]
        assert kept is not None and kept.dtype == np.uint32 and len(kept) == 1000
    full = RecordDict({"arrays": to_arrayrecord(models[11])})
    stypes = {}
    for base in (10, 2, 1):
        sync.holds[base] = (base, sync.hashes[base])
        delta = sync.content(base, full)
        stypes[base] = delta["arrays"]["w"].stype if DOWNLINK_RECORD in delta else None
        if DOWNLINK_RECORD in delta:
            rebuilt = apply_delta(models[base], delta["arrays"])
            assert model_hash(rebuilt) == sync.hashes[11]
    # 1000 or 9000 entries changed: sparse; all 10k: whole (the union stops)
    assert stypes == {10: "flchain.sparse", 2: "flchain.sparse", 1: None}
    assert sync.by_distance[9].entries == 9000 and sync.by_distance[10].entries == n


def test_holds_on_versions_out_of_the_window_are_forgotten() -> None:
    from flwr.app import RecordDict

    model_ = {"w": np.zeros(100, np.float32)}
    sync = DownlinkSync(0, model_, lambda: 4)
    for v in range(1, 40):  # churn: new nodes each version, replying once
        model_ = {"w": model_["w"].copy()}
        model_["w"][v % 100] += 1
        sync.advance(v, model_)
        held = ConfigRecord({"holds-version": v, "holds-hash": sync.hashes[v]})
        for n in range(50):
            sync.observe(v * 1000 + n, RecordDict({DOWNLINK_RECORD: held}))
        assert len(sync.holds) <= 4 * 50
        assert all(version in sync.hashes for version, _ in sync.holds.values())


def test_a_reply_naming_an_unknown_hash_gets_the_full_model() -> None:
    from flwr.app import RecordDict

    start = {"w": np.zeros(1000, np.float32)}
    sync = DownlinkSync(0, start, lambda: None)
    reply = RecordDict(
        {DOWNLINK_RECORD: ConfigRecord({"holds-version": 0, "holds-hash": "f" * 64})}
    )
    sync.observe(5, reply)
    assert 5 not in sync.holds
    reply[DOWNLINK_RECORD]["holds-hash"] = sync.hashes[0]
    sync.observe(5, reply)
    assert sync.holds[5] == (0, sync.hashes[0])
    sync.forget(5)
    assert 5 not in sync.holds


def test_run_config_key() -> None:
    from flchain_flwr.strategies import fedbuff_from_run_config

    assert fedbuff_from_run_config({"downlink": True}).downlink
    assert not fedbuff_from_run_config({}).downlink
    with pytest.raises(ValueError, match="downlink"):
        fedbuff_from_run_config({"downlink": "yes"})
    both = {"downlink": True, "downlink-from-initial": True}
    assert fedbuff_from_run_config(both).downlink_from_initial
    assert not fedbuff_from_run_config({"downlink": True}).downlink_from_initial
    with pytest.raises(ValueError, match="downlink_from_initial needs downlink"):
        fedbuff_from_run_config({"downlink-from-initial": True})
    content = FedBuff(downlink=True).train_content(model(), ConfigRecord(), 0)
    assert content["config"][DOWNLINK_KEY] is True


def test_under_flowers_plain_fedavg_both_mods_are_inert() -> None:
    from flwr.serverapp.strategy import FedAvg

    seen: list[bool] = []

    def replies(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        seen.append(DOWNLINK_RECORD in reply.content)
        return reply

    results = []
    for mods in (None, [replies, downlink_mod(), dgc_mod()]):
        grid = VirtualGrid(
            toy_client_app(mods=mods),
            [DeviceProfile(speed=s) for s in SPEEDS],
            work_fn=constant_work(1.0),
            seed=4,
        )
        strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=4)
        results.append(simulate(strategy, grid, model(), num_rounds=3).result)
    assert seen and not any(seen)
    for name in ("w", "b"):
        np.testing.assert_array_equal(
            results[0].arrays[name].numpy(), results[1].arrays[name].numpy()
        )


# -------------------------------------------- first models from the initial one
def _initial(context: Context) -> dict[str, np.ndarray]:
    """The toy run's initial model, built on the node (what ``run`` starts from)."""
    return to_ndarrays(model())


def test_first_models_go_as_deltas_from_the_initial_model() -> None:
    result, spy, server, _ = run(
        True, versions=15, initial_model=_initial, downlink_from_initial=True
    )
    assert result.failures == [] and spy.fulls == 0  # not even the first
    assert_bit_identical(spy, server)
    whole_first, whole_spy, _, _ = run(True, versions=15)
    assert whole_spy.fulls >= len(SPEEDS)
    np.testing.assert_array_equal(
        result.arrays["w"].numpy(), whole_first.arrays["w"].numpy()
    )
    saved = sum(v.bytes_down for v in whole_first.versions) - sum(
        v.bytes_down for v in result.versions
    )
    assert saved >= whole_spy.fulls * 0.9 * model().count_bytes()


def test_a_node_that_cannot_build_the_initial_model_is_never_trained_on() -> None:
    # the app gives downlink_mod no initial_model: the first messages fail with
    # a reason, the offer turns off for every node, and full models go instead
    result, spy, server, _ = run(True, versions=8, downlink_from_initial=True)
    assert 0 < len(result.failures) <= len(SPEEDS)  # only those already sent
    assert all("which this node cannot build" in f.reason for f in result.failures)
    assert len(result.versions) == 8 and spy.fulls >= len(result.failures)
    assert_bit_identical(spy, server)


def test_a_different_initial_model_is_refused_by_its_hash() -> None:
    def other(context: Context) -> dict[str, np.ndarray]:
        built = to_ndarrays(model())
        built["b"][0, 0] = np.float32(1e-30)
        return built

    result, spy, server, _ = run(
        True, versions=8, initial_model=other, downlink_from_initial=True
    )
    assert result.failures
    assert all("initial model hashes to" in f.reason for f in result.failures)
    assert len(result.versions) == 8
    assert_bit_identical(spy, server)


def test_a_resumed_run_offers_no_initial_deltas(tmp_path: Path) -> None:
    # nodes with no state (a new grid) and a server resuming at version 5: the
    # resumed model is not the one nodes build, so it must go whole
    ledger = tmp_path / "l.db"
    kwargs: dict[str, Any] = {"initial_model": _initial, "downlink_from_initial": True}
    run(True, versions=5, ledger=ledger, **kwargs)
    second, spy, server, _ = run(True, versions=9, ledger=ledger, **kwargs)
    assert second.failures == [] and second.versions[0].version == 6
    assert spy.fulls >= len(SPEEDS) and spy.deltas > 0
    assert_bit_identical(spy, server)


def test_failed_nodes_get_full_models_and_memory_stays_bounded() -> None:
    from flwr.app import RecordDict

    start = {"w": np.zeros(1000, np.float32)}
    sync = DownlinkSync(0, start, lambda: 3, from_initial=True)
    full = RecordDict({"arrays": to_arrayrecord(start)})
    assert DOWNLINK_RECORD in sync.content(1, full)  # not heard from: a delta
    sync.forget(1, "timed out")  # not a refusal of the initial model
    assert sync.content(1, full) is full and sync.initial is not None
    assert sync.initial_refused == 1
    assert DOWNLINK_RECORD in sync.content(2, full)
    sync.forget(2, "downlink delta not applied: this node's initial model hashes")
    assert sync.initial is None  # off for every node
    assert sync.content(3, full) is full
    for v in range(1, 6):
        sync.advance(v, start)
    assert sync.holds == {}  # nothing kept once the offer is gone

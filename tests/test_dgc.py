"""The DGC mod: compression maths, state, the Flower mod, and the server side."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st

from flchain_flwr.compression import decode, is_sparse
from flchain_flwr.mods import DGC_WARMUP, DGCConfig, DGCState, compress, dgc_mod
from flchain_flwr.protocol import (
    SPARSE_REPLIES_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
)
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import Constant, DecompressReplies, FedBuff
from flchain_flwr.strategies.updates import UpdateRejected, parse_update

from .toy import FlowerLogLines, constant_work, initial_arrays, toy_client_app

RNG = np.random.default_rng(0)


def old_cfg(**kwargs: Any) -> DGCConfig:
    """A DGCConfig with the library's defaults before issue 15 (DGC's recipe),
    which these tests were written against."""
    old: dict[str, Any] = {
        "density": 0.001,
        "masking": True,
        "warmup": DGC_WARMUP,
        "value_dtype": "float32",
        "selection": "tensor",
    }
    return DGCConfig(**{**old, **kwargs})


def dense_of(compressed, like):  # type: ignore[no-untyped-def]
    out = {}
    for name, array in compressed.arrays.items():
        ref = like[name]
        out[name] = (
            decode(array, shape=ref.shape, dtype=ref.dtype)
            if is_sparse(array)
            else array.numpy()
        )
    return out


def test_without_momentum_sent_plus_residual_is_exactly_the_dense_sum() -> None:
    cfg = old_cfg(density=0.01, momentum=0.0, warmup=(0.1,), min_sparse_size=16)
    shapes = {"big": (50, 40), "small": (3,)}
    state, sent_total = (
        DGCState(),
        {k: np.zeros(s, np.float32) for k, s in shapes.items()},
    )
    dense_total = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    for _ in range(12):
        delta = {
            k: RNG.integers(-50, 50, size=s).astype(np.float32)
            for k, s in shapes.items()
        }
        compressed, state = compress(delta, state, cfg)
        for k, v in dense_of(compressed, delta).items():
            sent_total[k] += v
        for k in shapes:
            dense_total[k] += delta[k]
    for k in shapes:  # integers: float32 sums are exact, so equality is exact too
        np.testing.assert_array_equal(sent_total[k] + state.residual[k], dense_total[k])


def test_top_k_sends_the_largest_accumulated_entries() -> None:
    cfg = DGCConfig.plain_topk(0.05, min_sparse_size=1)
    delta = {"w": RNG.normal(size=1000).astype(np.float32)}
    compressed, _ = compress(delta, DGCState(), cfg)
    sent = dense_of(compressed, delta)["w"]
    chosen = np.flatnonzero(sent)
    assert len(chosen) == 50
    assert np.abs(delta["w"][chosen]).min() >= np.sort(np.abs(delta["w"]))[-50]


def test_warmup_schedule_then_target_density() -> None:
    cfg = old_cfg(density=0.001, momentum=0.0, min_sparse_size=1)
    state = DGCState()
    densities = []
    for _ in range(6):
        compressed, state = compress(
            {"w": RNG.normal(size=20_000).astype(np.float32)}, state, cfg
        )
        densities.append(round(compressed.density, 4))
    assert densities == [0.25, 0.0625, 0.015, 0.004, 0.001, 0.001]


def test_momentum_correction_and_factor_masking() -> None:
    cfg = old_cfg(density=0.1, momentum=0.5, warmup=(), min_sparse_size=1)
    delta = {"w": np.arange(1, 11, dtype=np.float32)}
    compressed, state = compress(delta, DGCState(), cfg)
    sent = dense_of(compressed, delta)["w"]
    # u <- 0.5 u + (1 - 0.5) d ; v <- v + u
    assert np.flatnonzero(sent).tolist() == [9] and sent[9] == 5.0
    assert state.momentum["w"][9] == 0.0 and state.residual["w"][9] == 0.0  # masked
    np.testing.assert_array_equal(state.momentum["w"][:9], 0.5 * delta["w"][:9])
    compressed2, state2 = compress(delta, state, cfg)
    np.testing.assert_allclose(state2.momentum["w"][:8], 0.75 * delta["w"][:8])
    # entry 8: residual 4.5 + u 6.75 beats entry 9's restarted momentum 5.0
    assert np.flatnonzero(dense_of(compressed2, delta)["w"]).tolist() == [8]
    unmasked = old_cfg(
        density=0.1, momentum=0.5, warmup=(), min_sparse_size=1, masking=False
    )
    _, state3 = compress(delta, DGCState(), unmasked)
    assert state3.momentum["w"][9] == 5.0
    dgc_form = old_cfg(
        density=0.1, momentum=0.5, unit_gain=False, warmup=(), min_sparse_size=1
    )
    compressed4, state4 = compress(delta, DGCState(), dgc_form)
    assert dense_of(compressed4, delta)["w"][9] == 10.0  # u <- m u + d
    np.testing.assert_array_equal(state4.momentum["w"][:9], delta["w"][:9])


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_unit_gain_momentum_sends_the_deltas_sum(momentum: float) -> None:
    """Sent + residual + m / (1 - m) u = the deltas' sum: no step is amplified."""
    cfg = old_cfg(
        density=0.05, momentum=momentum, masking=False, warmup=(), min_sparse_size=1
    )
    state, sent_total, dense_total = DGCState(), np.zeros(400), np.zeros(400)
    for _ in range(30):
        delta = {"w": RNG.normal(size=400)}
        compressed, state = compress(delta, state, cfg)
        sent_total += dense_of(compressed, delta)["w"]
        dense_total += delta["w"]
    pending = state.residual["w"] + momentum / (1 - momentum) * state.momentum["w"]
    np.testing.assert_allclose(sent_total + pending, dense_total, atol=1e-9)


def test_dgc_form_momentum_multiplies_the_step_by_one_over_one_minus_m() -> None:
    cfg = old_cfg(density=1.0, momentum=0.9, unit_gain=False, masking=False, warmup=())
    damped = old_cfg(density=1.0, momentum=0.9, masking=False, warmup=())
    delta = {"w": np.ones(2000, np.float32)}
    for config, gain in ((cfg, 10.0), (damped, 1.0)):
        state, sent = DGCState(), np.zeros(2000)
        for _ in range(200):
            compressed, state = compress(delta, state, config)
            sent = dense_of(compressed, delta)["w"]
        np.testing.assert_allclose(sent, gain, rtol=1e-4)


def test_local_clipping_bounds_the_update_norm() -> None:
    cfg = old_cfg(
        density=1.0, momentum=0.0, warmup=(), clip_norm=1.0, min_sparse_size=1
    )
    delta = {"w": np.full(100, 3.0, np.float32)}
    compressed, _ = compress(delta, DGCState(), cfg)
    assert np.linalg.norm(dense_of(compressed, delta)["w"]) == pytest.approx(
        1.0, rel=1e-5
    )


def test_float16_values_keep_their_rounding_error_in_the_residual() -> None:
    cfg = old_cfg(
        density=0.02, momentum=0.0, warmup=(), value_dtype="float16", min_sparse_size=1
    )
    delta = {"w": np.zeros(100, np.float32)}
    delta["w"][:2] = [1.0001, 3.14159]
    compressed, state = compress(delta, DGCState(), cfg)
    assert is_sparse(compressed.arrays["w"])
    sent = dense_of(compressed, delta)["w"]
    np.testing.assert_allclose(sent + state.residual["w"], delta["w"], atol=1e-7)
    assert state.residual["w"][1] != 0.0


def test_sampled_threshold_then_top_k_equals_the_exact_top_k() -> None:
    sampled = old_cfg(density=0.01, momentum=0.0, warmup=(), sample_above=10_000)
    exact = old_cfg(density=0.01, momentum=0.0, warmup=(), sample_above=1 << 30)
    delta = {"w": RNG.normal(size=200_000).astype(np.float32)}
    compressed, _ = compress(delta, DGCState(), sampled)
    reference, _ = compress(delta, DGCState(), exact)
    assert compressed.sent_entries == 2000
    assert compressed.arrays["w"].data == reference.arrays["w"].data


def test_float16_values_beyond_its_range_go_float32() -> None:
    cfg = old_cfg(density=0.01, warmup=(), value_dtype="float16")
    delta = {"w": RNG.normal(size=5000).astype(np.float32)}
    delta["w"][7] = 1e6
    compressed, state = compress(delta, DGCState(), cfg)
    assert compressed.arrays["w"].data[6] == 1  # value code: float32
    assert dense_of(compressed, delta)["w"][7] == 1e6 and state.residual["w"][7] == 0
    delta["w"][7] = 1.0
    compressed, _ = compress(delta, DGCState(), cfg)
    assert compressed.arrays["w"].data[6] == 2  # float16


def test_each_tensor_goes_in_its_smaller_encoding() -> None:
    delta = {
        "big": RNG.normal(size=(64, 32)).astype(np.float32),
        "small16": RNG.normal(size=512).astype(np.float32),
        "tiny": RNG.normal(size=10).astype(np.float32),
    }
    cfg = old_cfg(density=0.01, warmup=(), value_dtype="float16")
    compressed, _ = compress(delta, DGCState(), cfg)
    arrays = compressed.arrays
    assert is_sparse(arrays["big"])
    # sent in full: 24 header bytes, 2 bits per index and 512 float16 values
    assert is_sparse(arrays["small16"])
    assert len(arrays["small16"].data) == 24 + 512 // 4 + 2 * 512 < 4 * 512
    assert not is_sparse(arrays["tiny"])  # the header alone outweighs 40 bytes
    assert compressed.sent_entries == 21 + 512 + 10


def test_integer_tensors_go_dense_in_their_own_dtype() -> None:
    delta = {
        "w": RNG.normal(size=5000).astype(np.float32),
        "steps": np.array([3], np.int64),
    }
    compressed, _ = compress(delta, DGCState(), old_cfg(density=0.01))
    assert list(compressed.arrays) == ["w", "steps"]
    assert compressed.arrays["steps"].numpy().dtype == np.int64


def test_config_validation_and_run_config() -> None:
    with pytest.raises(ValueError):
        DGCConfig(density=0.0)
    with pytest.raises(ValueError):
        DGCConfig(momentum=0.5, accumulate=False)
    assert DGCConfig.from_run_config({}) is None
    assert DGCConfig.from_run_config({"dgc-density": 1.0}) is None
    cfg = DGCConfig.from_run_config(
        {"dgc-density": 0.01, "dgc-momentum": 0.0, "dgc-warmup": False}
    )
    assert cfg == DGCConfig(density=0.01, momentum=0.0, warmup=())
    cfg = DGCConfig.from_run_config(
        {"dgc-density": 0.01, "dgc-momentum": 0.9, "dgc-unit-gain": False}
    )
    assert cfg is not None and cfg.momentum == 0.9 and not cfg.unit_gain


# ---------------------------------------------------------------- the mod
def _context() -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={},
    )


def test_mod_passes_evaluate_query_and_errors_through_untouched() -> None:
    from flwr.app import Error

    VirtualGrid(toy_client_app(), [DeviceProfile()])  # sets the process's task identity
    mod = dgc_mod(old_cfg(density=0.5))
    for message_type in (MessageType.EVALUATE, MessageType.QUERY):
        msg = Message(RecordDict({"arrays": initial_arrays()}), 1, message_type)
        msg.metadata.__dict__["_message_id"] = "m1"
        reply = Message(RecordDict({"x": ConfigRecord({"a": 1})}), reply_to=msg)
        assert mod(msg, _context(), lambda m, c, r=reply: r) is reply
        assert reply.content["x"]["a"] == 1
    msg = Message(RecordDict({"arrays": initial_arrays()}), 1, MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m2"
    error = Message(Error(code=2, reason="boom"), reply_to=msg)
    assert mod(msg, _context(), lambda m, c: error) is error


def _run(strategy, mod, rounds, speeds=(1.0, 0.7, 0.5)):  # type: ignore[no-untyped-def]
    app = toy_client_app(mods=[mod] if mod is not None else None)
    grid = VirtualGrid(
        app, [DeviceProfile(speed=s) for s in speeds], work_fn=constant_work(1.0)
    )
    return simulate(strategy, grid, initial_arrays(), num_rounds=rounds)


def test_fedbuff_with_the_mod_at_full_density_equals_dense_fedbuff() -> None:
    exact = dgc_mod(old_cfg(density=1.0, momentum=0.0, warmup=(), min_sparse_size=1))
    dense = _run(FedBuff(buffer_size=2, staleness_fn=Constant()), None, 6).result
    sparse = _run(FedBuff(buffer_size=2, staleness_fn=Constant()), exact, 6).result
    assert sparse.rejected == []  # type: ignore[union-attr]
    np.testing.assert_allclose(
        sparse.arrays["w"].numpy(), dense.arrays["w"].numpy(), rtol=1e-6
    )


def test_mod_state_survives_across_messages_in_context_state() -> None:
    run = _run(
        FedBuff(buffer_size=2), dgc_mod(old_cfg(density=0.3, min_sparse_size=1)), 5
    )
    for context in run.grid.contexts.values():
        info = context.state["flchain.dgc"]
        assert int(info["rounds"]) >= 2  # type: ignore[arg-type]
        assert "w" in context.state["flchain.dgc.residual"]


def test_flowers_fedavg_consumes_mod_replies_through_the_wrapper() -> None:
    exact = dgc_mod(old_cfg(density=1.0, momentum=0.0, warmup=(), min_sparse_size=1))
    plain = _run(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), None, 3).result
    wrapped = DecompressReplies(FedAvg(fraction_evaluate=0.0, min_available_nodes=3))
    sparse = _run(wrapped, exact, 3).result
    assert wrapped.rejected == []
    np.testing.assert_allclose(
        sparse.arrays["w"].numpy(), plain.arrays["w"].numpy(), rtol=1e-6
    )


def test_wrapper_drops_malformed_replies_with_a_reason() -> None:
    wrapped = DecompressReplies(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=2)
    )
    grid = VirtualGrid(
        toy_client_app({2: "nan"}), [DeviceProfile()] * 3, work_fn=constant_work(1.0)
    )
    result = simulate(wrapped, grid, initial_arrays(), num_rounds=2).result
    assert len(wrapped.rejected) == 2 and "NaN" in wrapped.rejected[0].reason
    assert np.isfinite(result.arrays["w"].numpy()).all()


def test_a_reply_claiming_another_base_version_is_rejected() -> None:
    def lie(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        reply.content["flchain"]["trained-on"] = 99
        return reply

    app = toy_client_app(mods=[lie, dgc_mod(old_cfg(density=0.5, min_sparse_size=1))])
    grid = VirtualGrid(app, [DeviceProfile()] * 2, work_fn=constant_work(1.0))
    result = FedBuff(buffer_size=1).start(
        grid, initial_arrays(), num_rounds=1, timeout=10.0
    )
    assert result.versions == []
    assert (
        "says it was trained on version 99, it was sent 0" in result.rejected[0].reason
    )


# Regressions found in review -------------------------------------------------
def test_integer_and_bool_tensors_travel_as_signed_deltas() -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord

    def counters(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        sent = msg.content["arrays"]
        arrays = ArrayRecord(
            {
                **{k: v for k, v in reply.content["arrays"].items()},
                "steps": Array(sent["steps"].numpy() - np.uint8(2)),  # 5 -> 3
                "flag": Array(~sent["flag"].numpy()),
            }
        )
        reply.content = RecordDict(
            {"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}
        )
        return reply

    start = initial_arrays()
    start["steps"] = Array(np.array([5], np.uint8))
    start["flag"] = Array(np.array([True]))
    app = toy_client_app(
        mods=[dgc_mod(old_cfg(density=0.5, min_sparse_size=1)), counters]
    )
    grid = VirtualGrid(app, [DeviceProfile()], work_fn=constant_work(1.0))
    result = FedBuff(
        buffer_size=1, min_available_nodes=1, staleness_fn=Constant()
    ).start(grid, start, num_rounds=1, timeout=10.0)
    assert result.rejected == []
    assert result.arrays["steps"].numpy()[0] == 3
    assert not bool(result.arrays["flag"].numpy()[0])


def test_float64_tensors_keep_the_residual_exact() -> None:
    cfg = old_cfg(density=0.1, warmup=(), min_sparse_size=1)
    state, sent_total, dense_total = DGCState(), np.zeros(200), np.zeros(200)
    for _ in range(10):
        delta = {"w": RNG.normal(scale=1e3, size=200)}
        compressed, state = compress(delta, state, cfg)
        sent_total += dense_of(compressed, delta)["w"]
        dense_total += delta["w"]
    np.testing.assert_allclose(
        sent_total + state.residual["w"], dense_total, rtol=0, atol=1e-9
    )


def test_replies_the_mod_cannot_read_go_out_uncompressed() -> None:
    VirtualGrid(toy_client_app(), [DeviceProfile()])  # task identity
    config = ConfigRecord({SPARSE_REPLIES_KEY: True})
    msg = Message(
        RecordDict({"arrays": initial_arrays(), "config": config}), 1, MessageType.TRAIN
    )
    msg.metadata.__dict__["_message_id"] = "m3"
    reply = Message(RecordDict({"other": ConfigRecord({"a": 1})}), reply_to=msg)
    assert dgc_mod(old_cfg())(msg, _context(), lambda m, c: reply) is reply


def test_full_density_falls_back_to_dense_when_smaller() -> None:
    cfg = old_cfg(density=1.0, warmup=(), min_sparse_size=1)
    compressed, _ = compress(
        {"w": RNG.normal(size=2000).astype(np.float32)}, DGCState(), cfg
    )
    assert not is_sparse(compressed.arrays["w"])


def test_global_selection_sends_the_largest_entries_of_all_large_tensors() -> None:
    delta = {
        "a": RNG.normal(scale=10.0, size=3000).astype(np.float32),
        "b": RNG.normal(scale=0.1, size=7000).astype(np.float32),
        "bias": RNG.normal(size=8).astype(np.float32),
    }
    cfg = old_cfg(density=0.01, warmup=(), selection="global", min_sparse_size=64)
    compressed, state = compress(delta, DGCState(), cfg)
    sent = dense_of(compressed, delta)
    everything = np.abs(np.concatenate([delta["a"], delta["b"]]))
    threshold = np.sort(everything)[-100]
    assert np.count_nonzero(sent["a"]) + np.count_nonzero(sent["b"]) == 100
    assert np.count_nonzero(sent["b"]) <= 1  # a's entries are 100x larger
    assert np.abs(sent["a"][sent["a"] != 0]).min() >= threshold
    np.testing.assert_array_equal(sent["bias"], delta["bias"])  # small: in full
    for name in delta:  # what is not sent stays in the residual
        np.testing.assert_allclose(sent[name] + state.residual[name], delta[name])
    per_tensor, _ = compress(delta, DGCState(), old_cfg(density=0.01, warmup=()))
    assert per_tensor.sent_entries == 30 + 70 + 8 == compressed.sent_entries
    with pytest.raises(ValueError, match="selection"):
        DGCConfig(selection="layer")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 3000), min_size=1, max_size=4),
    st.floats(0.001, 1.0),
    st.sampled_from(["tensor", "global"]),
    st.sampled_from(["float32", "float16"]),
    st.integers(0, 2**31),
)
def test_nothing_is_lost_whatever_the_shapes_and_settings(
    sizes: list[int], density: float, selection: str, value_dtype: str, seed: int
) -> None:
    """Sent + residual = the deltas' sum, and every reply decodes, for any mix."""
    rng = np.random.default_rng(seed)
    cfg = old_cfg(
        density=density,
        selection=selection,
        value_dtype=value_dtype,
        min_sparse_size=100,
    )
    state = DGCState()
    sent_total = {f"t{i}": np.zeros(n) for i, n in enumerate(sizes)}
    dense_total = {f"t{i}": np.zeros(n) for i, n in enumerate(sizes)}
    for _ in range(3):
        delta = {
            f"t{i}": rng.normal(size=n).astype(np.float32) for i, n in enumerate(sizes)
        }
        compressed, state = compress(delta, state, cfg)
        assert list(compressed.arrays) == list(delta)
        for name, value in dense_of(compressed, delta).items():
            sent_total[name] += value
            dense_total[name] += delta[name]
    for name in sent_total:
        np.testing.assert_allclose(
            sent_total[name] + state.residual[name], dense_total[name], atol=1e-5
        )


# Negotiation (issue 15 item 4) -----------------------------------------------
def test_flowers_plain_fedavg_with_the_mod_gets_dense_replies_and_one_log_line() -> (
    None
):
    """No DecompressReplies: the server does not announce sparse replies, so the
    mod sends dense ones; FedAvg runs as without the mod (it used to crash with
    ``Unsupported serialization type ... 'flchain.sparse'``)."""
    plain = _run(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), None, 3)
    with FlowerLogLines(logging.WARNING) as log:
        modded = _run(
            FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
            dgc_mod(old_cfg(density=0.01, min_sparse_size=1)),
            3,
        )
    np.testing.assert_array_equal(
        modded.result.arrays["w"].numpy(), plain.result.arrays["w"].numpy()
    )
    assert modded.grid.totals()["bytes_up"] == plain.grid.totals()["bytes_up"]
    lines = [line for line in log.lines if "sent dense" in line]
    assert len(lines) == 1 and SPARSE_REPLIES_KEY in lines[0]


def test_a_server_that_announces_sparse_replies_gets_them_compressed() -> None:
    big = {"w": np.zeros(4000, np.float32)}
    from flwr.app import Array, ArrayRecord

    start = ArrayRecord({k: Array(v) for k, v in big.items()})
    sizes = {}
    for name, strategy in (
        ("fedavg", FedAvg(fraction_evaluate=0.0, min_available_nodes=3)),
        (
            "wrapped",
            DecompressReplies(FedAvg(fraction_evaluate=0.0, min_available_nodes=3)),
        ),
        ("fedbuff", FedBuff(buffer_size=3, fraction_evaluate=0.0)),
    ):
        app = toy_client_app(mods=[dgc_mod(DGCConfig(density=0.01))])
        grid = VirtualGrid(
            app, [DeviceProfile()] * 3, work_fn=constant_work(1.0), seed=1
        )
        simulate(strategy, grid, start, num_rounds=2)
        sizes[name] = grid.totals()["bytes_up"]
    assert sizes["fedavg"] >= 6 * 4000 * 4  # dense float32
    assert sizes["wrapped"] < sizes["fedavg"] / 20
    assert sizes["fedbuff"] < sizes["fedavg"] / 20


def test_bare_config_defaults_are_the_benchmarks_best_setting() -> None:
    cfg = DGCConfig()
    assert (cfg.density, cfg.momentum, cfg.masking, cfg.warmup) == (
        0.003,
        0.0,
        False,
        (),
    )
    assert (cfg.value_dtype, cfg.selection, cfg.accumulate) == (
        "float16",
        "global",
        True,
    )


@pytest.mark.parametrize("value_dtype", ["float32", "float16", "int8", "int4", "sign"])
def test_a_nan_step_goes_out_dense_once_then_the_tensor_recovers(
    value_dtype: str,
) -> None:
    # the residual once stayed NaN for good: quantized codes dropped the NaN
    # entries silently, float values were rejected every round after
    cfg = DGCConfig(density=0.01, value_dtype=value_dtype, momentum=0.5)
    rng = np.random.default_rng(1)
    state = DGCState()
    for r in range(4):
        delta = {
            "w": rng.standard_normal(10_000).astype(np.float32),
            "v": rng.standard_normal(5000).astype(np.float32),
        }
        if r == 0:
            delta["w"][123] = np.nan
        compressed, state = compress(delta, state, cfg)
        w, v = compressed.arrays["w"], compressed.arrays["v"]
        assert is_sparse(v)  # the other tensor is compressed as usual
        if r == 0:
            assert not is_sparse(w) and np.isnan(w.numpy()[123])
        else:
            sent = decode(w, shape=(10_000,), dtype=np.dtype("float32"))
            assert is_sparse(w) and np.isfinite(sent).all()
            assert np.count_nonzero(sent) > 0
        assert all(np.isfinite(x).all() for x in state.residual.values())
        assert all(np.isfinite(x).all() for x in state.momentum.values())


def test_a_nan_step_is_rejected_once_with_its_reason_then_the_node_counts() -> None:
    poisoned: list[int] = []

    def nan_once(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not poisoned:
            poisoned.append(context.node_id)
            arrays = reply.content["arrays"]
            w = arrays["w"].numpy().copy()
            w[0] = np.nan
            arrays["w"] = Array(w)
        return reply

    mod = dgc_mod(DGCConfig(density=0.3, value_dtype="int8", min_sparse_size=1))
    app = toy_client_app(mods=[mod, nan_once])
    grid = VirtualGrid(
        app, [DeviceProfile(speed=s) for s in (1.0, 0.7)], work_fn=constant_work(1.0)
    )
    result = FedBuff(buffer_size=1, staleness_fn=Constant()).start(
        grid, initial_arrays(), num_rounds=8, timeout=100.0
    )
    assert len(result.rejected) == 1 and "NaN" in result.rejected[0].reason
    assert result.rejected[0].node_id == poisoned[0]
    later = [v for v in result.versions if poisoned[0] in v.node_ids]
    assert later and np.isfinite(result.arrays["w"].numpy()).all()


def _dgc_reply(delta: dict[str, np.ndarray]) -> RecordDict:
    """What the DGC mod sends for ``delta`` (its compress step, 10 % density)."""
    compressed, _ = compress(delta, DGCState(), DGCConfig(density=0.1))
    return RecordDict(
        {
            "arrays": ArrayRecord(compressed.arrays),
            "metrics": MetricRecord({"num-examples": 10}),
            UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA}),
        }
    )


def test_the_dgc_mods_reply_for_a_batchnorm_counter_is_accepted() -> None:
    """PyTorch's BatchNorm ``num_batches_tracked`` is a 0-d int64 tensor: the
    mod once sent it with shape (1,) and the server refused every such reply."""
    reference = {
        "conv.weight": np.zeros((64, 64), np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    delta = {
        "conv.weight": np.random.default_rng(0)
        .normal(size=(64, 64))
        .astype(np.float32),
        "bn.num_batches_tracked": np.array(5, np.int64),
    }
    try:
        parse_update(_dgc_reply(delta), reference)
    except UpdateRejected as exc:  # pragma: no cover - the old defect
        raise AssertionError(f"honest DGC reply refused: {exc.reason}") from None


def test_the_dgc_mod_compresses_a_model_with_a_scalar_parameter() -> None:
    """A 0-d float parameter (e.g. CLIP's ``logit_scale``): sums of 0-d arrays
    are NumPy scalars, which Flower's ``Array`` refuses; they stay arrays."""
    reference = {
        "w": np.zeros((64, 64), np.float32),
        "logit_scale": np.array(1.0, np.float32),
    }
    delta = {
        "w": np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32),
        "logit_scale": np.array(0.01, np.float32),
    }
    parse_update(_dgc_reply(delta), reference)
    # with momentum and clipping, over rounds whose state goes through Context
    cfg = DGCConfig(density=0.1, momentum=0.9, clip_norm=0.5, min_sparse_size=1)
    stored = RecordDict()
    for _ in range(3):
        compressed, state = compress(delta, DGCState.load(stored), cfg)
        state.save(stored)
        assert compressed.arrays["logit_scale"].shape == ()

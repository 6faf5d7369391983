import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flchain_flwr.arrays import apply_step
from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_KEY
from flchain_flwr.strategies.updates import (
    UpdateRejected,
    parse_update,
    weighted_delta,
)

REF = {
    "w": np.array([1.0, 2.0, 3.0], dtype=np.float32),
    "n": np.array([5], dtype=np.int64),
}


def reply(arrays: dict[str, np.ndarray], n: object = 10, **extra: object) -> RecordDict:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n}),  # type: ignore[dict-item]
        }
    )
    for key, value in extra.items():
        content[key] = value  # type: ignore[assignment]
    return content


def test_full_weights_become_a_delta() -> None:
    got = parse_update(reply({"w": REF["w"] + 1, "n": REF["n"] + 2}), REF)
    np.testing.assert_array_equal(got.delta["w"], np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(got.delta["n"], [2])
    assert got.num_examples == 10.0
    assert got.kind == "weights"


def test_delta_replies_are_taken_as_is() -> None:
    info = ConfigRecord({UPDATE_KIND_KEY: "delta"})
    got = parse_update(
        reply({"w": REF["w"], "n": REF["n"]}, **{UPDATE_INFO_KEY: info}), REF
    )
    np.testing.assert_array_equal(got.delta["w"], REF["w"])
    assert got.kind == "delta"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (reply({"w": REF["w"]}), "missing arrays: ['n']"),
        (reply({**REF, "x": REF["w"]}), "unexpected arrays: ['x']"),
        (
            reply({"w": np.zeros(4, np.float32), "n": REF["n"]}),
            "has shape (4,), expected (3,)",
        ),
        (reply({"w": REF["w"].astype(np.float64), "n": REF["n"]}), "has dtype float64"),
        (
            reply({"w": np.array([1, np.nan, 3], np.float32), "n": REF["n"]}),
            "NaN or Inf",
        ),
        (
            reply({"w": np.array([1, np.inf, 3], np.float32), "n": REF["n"]}),
            "NaN or Inf",
        ),
        (reply(REF, n=0), "must be finite and > 0"),
        (reply(REF, n=-3.0), "must be finite and > 0"),
        (reply(REF, n=float("nan")), "must be finite and > 0"),
        (reply(REF, n=[1, 2]), "must be a number"),
        (RecordDict({"metrics": MetricRecord({"num-examples": 1})}), "no ArrayRecord"),
        (
            RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in REF.items()})}),
            "no MetricRecord with 'num-examples'",
        ),
        (
            reply(
                REF, **{UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: "gradient"})}
            ),
            "unknown update kind 'gradient'",
        ),
    ],
)
def test_bad_replies_are_rejected_with_a_reason(
    content: RecordDict, reason: str
) -> None:
    with pytest.raises(UpdateRejected) as info:
        parse_update(content, REF)
    assert reason in info.value.reason


def test_truncated_array_bytes_are_rejected() -> None:
    content = reply(REF)
    content["arrays"]["w"].data = content["arrays"]["w"].data[:-3]
    with pytest.raises(UpdateRejected, match="array 'w' cannot be decoded"):
        parse_update(content, REF)


def test_two_array_records_without_the_key_are_ambiguous() -> None:
    content = RecordDict(
        {
            "a": ArrayRecord({k: Array(v) for k, v in REF.items()}),
            "b": ArrayRecord({k: Array(v) for k, v in REF.items()}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    with pytest.raises(UpdateRejected, match="2 ArrayRecords"):
        parse_update(content, REF)


def test_weighted_delta_divides_by_total_examples_not_by_total_weight() -> None:
    deltas = [{"w": np.array([1.0])}, {"w": np.array([3.0])}]
    got = weighted_delta(deltas, [1.0, 3.0], [1.0, 0.5])
    # (1*1*1 + 0.5*3*3) / 4
    assert got["w"][0] == pytest.approx(5.5 / 4)


@settings(max_examples=50)
@given(
    hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(-100, 100, width=32)),
    st.lists(st.floats(0.1, 1000), min_size=1, max_size=5),
)
def test_constant_weight_aggregate_equals_weighted_mean(
    base: np.ndarray, ns: list[float]
) -> None:
    rng = np.random.default_rng(0)
    models = [base + rng.normal(size=base.shape).astype(np.float32) for _ in ns]
    deltas = [{"x": m - base} for m in models]
    step = weighted_delta(deltas, ns, [1.0] * len(ns))
    new = apply_step({"x": base}, step, 1.0)["x"]
    expected = sum(
        n * m.astype(np.float64) for n, m in zip(ns, models, strict=True)
    ) / sum(ns)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-4)


def test_apply_step_keeps_dtypes_and_rounds_integers() -> None:
    out = apply_step(REF, {"w": np.ones(3), "n": np.array([0.6])}, 1.0)
    assert out["w"].dtype == np.float32
    assert out["n"].dtype == np.int64
    assert out["n"][0] == 6


def test_integer_and_bool_arrays_do_not_wrap_or_crash() -> None:
    ref = {"u": np.array([5], np.uint8), "m": np.array([False])}
    got = parse_update(
        reply({"u": np.array([3], np.uint8), "m": np.array([True])}), ref
    )
    assert got.delta["u"][0] == -2.0 and got.delta["m"][0] == 1.0
    new = apply_step(ref, weighted_delta([got.delta], [1.0], [1.0]), 1.0)
    assert new["u"][0] == 3 and new["u"].dtype == np.uint8 and bool(new["m"][0])


def test_finite_replies_whose_delta_overflows_are_rejected() -> None:
    ref = {"f": np.array([-3e38], np.float32)}
    with pytest.raises(UpdateRejected, match="overflows"):
        parse_update(reply({"f": np.array([3e38], np.float32)}), ref)


def test_non_numeric_arrays_are_rejected() -> None:
    ref = {"s": np.array(["a"])}
    with pytest.raises(UpdateRejected, match="non-numeric dtype"):
        parse_update(reply({"s": np.array(["b"])}), ref)

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flchain_flwr.arrays import apply_step
from flchain_flwr.ledger.canonical import update_digest
from flchain_flwr.protocol import TRAINED_ON_KEY, UPDATE_INFO_KEY, UPDATE_KIND_KEY
from flchain_flwr.strategies.metrics import (
    aggregate_metrics,
    bounded_metrics,
    parse_evaluate_reply,
)
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


# ----------------------------------------------------------- huge integers
@pytest.mark.parametrize(
    "n", [10**400, -(10**400), 10**5000], ids=["e400", "-e400", "e5000"]
)
def test_an_integer_beyond_float_range_is_rejected_not_an_overflow(n: int) -> None:
    with pytest.raises(UpdateRejected, match="must be finite and > 0") as info:
        parse_update(reply(REF, n=n), REF)
    assert "bits" in info.value.reason and len(info.value.reason) < 200


def test_a_huge_trained_on_version_gets_a_printable_reason() -> None:
    info = ConfigRecord({TRAINED_ON_KEY: 10**5000})
    with pytest.raises(UpdateRejected, match="an integer of 16610 bits"):
        parse_update(reply(REF, **{UPDATE_INFO_KEY: info}), REF, trained_on=3)


# ------------------------------------------------------ evaluate replies
def evaluate_reply(**metrics: object) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(metrics)})  # type: ignore[arg-type]


def test_a_valid_evaluate_reply_gives_its_metric_record() -> None:
    content = evaluate_reply(**{"num-examples": 40, "loss": 0.5, "acc": [0.9, 0.8]})
    record = parse_evaluate_reply(content, "num-examples")
    assert record is content["metrics"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (evaluate_reply(**{"num-examples": -39, "loss": 1000.0}), "finite and > 0"),
        (evaluate_reply(**{"num-examples": 0, "loss": 1.0}), "finite and > 0"),
        (evaluate_reply(**{"num-examples": 10**400}), "finite and > 0"),
        (evaluate_reply(loss=1.0), "no 'num-examples'"),
        (evaluate_reply(**{"num-examples": 5, "loss": float("nan")}), "not finite"),
        (evaluate_reply(**{"num-examples": 5, "loss": -float("inf")}), "not finite"),
        (evaluate_reply(**{"num-examples": 5, "big": 10**400}), "not finite"),
        (evaluate_reply(**{"num-examples": 5, "l": [1.0, float("nan")]}), "not finite"),
        (evaluate_reply(**{"num-examples": 5, "l": [0.0] * 2000}), "max_list_length"),
        (
            evaluate_reply(**{"num-examples": 5, **{f"k{i}": 1.0 for i in range(70)}}),
            "max_keys",
        ),
        (
            RecordDict(
                {
                    "a": MetricRecord({"num-examples": 5}),
                    "b": MetricRecord({"loss": 1.0}),
                }
            ),
            "carries 2 MetricRecords",
        ),
        (RecordDict({"c": ConfigRecord({"num-examples": 5})}), "carries 0"),
    ],
)
def test_bad_evaluate_replies_are_rejected_with_a_reason(
    content: RecordDict, reason: str
) -> None:
    with pytest.raises(UpdateRejected) as info:
        parse_evaluate_reply(content, "num-examples")
    assert reason in info.value.reason


def test_a_negative_count_no_longer_makes_the_federated_loss_negative() -> None:
    replies = [
        evaluate_reply(**{"num-examples": 100, "loss": 0.4}),
        evaluate_reply(**{"num-examples": 100, "loss": 0.6}),
        evaluate_reply(**{"num-examples": -39, "loss": 1000.0}),
    ]
    # all three together: (40 + 60 - 39000) / 161 = -241.6
    assert aggregate_metricrecords(replies, "num-examples")["loss"] < 0
    valid = []
    for content in replies:
        try:
            parse_evaluate_reply(content, "num-examples")
        except UpdateRejected:
            continue
        valid.append(content)
    assert aggregate_metrics(valid, "num-examples")["loss"] == pytest.approx(0.5)


# ------------------------------------------------------ metric aggregation
metric_values = st.one_of(
    st.floats(-1e6, 1e6),
    st.integers(-(10**6), 10**6),
    st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.integers(1, 10**6), st.floats(1e-3, 1e6)), min_size=1),
    st.data(),
)
def test_with_every_key_present_the_numbers_are_flowers(
    weights: list[float], data: st.DataObject
) -> None:
    keys = data.draw(st.lists(st.sampled_from("abcd"), min_size=1, unique=True))
    forms = {k: data.draw(metric_values) for k in keys}  # one form per key
    contents = []
    for w in weights:
        values: dict[str, object] = {"num-examples": w}
        for key, form in forms.items():
            values[key] = data.draw(
                st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3)
                if isinstance(form, list)
                else metric_values.filter(lambda v: not isinstance(v, list))
            )
        contents.append(RecordDict({"m": MetricRecord(values)}))  # type: ignore[arg-type]
    ours = aggregate_metrics(contents, "num-examples")
    theirs = aggregate_metricrecords(contents, "num-examples")
    assert dict(ours) == dict(theirs)  # exactly, not approximately


def test_a_key_missing_from_one_reply_is_averaged_over_the_others() -> None:
    contents = [
        evaluate_reply(**{"num-examples": 1, "loss": 1.0, "acc": 0.5}),
        evaluate_reply(**{"num-examples": 3, "loss": 3.0}),
    ]
    got = aggregate_metrics(contents, "num-examples")
    assert got["loss"] == pytest.approx(2.5)
    assert got["acc"] == pytest.approx(0.5)  # not 0.5 * 1/4
    assert "num-examples" not in got


def test_a_key_in_two_forms_is_left_out_and_the_rest_kept() -> None:
    contents = [
        evaluate_reply(**{"num-examples": 1, "loss": 1.0, "hist": [1.0, 2.0]}),
        evaluate_reply(**{"num-examples": 1, "loss": 3.0, "hist": [1.0]}),
    ]
    with pytest.raises(ValueError):  # Flower's aggregate drops the whole version
        aggregate_metricrecords(contents, "num-examples")
    got = aggregate_metrics(contents, "num-examples")
    assert dict(got) == {"loss": 2.0}


def test_unusable_weights_and_values_are_skipped_not_propagated() -> None:
    contents = [
        evaluate_reply(**{"num-examples": 2, "loss": 1.0, "acc": float("nan")}),
        evaluate_reply(**{"num-examples": 2, "loss": 3.0, "acc": 0.5}),
        evaluate_reply(**{"num-examples": float("inf"), "loss": 99.0}),
        evaluate_reply(**{"num-examples": 10**400, "loss": 99.0}),
        evaluate_reply(loss=99.0),
    ]
    got = aggregate_metrics(contents, "num-examples")
    assert dict(got) == {"loss": 2.0, "acc": 0.5}
    assert dict(aggregate_metrics([], "num-examples")) == {}


def test_given_weights_replace_the_claimed_counts() -> None:
    contents = [
        evaluate_reply(**{"num-examples": 10**12, "loss": 10.0}),
        evaluate_reply(**{"num-examples": 100, "loss": 0.0}),
    ]
    got = aggregate_metrics(contents, "num-examples", weights=[100.0, 100.0])
    assert got["loss"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="1 weights for 2 replies"):
        aggregate_metrics(contents, "num-examples", weights=[1.0])


# ------------------------------------------------------ bounded metrics
def test_bounded_metrics_truncates_with_one_reason_per_cause() -> None:
    record = MetricRecord({f"k{i}": float(i) for i in range(100)})
    record["num-examples"] = 5  # last, but kept
    record["hist"] = [0.0] * 5000
    content = RecordDict({"m": record, "arrays": ArrayRecord()})
    got = bounded_metrics(content, max_keys=10, keep=("num-examples",))
    kept = got.records["m"]
    assert list(kept) == [*(f"k{i}" for i in range(10)), "num-examples"]
    assert list(got.records) == ["m"]  # only MetricRecords
    assert len(got.dropped) == 2
    assert "dropped 90 keys beyond max_keys=10 (first: 'k10')" in got.dropped
    assert any("lists longer than max_list_length" in r for r in got.dropped)


def test_bounded_metrics_counts_bytes_and_can_reject() -> None:
    metrics = {"a": MetricRecord({"x": [1.0] * 1000, "y": [2.0] * 1000})}
    got = bounded_metrics(metrics, max_bytes=10_000)
    assert list(got.records["a"]) == ["x"]
    assert got.dropped == ("dropped 1 keys beyond max_bytes=10000 (first: 'y')",)
    with pytest.raises(UpdateRejected, match="metric 'y' in 'a': over max_bytes"):
        bounded_metrics(metrics, max_bytes=10_000, truncate=False)
    huge = {"a": MetricRecord({"n": 10**5000})}  # 2 kB of integer
    assert bounded_metrics(huge, max_bytes=1_000).dropped
    assert not bounded_metrics(metrics).dropped


# ------------------------------------------------------------ reply digests
def ordinary_reply() -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.arange(3, dtype=np.float32))}),
            "metrics": MetricRecord(
                {
                    "num-examples": 12,
                    "loss": 0.25,
                    "max": 2**64 - 1,  # the widest integers Flower's wire carries
                    "min": -(2**63),
                    "hist": [1, 2],
                }
            ),
            "flchain": ConfigRecord({"update-kind": "delta", "ok": True, "b": b"xy"}),
        }
    )


def test_the_digest_of_an_ordinary_reply_is_unchanged() -> None:
    # computed with update_digest as of commit bdd605d
    expected = "8ebf0441071f88dccbff01cca08e5d7aae128ed3dc242c25f9d7a3444fe3f9d9"
    assert update_digest(ordinary_reply()) == expected


@pytest.mark.parametrize("where", ["metric", "metric-list", "config"])
def test_a_5000_digit_integer_has_a_digest(where: str) -> None:
    content = ordinary_reply()
    huge = 10**5000
    if where == "metric":
        content["metrics"]["loss"] = huge
    elif where == "metric-list":
        content["metrics"]["hist"] = [1, huge]
    else:
        content["flchain"]["step"] = -huge
    first = update_digest(content)
    assert len(first) == 64 and first != update_digest(ordinary_reply())
    if where == "metric":
        content["metrics"]["loss"] = huge + 1
        assert update_digest(content) != first  # still covers the exact value
        content["metrics"]["loss"] = 2**64  # just past the wire: tagged, distinct
        assert update_digest(content) != update_digest(ordinary_reply())

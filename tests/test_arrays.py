from fractions import Fraction
from io import BytesIO

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from flchain_flwr.arrays import apply_step, saturating_add, to_arrayrecord, to_ndarrays

INT64 = np.iinfo(np.int64)
UINT64 = np.iinfo(np.uint64)


# ------------------------------------------------------------------ apply_step
def test_int64_extremes_do_not_wrap() -> None:
    model = {"x": np.array([INT64.max, INT64.min, INT64.max - 2], np.int64)}
    # with the float bound 2**63, a zero step turned INT64_MAX into INT64_MIN
    out = apply_step(model, {"x": np.array([0.0, 0.0, 1e30])}, 1.0)["x"]
    assert out.dtype == np.int64
    assert out.tolist() == [INT64.max, INT64.min, INT64.max]
    down = apply_step(model, {"x": np.array([-1e30, -5.0, -np.inf])}, 1.0)["x"]
    assert down.tolist() == [INT64.min, INT64.min, INT64.min]


def test_uint64_extremes_saturate_exactly() -> None:
    model = {"x": np.array([UINT64.max, 0, 7], np.uint64)}
    out = apply_step(model, {"x": np.array([0.0, -1.0, np.inf])}, 1.0)["x"]
    assert out.dtype == np.uint64
    assert out.tolist() == [UINT64.max, 0, UINT64.max]
    assert apply_step(model, {"x": np.array([1.0, 1e25, -8.0])}, 1.0)["x"].tolist() == [
        UINT64.max,
        UINT64.max,
        0,
    ]


def test_large_int64_values_move_exactly() -> None:
    big = 2**62 + 1  # not a float64: the old float path rounded it to 2**62
    model = {"x": np.array([big, -big], np.int64)}
    assert apply_step(model, {"x": np.zeros(2)}, 1.0)["x"].tolist() == [big, -big]
    assert apply_step(model, {"x": np.array([2.0, -3.0])}, 1.0)["x"].tolist() == [
        big + 2,
        -big - 3,
    ]


def test_int8_saturates_and_rounds_half_to_even() -> None:
    model = {"x": np.array([120, -120, 3, 4, 3], np.int8)}
    step = {"x": np.array([100.0, -100.0, 0.5, 0.5, -0.5])}
    out = apply_step(model, step, 1.0)["x"]
    assert out.dtype == np.int8
    assert out.tolist() == [127, -128, 4, 4, 2]  # rint(3.5)=4, rint(4.5)=4, 2.5->2


def test_bool_arrays_stay_bool() -> None:
    model = {"m": np.array([True, False, True, False])}
    out = apply_step(model, {"m": np.array([-1.0, 0.7, 5.0, -3.0])}, 1.0)["m"]
    assert out.dtype == np.bool_
    assert out.tolist() == [False, True, True, False]


def test_a_nan_step_on_an_integer_array_is_an_error() -> None:
    with pytest.raises(ValueError, match="holds NaN"):
        apply_step({"n": np.array([1], np.int64)}, {"n": np.array([np.nan])}, 1.0)


def test_shapes_survive_a_step_including_0_dim() -> None:
    model = {
        "s": np.array(1.5, np.float32),
        "n": np.array(3, np.int64),
        "b": np.array(True),
        "e": np.zeros((0, 4), np.float32),
    }
    step = {k: np.ones(v.shape) for k, v in model.items()}
    out = apply_step(model, step, 0.5)
    for name, value in model.items():
        assert isinstance(out[name], np.ndarray)
        assert out[name].shape == value.shape and out[name].dtype == value.dtype
    assert out["s"] == np.float32(2.0) and out["n"] == 4  # rint(3.5) = 4


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64]),
    st.data(),
)
def test_integer_steps_are_the_exactly_rounded_saturated_sum(
    dtype: type[np.integer], data: st.DataObject
) -> None:
    info = np.iinfo(dtype)
    values = data.draw(
        st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=6)
    )
    steps = data.draw(
        st.lists(
            st.one_of(
                st.floats(-1e20, 1e20),
                st.integers(-(2**70), 2**70).map(float),
                st.integers(-50, 50).map(lambda k: k + 0.5),
            ),
            min_size=len(values),
            max_size=len(values),
        )
    )
    out = apply_step({"x": np.array(values, dtype)}, {"x": np.array(steps)}, 1.0)["x"]
    expected = [
        min(max(round(Fraction(v) + Fraction(s)), int(info.min)), int(info.max))
        for v, s in zip(values, steps, strict=True)
    ]
    assert out.dtype == dtype
    assert [int(v) for v in out] == expected


def test_saturating_add_broadcasts_a_scalar_increment() -> None:
    out = saturating_add(np.array([[1, 2], [3, 4]], np.int16), np.array(40000.0))
    assert out.shape == (2, 2) and (out == np.iinfo(np.int16).max).all()


# ---------------------------------------------------- ArrayRecord round trips
ROUND_TRIP = {
    "scalar-f32": np.array(1.25, np.float32),
    "scalar-i64": np.array(7, np.int64),  # e.g. PyTorch's num_batches_tracked
    "scalar-bool": np.array(False),
    "strided": np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2],
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "empty": np.zeros((0, 3), np.float32),
    "empty-1d": np.array([], np.uint8),
    "big-endian": np.arange(3, dtype=">f4"),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_arrayrecord_round_trip_keeps_shape_dtype_and_values(name: str) -> None:
    value = ROUND_TRIP[name]
    record = to_arrayrecord({name: value})
    assert tuple(record[name].shape) == value.shape
    back = to_ndarrays(record)[name]
    assert back.shape == value.shape
    assert back.dtype == value.dtype
    np.testing.assert_array_equal(back, value)
    assert back.flags.c_contiguous


def test_equal_arrays_encode_to_equal_bytes_whatever_their_layout() -> None:
    c_order = np.arange(6, dtype=np.float32).reshape(2, 3)
    f_order = np.asfortranarray(c_order)
    a = to_arrayrecord({"x": c_order})["x"]
    b = to_arrayrecord({"x": f_order})["x"]
    assert a.data == b.data


def test_scalars_keep_their_shape_over_many_versions() -> None:
    model = {"n": np.array(0, np.int64), "v": np.array(1.0, np.float32)}
    for _ in range(3):
        model = to_ndarrays(
            to_arrayrecord(
                apply_step(model, {"n": np.array(1.0), "v": np.array(0.5)}, 1.0)
            )
        )
    assert model["n"].shape == () and model["v"].shape == ()
    assert int(model["n"]) == 3 and float(model["v"]) == 2.5


def test_to_ndarrays_rejects_an_array_whose_bytes_disagree_with_its_header() -> None:
    buffer = BytesIO()
    np.save(buffer, np.zeros(2, np.float32), allow_pickle=False)
    forged = Array(
        dtype="float32", shape=(3,), stype="numpy.ndarray", data=buffer.getvalue()
    )
    with pytest.raises(ValueError, match="declares float32"):
        to_ndarrays(ArrayRecord({"w": forged}))

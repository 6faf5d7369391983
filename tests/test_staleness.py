import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flchain_flwr.strategies import (
    Constant,
    FedBuffStaleness,
    Hinge,
    Polynomial,
    staleness_fn,
)


def test_known_values() -> None:
    assert Constant()(7) == 1.0
    assert Polynomial(a=0.5)(3) == pytest.approx(0.5)
    assert Polynomial(a=1.0)(0) == 1.0
    assert FedBuffStaleness()(3) == pytest.approx(0.5)
    assert FedBuffStaleness()(0) == 1.0
    hinge = Hinge(a=10.0, b=4)
    assert hinge(4) == 1.0
    assert hinge(5) == pytest.approx(1 / 11)
    assert hinge(6) == pytest.approx(1 / 21)


@given(st.integers(min_value=0, max_value=10_000))
def test_weights_are_in_unit_interval_and_non_increasing(s: int) -> None:
    for fn in (
        Constant(),
        Polynomial(0.5),
        Polynomial(2.0),
        Hinge(10, 4),
        FedBuffStaleness(),
    ):
        w, w_next = fn(s), fn(s + 1)
        assert 0.0 < w <= 1.0
        assert w_next <= w


def test_negative_staleness_is_an_error() -> None:
    for fn in (Constant(), Polynomial(), Hinge(), FedBuffStaleness()):
        with pytest.raises(ValueError, match="staleness"):
            fn(-1)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        Polynomial(a=-1)
    with pytest.raises(ValueError):
        Hinge(a=-1, b=0)


def test_by_name() -> None:
    assert staleness_fn("fedbuff")(8) == pytest.approx(1 / 3)
    assert staleness_fn("hinge", a=1.0, b=2.0)(4) == pytest.approx(1 / 3)
    assert staleness_fn("polynomial", a=1.0)(1) == pytest.approx(0.5)
    assert math.isclose(staleness_fn("constant")(100), 1.0)
    with pytest.raises(ValueError, match="unknown staleness function 'linear'"):
        staleness_fn("linear")

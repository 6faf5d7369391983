"""Numbers in policy specs and CLI arguments are read in ASCII digits only:
``int()``/``float()`` alone take other scripts' digits, underscores and
spaces, so a spec would parse back from text it was not written as."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest

from flchain_flwr.cli_common import height, natural
from flchain_flwr.numbertext import decimal_integer, decimal_number
from flchain_flwr.strategies.bafl import bafl_local_work
from flchain_flwr.strategies.fairness import fairness_weighting
from flchain_flwr.strategies.fedsa import fedsa_learning_rate
from flchain_flwr.strategies.memory import update_memory
from flchain_flwr.strategies.nova import work_normalisation
from flchain_flwr.strategies.staleness import staleness_from_repr
from flchain_flwr.strategies.tuning import buffer_tuning
from flchain_flwr.strategies.weighting import example_weighting

ARABIC_FOUR = "\u0664"  # ARABIC-INDIC DIGIT FOUR: int() reads it as 4

PARSERS: dict[str, Callable[[str], Any]] = {
    "fedsa": lambda s: fedsa_learning_rate(s, 0.05),
    "bafl": lambda s: bafl_local_work(s, 3, "local-steps"),
    "fairness": fairness_weighting,
    "nova": work_normalisation,
    "memory": update_memory,
    "tuning": buffer_tuning,
    "weighting": example_weighting,
    "staleness": staleness_from_repr,
}


@pytest.mark.parametrize(
    ("parser", "good", "other_spellings"),
    [
        ("fedsa", "fedsa:0.5:2", ["fedsa:0.5:" + ARABIC_FOUR, "fedsa:0.5: 2"]),
        ("bafl", "bafl:0.25:4", ["bafl:0.25:" + ARABIC_FOUR, "bafl:0.2_5:4"]),
        ("fairness", "inverse:4", ["inverse:" + ARABIC_FOUR, "inverse:4_0"]),
        ("nova", "fednova:2", ["fednova:" + ARABIC_FOUR, "fednova: 2"]),
        ("memory", "mifa:12", ["mifa:1" + ARABIC_FOUR, "mifa:1_2", "mifa: 12"]),
        ("tuning", "staleness:2:1:10", ["staleness:2:1:1" + ARABIC_FOUR]),
        ("tuning", "staleness:2:1:10:1.5", ["staleness:2:1:10:1_5"]),
        ("weighting", "median:4:1000", ["median:4:100" + ARABIC_FOUR, "median:4_0"]),
        ("weighting", "capped:100", ["capped:1" + ARABIC_FOUR]),
        ("staleness", "Polynomial(a=0.5)", ["Polynomial(a=0.5_0)"]),
    ],
)
def test_a_spec_takes_its_numbers_in_ascii_digits_only(
    parser: str, good: str, other_spellings: list[str]
) -> None:
    parse = PARSERS[parser]
    assert parse(good) is not None
    for spec in other_spellings:
        with pytest.raises(ValueError, match="ASCII digits"):
            parse(spec)


@pytest.mark.parametrize("option", [height, natural])
def test_a_cli_integer_takes_ascii_digits_only(
    option: Callable[[str], int],
) -> None:
    assert option("12") == 12
    for text in ["1" + ARABIC_FOUR, "1_2", " 12", "\u00b2"]:
        with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
            option(text)


def test_the_readers_take_what_the_project_writes() -> None:
    for text in ["0", "12", "-3", "+7"]:
        assert decimal_integer(text) == int(text)
    for text in ["1", "1.5", "-0.25", ".5", "5.", "1e-308", "1e+308", "2.5E3"]:
        assert decimal_number(text) == float(text)
    assert decimal_number("inf") == float("inf")
    for text in ["", "+", "1.5.2", "0x10", "infinity", "1e", "e5", "1 "]:
        with pytest.raises(ValueError, match="ASCII digits"):
            decimal_number(text)

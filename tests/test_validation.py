"""The shared setting checks: every refusal names the setting and value."""

import math

import numpy as np
import pytest

from keras_tempered_dp.validation import (
    check_choice,
    check_number,
    check_type,
)


@pytest.mark.parametrize("value, kwargs, message", [
    (True, dict(integer=True), "epochs=True: must be an integer."),
    (False, {}, "epochs=False: must be a number."),
    ("3", {}, "epochs='3': must be a number."),
    (2.5, dict(integer=True), "epochs=2.5: must be an integer."),
    (math.nan, {}, "epochs=nan: must be finite."),
    (math.inf, dict(low=0), "epochs=inf: must be finite."),
    (0, dict(low=1, integer=True), "epochs=0: must be >= 1."),
    (0.0, dict(low=0, low_open=True), "epochs=0.0: must be > 0."),
    (1.5, dict(high=1), "epochs=1.5: must be <= 1."),
    (None, {}, "epochs=None: must be a number."),
])
def test_bad_numbers_are_named(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        check_number("epochs", value, **kwargs)
    assert str(error.value) == message


def test_good_numbers_come_back_as_python_numbers():
    assert check_number("n", np.int64(3), integer=True, low=1) == 3
    assert type(check_number("n", np.int64(3), integer=True)) is int
    assert type(check_number("x", np.float32(0.5), low=0)) is float
    assert check_number("x", 1, low=0, low_open=True, high=1) == 1.0
    assert check_number("x", None, allow_none=True) is None


def test_choices():
    assert check_choice("sampling", "poisson", ("poisson", "shuffle")) == \
        "poisson"
    with pytest.raises(ValueError, match=r"^sampling='fixed': must be one "
                       r"of poisson, shuffle\.$"):
        check_choice("sampling", "fixed", ("poisson", "shuffle"))


def test_a_bool_is_a_choice_only_where_one_is_listed():
    assert check_choice("verbose", 1, (0, 1, 2)) == 1
    with pytest.raises(ValueError, match=r"^verbose=True: must be one of"):
        check_choice("verbose", True, (0, 1, 2))
    assert check_choice("flag", True, (True, False)) is True


@pytest.mark.parametrize("value, kwargs, message", [
    (1.0, dict(low=0, high=1, high_open=True), "x=1.0: must be in [0, 1)."),
    (0.0, dict(low=0, high=1, low_open=True, high_open=True),
     "x=0.0: must be in (0, 1)."),
    (1, dict(high=1, high_open=True), "x=1: must be < 1."),
    (0.001, dict(low=0, high=1e-3, low_open=True, high_open=True),
     "x=0.001: must be in (0, 0.001)."),
])
def test_ranges_read_as_intervals(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        check_number("x", value, **kwargs)
    assert str(error.value) == message


def test_hints_and_none_are_part_of_the_message():
    with pytest.raises(ValueError) as error:
        check_number("clip", "1", allow_none=True, hint="E.g. clip=1.0.")
    assert str(error.value) == \
        "clip='1': must be a number or None. E.g. clip=1.0."


def test_a_wrong_type_is_a_type_error():
    assert check_type("n", None, int, "an int", allow_none=True) is None
    with pytest.raises(TypeError, match=r"^n='3': must be an int\.$"):
        check_type("n", "3", int, "an int")

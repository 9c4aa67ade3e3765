"""The shared setting checks: every refusal names the setting and value."""

import math

import numpy as np
import pytest

from keras_tempered_dp.validation import check_choice, check_number


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

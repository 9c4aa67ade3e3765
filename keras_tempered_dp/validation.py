"""Checks of settings, each error naming the setting and its bad value.

One place for the package's number and choice checks, so that every setting
is refused the same way, before anything runs:

    name=value: must be <what it must be>.

``bool`` is refused where a number is asked for (``True`` is an ``int`` in
Python, and ``epochs=True`` is never meant), and a real number must be
finite.

Example:

>>> check_number("epochs", 3, low=1, integer=True)
3
>>> check_number("delta", 0.0, low=0, low_open=True)
Traceback (most recent call last):
...
ValueError: delta=0.0: must be > 0.
>>> check_choice("sampling", "poisson", ("poisson", "shuffle"))
'poisson'
"""

import math
import numbers


def check_number(name, value, *, low=None, high=None, integer=False,
                 low_open=False, allow_none=False):
    """Returns ``value`` as an ``int`` (``integer=True``) or a ``float``.

    Refuses, naming ``name``: a bool or a non-number; a non-integral value
    where ``integer``; a non-finite real; ``value < low`` (``<= low`` where
    ``low_open``); ``value > high``. ``None`` passes where ``allow_none``.
    """
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name}={value!r}: must be "
                         f"{'an integer' if integer else 'a number'}.")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be finite.")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name}={value!r}: must be "
                         f"{'>' if low_open else '>='} {low}.")
    if high is not None and value > high:
        raise ValueError(f"{name}={value!r}: must be <= {high}.")
    return int(value) if integer else float(value)


def check_choice(name, value, choices):
    """Returns ``value`` if it is one of ``choices``; else names them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of "
                         f"{', '.join(map(str, choices))}.")
    return value

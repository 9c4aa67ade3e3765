"""Checks of settings, each error naming the setting and its bad value.

The one place for the package's number and choice checks, so that every
setting is refused the same way, before anything runs:

    name=value: must be <what it must be>. <optional hint>

``bool`` is refused where a number is asked for (``True`` is an ``int`` in
Python, and ``epochs=True`` is never meant), and a real number must be
finite. A range with both ends reads as an interval, ``[0, 1)``; with one
end, as ``>= 1`` or ``> 0``.

Example:

>>> check_number("epochs", 3, low=1, integer=True)
3
>>> check_number("delta", 0.0, low=0, low_open=True)
Traceback (most recent call last):
...
ValueError: delta=0.0: must be > 0.
>>> check_number("momentum", 1.0, low=0, high=1, high_open=True,
...              hint="1 never forgets a gradient.")
Traceback (most recent call last):
...
ValueError: momentum=1.0: must be in [0, 1). 1 never forgets a gradient.
>>> check_choice("sampling", "poisson", ("poisson", "shuffle"))
'poisson'
"""

import math
import numbers


def _show(bound):
    """A bound as the error shows it: ``1``, ``0.5``, ``0.001``."""
    if float(bound).is_integer():
        return str(int(bound))
    return f"{bound:.3g}"


def _range(low, high, low_open, high_open):
    if low is not None and high is not None:
        return (f"in {'(' if low_open else '['}{_show(low)}, "
                f"{_show(high)}{')' if high_open else ']'}")
    if low is not None:
        return f"{'>' if low_open else '>='} {_show(low)}"
    return f"{'<' if high_open else '<='} {_show(high)}"


def _refuse(name, value, must, hint, allow_none=False, error=ValueError):
    none = " or None" if allow_none else ""
    raise error(f"{name}={value!r}: must be {must}{none}."
                + (f" {hint}" if hint else ""))


def check_number(name, value, *, low=None, high=None, integer=False,
                 low_open=False, high_open=False, allow_none=False,
                 hint=None):
    """Returns ``value`` as an ``int`` (``integer=True``) or a ``float``.

    Refuses, naming ``name``: a bool or a non-number; a non-integral value
    where ``integer``; a non-finite real; ``value < low`` (``<= low`` where
    ``low_open``); ``value > high`` (``>= high`` where ``high_open``).
    ``None`` passes where ``allow_none``. ``hint``, a sentence, ends every
    refusal (what the setting means, a usual value).
    """
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        _refuse(name, value, "an integer" if integer else "a number", hint,
                allow_none)
    if not integer and not math.isfinite(value):
        _refuse(name, value, "finite", hint)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open
                                  else value > high)
    if below or above:
        _refuse(name, value, _range(low, high, low_open, high_open), hint)
    return int(value) if integer else float(value)


def check_choice(name, value, choices, *, hint=None):
    """Returns ``value`` if it is one of ``choices``; else names them.

    A bool is one only where ``choices`` holds it (``True == 1`` would
    otherwise pass for the choice 1)."""
    found = value in choices and (not isinstance(value, bool)
                                  or any(c is value for c in choices))
    if not found:
        _refuse(name, value,
                f"one of {', '.join(map(str, choices))}", hint)
    return value


def check_type(name, value, kind, what, *, allow_none=False, hint=None):
    """Returns ``value`` if it is an instance of ``kind``; else a
    ``TypeError`` (``what`` names the type: "an EngineOptions")."""
    if value is None and allow_none:
        return None
    if not isinstance(value, kind):
        _refuse(name, value, what, hint, allow_none, error=TypeError)
    return value

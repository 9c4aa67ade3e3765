"""Checks of what every bound takes: canary scores, inclusion bits, counts,
the ``delta`` of the claims tested and the confidence of the bound.

Scores are a 1-D array of finite reals, higher meaning "more likely
included"; inclusion bits a 1-D boolean (or 0/1) array, one per score.
A count (of canaries, guesses, trials) is an integer, ``delta`` is in
``[0, 1)`` and ``confidence`` in ``(0, 1)``; all three are refused by
:func:`keras_tempered_dp.validation.check_number`, the package's one number
check.
"""

import numpy as np

from keras_tempered_dp.validation import check_number


def check_count(name, value, what, example, low=0):
    """``value``, the number of ``what``, as an int >= ``low``; a refusal
    says what it counts, e.g. ``m=0: must be >= 1. The number of canaries,
    e.g. m=1000.``"""
    return check_number(name, value, low=low, integer=True,
                        hint=f"The number of {what}, e.g. {name}={example}.")


def check_delta(delta):
    """``delta`` as a float in ``[0, 1)``."""
    return check_number("delta", delta, low=0, high=1, high_open=True,
                        hint="E.g. delta=1e-5.")


def check_confidence(confidence):
    """``confidence`` as a float in ``(0, 1)``."""
    return check_number("confidence", confidence, low=0, high=1,
                        low_open=True, high_open=True,
                        hint="E.g. confidence=0.95.")


def check_scores(name, scores):
    """``scores`` as a 1-D float array, non-empty and finite."""
    try:
        arr = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: must be a 1-D array of real numbers.") from None
    if arr.ndim != 1:
        raise ValueError(
            f"{name}: must be 1-D, got shape {arr.shape}; flatten it first.")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty; pass at least one score.")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{i}]={arr[i]}: scores must be finite; drop or clip "
            "NaN/inf scores first.")
    return arr


def check_included(included, m):
    """``included`` as a 1-D boolean array of length ``m``."""
    arr = np.asarray(included)
    if arr.ndim != 1:
        raise ValueError(
            f"included: must be 1-D, got shape {arr.shape}.")
    if arr.shape[0] != m:
        raise ValueError(
            f"included: has length {arr.shape[0]} but scores has length "
            f"{m}; pass one inclusion bit per score.")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(
                (arr == 0) | (arr == 1)):
            raise ValueError(
                "included: must be boolean (or 0/1), e.g. "
                "included=np.array([True, False]).")
        arr = arr.astype(bool)
    return arr


def check_scores_and_included(scores, included):
    """The scores and their inclusion bits, checked as above."""
    scores = check_scores("scores", scores)
    return scores, check_included(included, scores.shape[0])

r"""The one-run audit from scores: guesses on the top and bottom scores,
counted and tested with :mod:`.one_run_bound`.

The auditor ranks the ``m`` canaries by score, guesses "in" for the
``k_plus`` highest and "out" for the ``k_minus`` lowest (``r = k_plus +
k_minus`` guesses, ``v`` of them right) and abstains on the rest. Each
``(k_plus, k_minus)`` of a grid fixed before any data is seen is tested at
confidence ``1 - (1 - confidence) / len(grid)`` (Bonferroni); the maximum
bound is valid at ``confidence`` overall (Steinke, Nasr & Jagielski 2023).

Differences from jax_privacy, both on the conservative side: guesses are a
small fixed grid of symmetric (top, bottom) splits with Bonferroni over the
grid instead of one-sided guesses over every threshold; tied scores are
broken by a seeded random permutation.

Reference: :mod:`.one_run_bound`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_tempered_dp.audit.inputs import (
    check_confidence,
    check_count,
    check_delta,
    check_scores_and_included,
)
from keras_tempered_dp.audit.one_run_bound import one_run_epsilon_lower_bound
from keras_tempered_dp.validation import check_number

# Fractions of the m canaries the one-run auditor guesses on (half "in" on
# the top scores, half "out" on the bottom). Fixed here, before any data is
# seen, so that the Bonferroni correction over them is honest.
DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

# Seed of the tie-breaking permutation: fixed and independent of the
# inclusion bits, so a random tie-break is a legitimate part of the guess.
_TIE_BREAK_SEED = 0

_PAIR_HINT = "E.g. guesses=[(50, 50), (100, 100)]."


@dataclasses.dataclass(frozen=True)
class OneRunAudit:
    """Result of :func:`one_run_audit`.

    Attributes:
        epsilon: The lower bound on epsilon (max over the guess grid, each
            candidate at its Bonferroni-corrected confidence).
        confidence: The overall confidence level of the bound.
        delta: The delta of the (epsilon, delta) claims tested.
        m: Number of canaries.
        guesses: Guesses ``r`` of the maximizing candidate.
        correct: Correct guesses ``v`` of the maximizing candidate.
    """

    epsilon: float
    confidence: float
    delta: float
    m: int
    guesses: int
    correct: int


def default_guess_grid(m):
    """The fixed (k_plus, k_minus) grid :func:`one_run_audit` uses by default.

    For each fraction ``f`` in ``DEFAULT_GUESS_FRACTIONS`` (5%, 10%, 25%, 50%
    and 100% of the canaries), ``r = max(1, floor(f * m))`` guesses: the
    ``r - r // 2`` highest scores guessed "in", the ``r // 2`` lowest guessed
    "out". Duplicates (small ``m``) are dropped. It depends on ``m`` only.

    Args:
        m: Number of canaries, >= 1.

    Returns:
        A tuple of ``(k_plus, k_minus)`` pairs.

    Raises:
        ValueError: If ``m`` is not a positive integer.

    Example:
        >>> default_guess_grid(100)
        ((3, 2), (5, 5), (13, 12), (25, 25), (50, 50))
    """
    m = check_count("m", m, "canaries", 1000, low=1)
    grid = []
    for f in DEFAULT_GUESS_FRACTIONS:
        r = max(1, int(math.floor(f * m)))
        pair = (r - r // 2, r // 2)
        if pair not in grid:
            grid.append(pair)
    return tuple(grid)


def _check_guess_grid(guesses, m):
    try:
        pairs = [tuple(p) for p in guesses]
    except TypeError:
        raise ValueError(
            f"guesses={guesses!r}: must be a sequence of (k_plus, k_minus) "
            "pairs, e.g. [(50, 50), (100, 100)].") from None
    if not pairs:
        raise ValueError(
            "guesses=[]: is empty; pass at least one (k_plus, k_minus) pair "
            "or None for the default grid.")
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(
                f"guesses: entry {pair!r} must be a (k_plus, k_minus) pair.")
        kp = check_number("guesses k_plus", pair[0], low=0, integer=True,
                          hint=_PAIR_HINT)
        km = check_number("guesses k_minus", pair[1], low=0, integer=True,
                          hint=_PAIR_HINT)
        if not 1 <= kp + km <= m:
            raise ValueError(
                f"guesses: entry {pair!r} makes {kp + km} guesses; need "
                f"between 1 and m={m}.")
        out.append((kp, km))
    return out


def one_run_audit(scores, included, *, delta, confidence=0.95, guesses=None):
    r"""One-run lower bound on epsilon from canary scores and inclusion bits.

    The auditor ranks canaries by score (ties broken by a fixed seeded random
    permutation, which does not depend on the inclusion bits), guesses "in"
    for the ``k_plus`` highest and "out" for the ``k_minus`` lowest, and
    abstains on the rest. Each ``(k_plus, k_minus)`` in a grid fixed before
    seeing the data is tested with :func:`one_run_epsilon_lower_bound` at
    confidence ``1 - (1 - confidence) / len(grid)`` (Bonferroni); the bound
    is the maximum, valid at ``confidence`` overall.

    Valid only if every canary was included independently with probability
    1/2 and the scores are computed from the training output alone (not from
    the inclusion bits).

    Args:
        scores: 1-D array of finite scores; higher means "more likely in".
        included: 1-D boolean array, the secret inclusion bits.
        delta: The delta of the (epsilon, delta) claims tested, in [0, 1).
        confidence: Overall confidence level in (0, 1).
        guesses: Sequence of ``(k_plus, k_minus)`` pairs, fixed in advance;
            ``None`` uses :func:`default_guess_grid`.

    Returns:
        A :class:`OneRunAudit`.

    Raises:
        ValueError: On empty or mismatched inputs, non-finite scores, or
            invalid ``delta``, ``confidence`` or ``guesses``.

    Example:
        >>> import numpy as np
        >>> bits = np.arange(1000) % 2 == 0
        >>> result = one_run_audit(bits.astype(float), bits, delta=0.0)
        >>> result.guesses, result.correct, round(result.epsilon, 2)
        (1000, 1000, 5.38)
    """
    scores, included = check_scores_and_included(scores, included)
    delta = check_delta(delta)
    confidence = check_confidence(confidence)
    m = scores.shape[0]
    grid = (default_guess_grid(m) if guesses is None
            else _check_guess_grid(guesses, m))
    per_test = 1.0 - (1.0 - confidence) / len(grid)

    tie_break = np.random.default_rng(_TIE_BREAK_SEED).random(m)
    order = np.lexsort((tie_break, scores))  # ascending score
    ranked_in = included[order]
    best = None
    for k_plus, k_minus in grid:
        v = int(ranked_in[m - k_plus:].sum() if k_plus else 0)
        v += int((~ranked_in[:k_minus]).sum())
        r = k_plus + k_minus
        eps = one_run_epsilon_lower_bound(m, r, v, delta, per_test)
        if best is None or eps > best[0]:
            best = (eps, r, v)
    return OneRunAudit(epsilon=best[0], confidence=confidence, delta=delta,
                       m=m, guesses=best[1], correct=best[2])

r"""The one-run test: a p-value for "(eps, delta)-DP" from guess counts, and
the largest epsilon it rejects.

**One run** (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023, Algorithm/Appendix D). ``m`` canaries are each
included independently with probability 1/2; from the output alone the
auditor guesses "in" or "out" for ``r`` of them (abstaining on ``m - r``) and
``v`` guesses are right. If the training run is (eps, delta)-DP with respect
to every canary, then with ``q = 1 / (1 + e^-eps)`` and ``X ~ Binomial(r, q)``

.. math::

    P[\text{correct} \ge v] \le \beta + 2 m \delta \alpha, \quad
    \beta = P[X \ge v], \quad
    \alpha = \max_{1 \le i \le v} \frac{1}{i} \sum_{j=1}^{i} P[X = v - j],

so ``p = min(1, beta + 2 m delta alpha)`` is a p-value for (eps, delta)-DP.
The lower bound is the largest eps whose p-value is below ``1 - confidence``
(found by bisection; the value returned is always one that is rejected).
This is a proof about the single run that was audited.

The p-value is the paper's Appendix D code (also ``jax_privacy.auditing``).
A difference from jax_privacy, on the conservative side: the bisection
returns the rejected end rather than a root-finder's root.

From scores to the counts ``(m, r, v)``: :mod:`.one_run`.

References:
    T. Steinke, M. Nasr, M. Jagielski. Privacy Auditing with One (1) Training
    Run. NeurIPS 2023. arXiv:2305.08846.
"""

import numpy as np
import scipy.special
import scipy.stats

from keras_tempered_dp.audit.inputs import (
    check_confidence,
    check_count,
    check_delta,
)
from keras_tempered_dp.validation import check_number

_BISECTION_STEPS = 50


def _p_value(m, r, v, epsilon, delta):
    # Validated inputs; see one_run_p_value for the formula.
    q = scipy.special.expit(epsilon)  # 1 / (1 + e^-eps) without overflow
    beta = float(scipy.stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, beta)
    # pmf at v-1, v-2, ..., 0; partial sums over j = 1..i, divided by i.
    pmf = scipy.stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_p_value(m, r, v, epsilon, delta):
    r"""P-value of the claim "(epsilon, delta)-DP" from a one-run audit.

    Steinke, Nasr & Jagielski (2023), Appendix D. With ``q = 1/(1+e^-eps)``
    and ``X ~ Binomial(r, q)``:

    ``beta = P[X >= v]``,
    ``alpha = max_{i=1..v} (1/i) * sum_{j=1..i} P[X = v - j]``,
    ``p = min(1, beta + alpha * delta * 2 * m)``.

    Valid when each of the ``m`` canaries was included independently with
    probability 1/2 and the guesses are a function of the training output
    (and of randomness independent of the inclusion bits) only.

    Args:
        m: Number of canaries (each included with probability 1/2).
        r: Number of guesses made (the auditor abstains on ``m - r``).
        v: Number of correct guesses.
        epsilon: The epsilon of the null hypothesis, finite and >= 0.
        delta: The delta of the null hypothesis, in [0, 1).

    Returns:
        The p-value, a float in [0, 1]. Small values reject the claim.

    Raises:
        ValueError: If not ``0 <= v <= r <= m``, or ``epsilon``/``delta`` is
            out of range.

    Example:
        >>> round(one_run_p_value(m=10, r=10, v=10, epsilon=1.0, delta=0.0), 4)
        0.0436
    """
    m, r, v = _check_one_run_counts(m, r, v)
    epsilon = check_number("epsilon", epsilon, low=0,
                           hint="E.g. epsilon=1.0.")
    return _p_value(m, r, v, epsilon, check_delta(delta))


def _check_one_run_counts(m, r, v):
    """``(m, r, v)`` as ints with ``0 <= v <= r <= m`` and ``m >= 1``."""
    m = check_count("m", m, "canaries", 1000, low=1)
    r = check_count("r", r, "guesses", 100)
    v = check_count("v", v, "correct guesses", 90)
    if r > m:
        raise ValueError(f"r={r}: cannot exceed the number of canaries m={m}.")
    if v > r:
        raise ValueError(
            f"v={v}: correct guesses cannot exceed the guesses r={r}.")
    return m, r, v


def one_run_epsilon_lower_bound(m, r, v, delta, confidence=0.95):
    r"""Largest epsilon rejected by the one-run audit at ``1 - confidence``.

    Bisection as in Steinke, Nasr & Jagielski (2023), Appendix D: keep
    ``p(lo) < 1 - confidence <= p(hi)``, double ``hi`` until it is not
    rejected, then bisect 50 times and return ``lo``, a value that *is*
    rejected (so the result errs low, never high).

    The p-value is non-decreasing in epsilon when ``2 m delta <= 1`` (each
    ``beta + 2 m delta * alpha_i`` has derivative in q at least
    ``r b(v-1) (1 - 2 m delta / i) >= 0``, with ``b`` the Binomial(r-1, q)
    pmf), so then every epsilon below the result is rejected too. For
    larger ``2 m delta`` this is not guaranteed, and the result is further
    lowered to stay below the first non-rejected point of a 256-step grid on
    ``[0, lo]``.

    Args:
        m: Number of canaries.
        r: Number of guesses.
        v: Number of correct guesses.
        delta: The delta of the claims tested, in [0, 1).
        confidence: Confidence level in (0, 1).

    Returns:
        A float epsilon >= 0; 0.0 when even epsilon = 0 is not rejected.

    Raises:
        ValueError: If the counts, ``delta`` or ``confidence`` are invalid.

    Example:
        >>> round(one_run_epsilon_lower_bound(10, 10, 10, delta=0.0), 4)
        1.0519
    """
    m, r, v = _check_one_run_counts(m, r, v)
    delta = check_delta(delta)
    level = 1.0 - check_confidence(confidence)
    if _p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    # Terminates: as eps grows q -> 1, so beta -> 1 >= level (v <= r).
    while _p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, 2.0 * hi
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    if 2 * m * delta > 1 and lo > 0:
        # Monotonicity not proven here: stay below any grid point that is
        # not rejected.
        grid = np.linspace(0.0, lo, 257)
        for prev, eps in zip(grid[:-1], grid[1:]):
            if _p_value(m, r, v, float(eps), delta) >= level:
                return float(prev)
    return float(lo)

r"""Empirical lower bounds on epsilon from canary audit scores.

An audit inserts canaries, trains, scores each canary (higher score means
"more likely included") and turns the scores into a statistical test of the
claim "the training run is (epsilon, delta)-DP". Every epsilon the test
rejects at level ``1 - confidence`` is a lower bound on the true epsilon, with
probability at least ``confidence`` over the randomness of the audit. The
functions here are deliberately conservative: a bound that is too high claims
leakage that was not shown, and that is the one error an audit must not make.

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

**Many runs / fixed threshold** (Jagielski, Ullman & Oprea 2020; Nasr et al.
2021). Predict "in" when ``score > threshold``. (eps, delta)-DP applied to the
events "predicted in" and "predicted out" gives ``TPR <= e^eps FPR + delta``
and ``TNR <= e^eps FNR + delta``, hence

.. math::

    \varepsilon \ge \max\Bigl(\log\frac{1 - \delta - \overline{FNR}}
    {\overline{FPR}},\ \log\frac{1 - \delta - \overline{FPR}}
    {\overline{FNR}},\ 0\Bigr),

where the bars are one-sided Clopper-Pearson upper bounds at level
``(1 - confidence) / 2`` each (union bound). The rates are binomial
proportions only when every score comes from its own independent training
run; applied to many canaries of one run it is the usual heuristic, not a
proof.

The p-value is the paper's Appendix D code (also ``jax_privacy.auditing``).
Differences from jax_privacy, all on the conservative side: the bisection
returns the rejected end rather than a root-finder's root; guesses are a
small fixed grid of symmetric (top, bottom) splits with Bonferroni over the
grid instead of one-sided guesses over every threshold; tied scores are
broken by a seeded random permutation.

References:
    T. Steinke, M. Nasr, M. Jagielski. Privacy Auditing with One (1) Training
    Run. NeurIPS 2023. arXiv:2305.08846.
    M. Jagielski, J. Ullman, A. Oprea. Auditing Differentially Private Machine
    Learning: How Private is Private SGD? NeurIPS 2020. arXiv:2006.07709.
    M. Nasr, S. Song, A. Thakurta, N. Papernot, N. Carlini. Adversary
    Instantiation: Lower Bounds for Differentially Private Machine Learning.
    IEEE S&P 2021. arXiv:2101.04535.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import numpy as np
import scipy.special
import scipy.stats

__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "HeldOutThresholdAudit",
    "OneRunAudit",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "default_guess_grid",
    "held_out_threshold_audit",
    "membership_inference_summary",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "threshold_epsilon_lower_bound",
]

# Fractions of the m canaries the one-run auditor guesses on (half "in" on
# the top scores, half "out" on the bottom). Fixed here, before any data is
# seen, so that the Bonferroni correction over them is honest.
DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

# Seed of the tie-breaking permutation: fixed and independent of the
# inclusion bits, so a random tie-break is a legitimate part of the guess.
_TIE_BREAK_SEED = 0

_BISECTION_STEPS = 50


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _check_int(name, value, minimum=0):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r}: must be an integer, not a bool.")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name}={value!r}: must be an integer, e.g. {name}=10.") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}.")
    return value


def _check_real(name, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: must be a real number.") from None


def _check_epsilon(epsilon):
    epsilon = _check_real("epsilon", epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(
            f"epsilon={epsilon}: must be finite and >= 0, e.g. 1.0.")
    return epsilon


def _check_delta(delta):
    delta = _check_real("delta", delta)
    if not 0 <= delta < 1:
        raise ValueError(f"delta={delta}: must be in [0, 1), e.g. 1e-5.")
    return delta


def _check_confidence(confidence):
    confidence = _check_real("confidence", confidence)
    if not 0 < confidence < 1:
        raise ValueError(
            f"confidence={confidence}: must be in (0, 1), e.g. 0.95.")
    return confidence


def _check_alpha(alpha):
    alpha = _check_real("alpha", alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: must be in (0, 1), e.g. 0.025.")
    return alpha


def _check_scores(name, scores):
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


def _check_included(included, m):
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


def _check_scores_and_included(scores, included):
    scores = _check_scores("scores", scores)
    return scores, _check_included(included, scores.shape[0])


# --------------------------------------------------------------------------
# One-run audit (Steinke, Nasr & Jagielski 2023)
# --------------------------------------------------------------------------

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
    return _p_value(m, r, v, _check_epsilon(epsilon), _check_delta(delta))


def _check_one_run_counts(m, r, v):
    m = _check_int("m", m, minimum=1)
    r = _check_int("r", r)
    v = _check_int("v", v)
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
    delta = _check_delta(delta)
    level = 1.0 - _check_confidence(confidence)
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
    m = _check_int("m", m, minimum=1)
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
        kp = _check_int("guesses k_plus", pair[0])
        km = _check_int("guesses k_minus", pair[1])
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
    scores, included = _check_scores_and_included(scores, included)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
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


# --------------------------------------------------------------------------
# Clopper-Pearson and the fixed-threshold (many-run) bound
# --------------------------------------------------------------------------

def _check_binomial_counts(k, n):
    n = _check_int("n", n, minimum=1)
    k = _check_int("k", k)
    if k > n:
        raise ValueError(f"k={k}: successes cannot exceed trials n={n}.")
    return k, n


def clopper_pearson_upper(k, n, alpha):
    r"""One-sided Clopper-Pearson upper confidence bound on a proportion.

    ``U = BetaInv(1 - alpha; k + 1, n - k)`` for ``k < n`` and ``U = 1`` for
    ``k = n``; ``P[p <= U] >= 1 - alpha`` for every true proportion ``p``.

    Args:
        k: Number of successes, ``0 <= k <= n``.
        n: Number of trials, >= 1.
        alpha: Allowed failure probability in (0, 1).

    Returns:
        The upper bound, a float in (0, 1].

    Raises:
        ValueError: If the counts or ``alpha`` are invalid.

    Example:
        >>> round(clopper_pearson_upper(0, 10, 0.05), 4)  # 1 - 0.05 ** 0.1
        0.2589
    """
    k, n = _check_binomial_counts(k, n)
    alpha = _check_alpha(alpha)
    if k == n:
        return 1.0
    return float(scipy.stats.beta.ppf(1 - alpha, k + 1, n - k))


def clopper_pearson_lower(k, n, alpha):
    r"""One-sided Clopper-Pearson lower confidence bound on a proportion.

    ``L = BetaInv(alpha; k, n - k + 1)`` for ``k > 0`` and ``L = 0`` for
    ``k = 0``; ``P[p >= L] >= 1 - alpha``.

    Args:
        k: Number of successes, ``0 <= k <= n``.
        n: Number of trials, >= 1.
        alpha: Allowed failure probability in (0, 1).

    Returns:
        The lower bound, a float in [0, 1).

    Raises:
        ValueError: If the counts or ``alpha`` are invalid.

    Example:
        >>> round(clopper_pearson_lower(10, 10, 0.05), 4)  # 0.05 ** 0.1
        0.7411
    """
    k, n = _check_binomial_counts(k, n)
    alpha = _check_alpha(alpha)
    if k == 0:
        return 0.0
    return float(scipy.stats.beta.ppf(alpha, k, n - k + 1))


def _eps_from_rate_bounds(fpr_u, fnr_u, delta):
    # max(log((1-delta-FNR_u)/FPR_u), log((1-delta-FPR_u)/FNR_u), 0);
    # a non-positive numerator gives no evidence (0). Works on arrays.
    fpr_u = np.asarray(fpr_u, dtype=float)
    fnr_u = np.asarray(fnr_u, dtype=float)
    num_a = 1.0 - delta - fnr_u
    num_b = 1.0 - delta - fpr_u
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where((num_a > 0) & (fpr_u > 0),
                     np.log(np.maximum(num_a, 1e-300) / fpr_u), 0.0)
        b = np.where((num_b > 0) & (fnr_u > 0),
                     np.log(np.maximum(num_b, 1e-300) / fnr_u), 0.0)
    return np.maximum(np.maximum(a, b), 0.0)


def threshold_epsilon_lower_bound(scores_in, scores_out, threshold, *,
                                  delta, confidence=0.95):
    r"""Many-run lower bound on epsilon for a threshold fixed in advance.

    Predict "in" when ``score > threshold``. ``FPR`` is the fraction of
    ``scores_out`` above the threshold, ``FNR`` the fraction of
    ``scores_in`` at or below it. With one-sided Clopper-Pearson upper
    bounds ``FPR_u``, ``FNR_u`` at ``alpha = (1 - confidence) / 2`` each:

    ``eps >= max(log((1 - delta - FNR_u) / FPR_u),
    log((1 - delta - FPR_u) / FNR_u), 0)``,

    a log of a non-positive number counting as 0.

    Statistically valid when each score comes from its own independent
    training run (and the threshold does not depend on these scores); on
    many canaries of one run it is a heuristic.

    Args:
        scores_in: 1-D finite scores of canaries that were included.
        scores_out: 1-D finite scores of canaries that were not.
        threshold: The decision threshold, chosen without these scores.
        delta: The delta of the claims tested, in [0, 1).
        confidence: Confidence level in (0, 1).

    Returns:
        A float epsilon >= 0.

    Raises:
        ValueError: On empty or non-finite scores, a NaN threshold, or
            invalid ``delta`` or ``confidence``.

    Example:
        >>> eps = threshold_epsilon_lower_bound(
        ...     [1.0] * 100, [0.0] * 100, 0.5, delta=0.0)
        >>> round(eps, 4)  # log((1 - u) / u) with u = 1 - 0.025 ** 0.01
        3.2813
    """
    scores_in = _check_scores("scores_in", scores_in)
    scores_out = _check_scores("scores_out", scores_out)
    threshold = _check_real("threshold", threshold)
    if math.isnan(threshold):
        raise ValueError("threshold=nan: must be a number, e.g. 0.5.")
    delta = _check_delta(delta)
    alpha = (1.0 - _check_confidence(confidence)) / 2.0
    fp = int(np.sum(scores_out > threshold))
    fn = int(np.sum(scores_in <= threshold))
    fpr_u = clopper_pearson_upper(fp, scores_out.size, alpha)
    fnr_u = clopper_pearson_upper(fn, scores_in.size, alpha)
    return float(_eps_from_rate_bounds(fpr_u, fnr_u, delta))


@dataclasses.dataclass(frozen=True)
class HeldOutThresholdAudit:
    """Result of :func:`held_out_threshold_audit`.

    Attributes:
        epsilon: The lower bound on epsilon from the held-out half.
        confidence: Its confidence level.
        delta: The delta of the claims tested.
        threshold: The threshold chosen on the first half.
        n_in: Included canaries in the held-out half.
        n_out: Excluded canaries in the held-out half.
        false_positives: Held-out excluded canaries scored above threshold.
        false_negatives: Held-out included canaries scored at or below it.
    """

    epsilon: float
    confidence: float
    delta: float
    threshold: float
    n_in: int
    n_out: int
    false_positives: int
    false_negatives: int


def _best_threshold(scores_in, scores_out, delta, confidence):
    # Every observed score as a threshold; pick the best CP bound.
    alpha = (1.0 - confidence) / 2.0
    thresholds = np.unique(np.concatenate([scores_in, scores_out]))
    s_in, s_out = np.sort(scores_in), np.sort(scores_out)
    fn = np.searchsorted(s_in, thresholds, side="right")
    fp = s_out.size - np.searchsorted(s_out, thresholds, side="right")

    def upper(k, n):
        with np.errstate(invalid="ignore"):
            u = scipy.stats.beta.ppf(1 - alpha, k + 1, n - k)
        return np.where(k >= n, 1.0, u)

    eps = _eps_from_rate_bounds(upper(fp, s_out.size), upper(fn, s_in.size),
                                delta)
    return float(thresholds[int(np.argmax(eps))])


def held_out_threshold_audit(scores, included, *, delta, confidence=0.95,
                             seed=None):
    r"""Threshold chosen on one random half, bound computed on the other.

    The canaries are split uniformly at random into halves (seeded by
    ``seed``). On the first half every observed score is tried as a
    threshold and the one with the largest Clopper-Pearson bound (see
    :func:`threshold_epsilon_lower_bound`) is kept; the bound reported is
    :func:`threshold_epsilon_lower_bound` on the second half only, so the
    choice costs no multiple-testing correction.

    Validity: this is a proof when each canary's score comes from an
    independent training run (the many-run setting of Jagielski et al. 2020
    and Nasr et al. 2021). Applied to many canaries of ONE run the scores
    are not independent trials and this is the usual heuristic, not a
    proof; :func:`one_run_audit` is the bound that is proven for one run.

    Args:
        scores: 1-D array of finite scores; higher means "more likely in".
        included: 1-D boolean array of inclusion bits.
        delta: The delta of the claims tested, in [0, 1).
        confidence: Confidence level in (0, 1).
        seed: Seed of the split; ``None`` draws it from OS entropy.

    Returns:
        A :class:`HeldOutThresholdAudit`.

    Raises:
        ValueError: On invalid inputs, or if either half lacks included or
            excluded canaries.

    Example:
        >>> import numpy as np
        >>> bits = np.arange(400) % 2 == 0
        >>> result = held_out_threshold_audit(
        ...     bits.astype(float), bits, delta=0.0, seed=0)
        >>> result.false_positives, result.false_negatives
        (0, 0)
        >>> result.epsilon > 3
        True
    """
    scores, included = _check_scores_and_included(scores, included)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    m = scores.shape[0]
    perm = np.random.default_rng(seed).permutation(m)
    first, second = perm[: m // 2], perm[m // 2:]
    for name, half in (("first", first), ("second", second)):
        n_in = int(included[half].sum())
        if n_in == 0 or n_in == half.size:
            raise ValueError(
                f"included: the {name} random half has {n_in} included "
                f"canaries out of {half.size}; each half needs both included "
                "and excluded canaries; use more canaries.")
    threshold = _best_threshold(scores[first][included[first]],
                                scores[first][~included[first]],
                                delta, confidence)
    held_in = scores[second][included[second]]
    held_out = scores[second][~included[second]]
    eps = threshold_epsilon_lower_bound(held_in, held_out, threshold,
                                        delta=delta, confidence=confidence)
    return HeldOutThresholdAudit(
        epsilon=eps, confidence=confidence, delta=delta, threshold=threshold,
        n_in=int(held_in.size), n_out=int(held_out.size),
        false_positives=int(np.sum(held_out > threshold)),
        false_negatives=int(np.sum(held_in <= threshold)))


# --------------------------------------------------------------------------
# Summary statistics (descriptive, no confidence)
# --------------------------------------------------------------------------

def membership_inference_summary(scores, included):
    r"""ROC AUC and low-FPR true-positive rates of a membership attack.

    Higher score means predicted member. ``auc`` is the Mann-Whitney
    statistic ``(R_in - n_in (n_in + 1) / 2) / (n_in n_out)`` with average
    ranks, so ties count 1/2. ``tpr_at_1pct_fpr`` (and at 0.1%) is the
    largest empirical TPR over the rules "in if score >= t" whose empirical
    FPR is <= 1% (0.1%); the rule predicting nothing (TPR 0) always counts.
    These are point estimates, not bounds.

    Args:
        scores: 1-D array of finite scores.
        included: 1-D boolean array of inclusion bits, both classes present.

    Returns:
        A dict with keys ``"auc"``, ``"tpr_at_1pct_fpr"`` and
        ``"tpr_at_0.1pct_fpr"``.

    Raises:
        ValueError: On invalid inputs or if a class is missing.

    Example:
        >>> summary = membership_inference_summary(
        ...     [0.9, 0.8, 0.3, 0.1], [True, False, True, False])
        >>> summary["auc"]
        0.75
    """
    scores, included = _check_scores_and_included(scores, included)
    n_in = int(included.sum())
    n_out = included.size - n_in
    if n_in == 0 or n_out == 0:
        raise ValueError(
            f"included: has {n_in} included and {n_out} excluded canaries; "
            "both classes are needed.")
    ranks = scipy.stats.rankdata(scores)  # average ranks for ties
    auc = (ranks[included].sum() - n_in * (n_in + 1) / 2.0) / (n_in * n_out)

    s_in, s_out = np.sort(scores[included]), np.sort(scores[~included])
    thresholds = np.unique(scores)
    tpr = (n_in - np.searchsorted(s_in, thresholds, side="left")) / n_in
    fpr = (n_out - np.searchsorted(s_out, thresholds, side="left")) / n_out

    def tpr_at(max_fpr):
        ok = fpr <= max_fpr
        return float(tpr[ok].max()) if ok.any() else 0.0

    return {"auc": float(auc), "tpr_at_1pct_fpr": tpr_at(0.01),
            "tpr_at_0.1pct_fpr": tpr_at(0.001)}

r"""The threshold audit: a lower bound on epsilon from the error rates of the
rule "in if score > threshold", the threshold fixed in advance or chosen on
a held-out half.

**Many runs / fixed threshold** (Jagielski, Ullman & Oprea 2020; Nasr et al.
2021). Predict "in" when ``score > threshold``. (eps, delta)-DP applied to the
events "predicted in" and "predicted out" gives ``TPR <= e^eps FPR + delta``
and ``TNR <= e^eps FNR + delta``, hence

.. math::

    \varepsilon \ge \max\Bigl(\log\frac{1 - \delta - \overline{FNR}}
    {\overline{FPR}},\ \log\frac{1 - \delta - \overline{FPR}}
    {\overline{FNR}},\ 0\Bigr),

where the bars are one-sided Clopper-Pearson upper bounds
(:mod:`.clopper_pearson`) at level ``(1 - confidence) / 2`` each (union
bound). The rates are binomial proportions only when every score comes from
its own independent training run; applied to many canaries of one run it is
the usual heuristic, not a proof (:mod:`.one_run` is the bound proven for one
run).

References:
    M. Jagielski, J. Ullman, A. Oprea. Auditing Differentially Private Machine
    Learning: How Private is Private SGD? NeurIPS 2020. arXiv:2006.07709.
    M. Nasr, S. Song, A. Thakurta, N. Papernot, N. Carlini. Adversary
    Instantiation: Lower Bounds for Differentially Private Machine Learning.
    IEEE S&P 2021. arXiv:2101.04535.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.stats

from keras_tempered_dp.audit.clopper_pearson import clopper_pearson_upper
from keras_tempered_dp.audit.inputs import (
    check_confidence,
    check_delta,
    check_scores,
    check_scores_and_included,
)
from keras_tempered_dp.validation import check_number


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
        ValueError: On empty or non-finite scores, a non-finite threshold,
            or invalid ``delta`` or ``confidence``.

    Example:
        >>> eps = threshold_epsilon_lower_bound(
        ...     [1.0] * 100, [0.0] * 100, 0.5, delta=0.0)
        >>> round(eps, 4)  # log((1 - u) / u) with u = 1 - 0.025 ** 0.01
        3.2813
    """
    scores_in = check_scores("scores_in", scores_in)
    scores_out = check_scores("scores_out", scores_out)
    threshold = check_number("threshold", threshold,
                             hint="E.g. threshold=0.5.")
    delta = check_delta(delta)
    alpha = (1.0 - check_confidence(confidence)) / 2.0
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


def _random_halves(included, seed):
    """The canaries' indices split uniformly at random into two halves,
    each of which must hold included and excluded canaries."""
    m = included.shape[0]
    perm = np.random.default_rng(seed).permutation(m)
    first, second = perm[: m // 2], perm[m // 2:]
    for name, half in (("first", first), ("second", second)):
        n_in = int(included[half].sum())
        if n_in == 0 or n_in == half.size:
            raise ValueError(
                f"included: the {name} random half has {n_in} included "
                f"canaries out of {half.size}; each half needs both included "
                "and excluded canaries; use more canaries.")
    return first, second


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
    proof; :func:`~keras_tempered_dp.audit.one_run_audit` is the bound that
    is proven for one run.

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
    scores, included = check_scores_and_included(scores, included)
    delta = check_delta(delta)
    confidence = check_confidence(confidence)
    first, second = _random_halves(included, seed)
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

r"""One-sided Clopper-Pearson confidence bounds on a binomial proportion.

With ``k`` successes in ``n`` trials, the exact (conservative) one-sided
bounds at failure probability ``alpha`` are Beta quantiles:

.. math::

    U = \mathrm{BetaInv}(1 - \alpha;\ k + 1,\ n - k)\ (k < n),\ U = 1\
    (k = n); \qquad
    L = \mathrm{BetaInv}(\alpha;\ k,\ n - k + 1)\ (k > 0),\ L = 0\ (k = 0),

so ``P[p <= U] >= 1 - alpha`` and ``P[p >= L] >= 1 - alpha`` for every true
proportion ``p``. The threshold audit (:mod:`.threshold`) bounds its false
positive and false negative rates with ``U``.
"""

import scipy.stats

from keras_tempered_dp.audit.inputs import check_count
from keras_tempered_dp.validation import check_number


def _check_binomial_counts(k, n):
    n = check_count("n", n, "trials", 100, low=1)
    k = check_count("k", k, "successes", 5)
    if k > n:
        raise ValueError(f"k={k}: successes cannot exceed trials n={n}.")
    return k, n


def _check_alpha(alpha):
    return check_number("alpha", alpha, low=0, high=1, low_open=True,
                        high_open=True, hint="E.g. alpha=0.025.")


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

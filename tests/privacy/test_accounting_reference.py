"""compute_epsilon against the Renyi divergence integrated numerically.

The reference needs no accounting library: for the Poisson-subsampled
Gaussian with sampling rate q and noise sigma, the RDP of order alpha is
(Mironov, Talwar, Zhang 2019)

    RDP(alpha) = log A_alpha / (alpha - 1),
    A_alpha = E_{z ~ N(0, sigma^2)} [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha],

integrated here on a fine grid in log space; T steps compose to
T * RDP(alpha), and epsilon is the smallest over the orders of the
conversion of Balle et al. 2020 (the one dp_accounting uses):

    eps = T * RDP(alpha) + log(1 - 1/alpha) - (log delta + log alpha) / (alpha - 1).

The package's epsilon may be above this (dp_accounting 0.6.0 bounds the
fractional-order series by its terms' absolute values) but never below:
an epsilon below the exact value would understate what a run spent.
"""

import math

import numpy as np
import pytest
from scipy import special

from keras_tempered_dp.privacy.accounting import RDP_ORDERS, compute_epsilon


def exact_log_a(q, sigma, alpha):
    """log A_alpha by the trapezoid rule over z (the integrand is smooth and
    Gaussian-like; its peak lies between 0 and alpha)."""
    z = np.linspace(-40 * sigma, alpha + 40 * sigma, 40_001)
    log_ratio = np.logaddexp(math.log1p(-q),
                             math.log(q) + (2 * z - 1) / (2 * sigma ** 2))
    log_f = (-z ** 2 / (2 * sigma ** 2) - math.log(sigma * math.sqrt(2 * math.pi))
             + alpha * log_ratio)
    weights = np.full(z.shape, z[1] - z[0])
    weights[[0, -1]] /= 2
    return float(special.logsumexp(log_f, b=weights))


def exact_epsilon(q, sigma, steps, delta):
    best = math.inf
    for alpha in RDP_ORDERS:
        rdp = steps * exact_log_a(q, sigma, alpha) / (alpha - 1)
        eps = (rdp + math.log1p(-1 / alpha)
               - (math.log(delta) + math.log(alpha)) / (alpha - 1))
        best = min(best, eps)
    return best


def test_reference_integral_is_exact_where_the_series_is_closed_form():
    # Integer alpha: A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k
    # exp((k^2 - k) / (2 sigma^2)), a finite sum.
    q, sigma, alpha = 0.04, 1.0, 6
    closed = math.log(sum(
        math.comb(alpha, k) * (1 - q) ** (alpha - k) * q ** k
        * math.exp((k * k - k) / (2 * sigma ** 2)) for k in range(alpha + 1)))
    assert exact_log_a(q, sigma, alpha) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("n, batch, sigma, epochs, delta", [
    (1400, 56, 1.0, 15, 1e-4),      # the README's quickstart
    (60000, 256, 1.1, 60, 1e-5),    # the paper's MNIST setting
    (60000, 2048, 2.08, 40, 1e-5),  # the Fashion-MNIST run
])
def test_epsilon_never_below_the_exact_value(n, batch, sigma, epochs, delta):
    ours = compute_epsilon(n, batch, sigma, steps=epochs * math.ceil(n / batch),
                           delta=delta)
    exact = exact_epsilon(batch / n, sigma, epochs * math.ceil(n / batch),
                          delta)
    assert ours >= exact * (1 - 1e-9)
    # And not loose: within 0.1% (dp_accounting 0.6.0 is ~0.04% above).
    assert ours <= exact * (1 + 1e-3)

"""The best-of-K accounting against three independent checks:

1. the paper's theorems written again here, as plainly as possible (a loop
   over orders, the DP conversion by its formula);
2. dp_accounting's RepeatAndSelectDpEvent (0.4.3 and 0.6.0, both stacks:
   the registry's reference; autodp's RDP_selection is on its GitHub
   only, not in autodp 0.2.3.1 on PyPI);
3. the exact Renyi divergences of best-of-K for a small discrete
   mechanism, computed by brute force: the bound is never below them.
"""

import itertools
import math

import numpy as np
import pytest

from keras_tempered_dp.privacy import selection
from keras_tempered_dp.privacy.accounting import RDP_ORDERS, one_step_rdp
from keras_tempered_dp.privacy.selection import (
    TrialCount,
    best_of_k_rdp,
    calibrate_trial_noise,
    composed_epsilon,
    epsilon_of_rdp,
    search_epsilon,
    trial_rdp,
)

LAWS = [TrialCount("truncated_negative_binomial", 5.0, 0.0),
        TrialCount("truncated_negative_binomial", 3.0, 1.0),
        TrialCount("truncated_negative_binomial", 10.0, 0.5),
        TrialCount("truncated_negative_binomial", 4.0, -0.5),
        TrialCount("poisson", 5.0),
        TrialCount("poisson", 1.0),
        TrialCount("poisson", 1.5)]


# -- 1. the theorems, written again ------------------------------------------

def reference_delta(orders, rdp, eps):
    """delta of (eps, delta)-DP from an RDP curve: the KL bound
    sqrt(1 - exp(-rdp)) and Canonne, Kamath & Steinke's Proposition 12,
    delta = exp((a-1)(rdp - eps)) (1 - 1/a)^a / (a - 1) ... in the form
    exp((a-1)(rdp - eps + log(1 - 1/a)) - log a); the best order."""
    best = 1.0
    for a, r in zip(orders, rdp):
        candidates = [math.sqrt(-math.expm1(-r))] if r > 0 else [0.0]
        if a > 1.01:
            candidates.append(math.exp(min(
                0.0, (a - 1) * (r - eps + math.log(1 - 1 / a)) - math.log(a))))
        best = min(best, *candidates)
    return best


def reference_bound(orders, rdp, law):
    """Theorem 2 (TNB) and Theorem 6 (Poisson) of Papernot & Steinke,
    order by order, then the smallest bound at any higher order."""
    out = []
    for i, lam in enumerate(orders):
        if law.distribution == "poisson":
            eps_hat = math.log(1 + 1 / (lam - 1))
            delta_hat = reference_delta(orders, rdp, eps_hat)
            out.append(rdp[i] + law.mean * delta_hat
                       + math.log(law.mean) / (lam - 1))
        else:
            g, eta = law.gamma, law.eta
            mean = (eta * (1 - g) / (g * (1 - g ** eta)) if eta != 0
                    else (1 - g) / (g * math.log(1 / g)))
            cost = min((1 + eta) * (1 - 1 / lh) * r
                       + (1 + eta) * math.log(1 / g) / lh
                       for lh, r in zip(orders, rdp))
            out.append(rdp[i] + cost + math.log(mean) / (lam - 1))
    return [min(out[i:]) for i in range(len(out))]


def dp_sgd_curve(q=0.02, sigma=1.2, steps=500):
    return steps * one_step_rdp(1000, int(q * 1000), sigma, "poisson")


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.describe())
def test_bound_is_the_theorems(law):
    rdp = dp_sgd_curve()
    ours = best_of_k_rdp(rdp, law)
    reference = reference_bound(RDP_ORDERS, list(rdp), law)
    np.testing.assert_allclose(ours, reference, rtol=1e-9)


def test_reference_delta_matches_dp_accounting_conversion():
    from dp_accounting.rdp import rdp_privacy_accountant
    rdp = dp_sgd_curve()
    for eps in (0.1, 0.5, 1.0, 3.0):
        ours, _ = rdp_privacy_accountant.compute_delta(RDP_ORDERS, rdp, eps)
        assert ours == pytest.approx(reference_delta(RDP_ORDERS, rdp, eps),
                                     rel=1e-9)


# -- the laws of K -----------------------------------------------------------

@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.describe())
def test_pmf_sums_to_one_and_has_the_stated_mean(law):
    ks = range(0, 3000)
    pmf = np.array([law.pmf(k) for k in ks])
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    assert (pmf * np.arange(len(pmf))).sum() == pytest.approx(
        law.expected_trials, rel=1e-6)
    if law.distribution != "poisson":
        assert law.pmf(0) == 0.0  # K >= 1: a TNB search always trains
        assert law.expected_trials == pytest.approx(law.mean, rel=1e-9)


def test_tnb_special_cases():
    # eta = 1 is the geometric law: P[K = k] = gamma (1 - gamma)^(k-1).
    geometric = TrialCount("truncated_negative_binomial", 4.0, 1.0)
    g = geometric.gamma
    assert g == pytest.approx(0.25)
    for k in (1, 2, 7):
        assert geometric.pmf(k) == pytest.approx(g * (1 - g) ** (k - 1))
    # eta = 0 is the logarithmic law, and eta -> 0 tends to it.
    log = TrialCount("truncated_negative_binomial", 4.0, 0.0)
    near = TrialCount("truncated_negative_binomial", 4.0, 1e-9)
    for k in (1, 3, 10):
        expected = (1 - log.gamma) ** k / (k * math.log(1 / log.gamma))
        assert log.pmf(k) == pytest.approx(expected)
        assert near.pmf(k) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.describe())
def test_sampler_draws_the_law(law, rng):
    draws = np.array([law.sample(rng) for _ in range(40000)])
    assert draws.mean() == pytest.approx(law.expected_trials, rel=0.05)
    for k in range(0, 4):
        p = law.pmf(k)
        sd = math.sqrt(p * (1 - p) / len(draws))
        assert abs((draws == k).mean() - p) < 5 * sd + 1e-4


def test_k_is_drawn_from_os_entropy(monkeypatch):
    """No seed can reproduce K: the generator is seeded by secrets."""
    import secrets
    calls = []
    real = secrets.randbits

    def spy(bits):
        calls.append(bits)
        return real(bits)
    monkeypatch.setattr(selection.secrets, "randbits", spy)
    TrialCount("poisson", 3.0).sample()
    assert calls == [128]


# -- 2. dp_accounting's RepeatAndSelectDpEvent ------------------------------

@pytest.mark.parametrize("law", [law for law in LAWS if law.eta >= 0
                                 and law.expected_trials >= 1],
                         ids=lambda law: law.describe())
def test_matches_dp_accounting_repeat_and_select(law):
    import dp_accounting
    from dp_accounting import dp_event as events
    q, sigma, steps = 0.02, 1.2, 500
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(sigma)), steps)
    shape = math.inf if law.distribution == "poisson" else law.eta
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(events.RepeatAndSelectDpEvent(
        event, law.expected_trials, shape))
    theirs = accountant._rdp
    ours = best_of_k_rdp(dp_sgd_curve(q, sigma, steps), law)
    # dp_accounting solves gamma from the mean conservatively (a smaller
    # gamma), so it may be above ours by that rounding, never far. For
    # Poisson it skips the last step, monotonicity in the order (Renyi
    # divergences grow with it), which we apply: the same step on its
    # values gives ours.
    monotone = np.minimum.accumulate(theirs[::-1])[::-1]
    np.testing.assert_allclose(ours, monotone, rtol=2e-3)
    for delta in (1e-5, 1e-6):
        assert epsilon_of_rdp(ours, delta=delta) == pytest.approx(
            accountant.get_epsilon(delta), rel=2e-3)


# -- 3. brute force on a small discrete mechanism ----------------------------

# Q on neighbouring data sets x, x': an output in {0, 1, 2, 3}, ordered by
# score (higher is better). Two pairs: a "high outputs more likely on x"
# shift, and one that moves mass to the top only.
MECHANISMS = [
    (np.array([0.40, 0.30, 0.20, 0.10]), np.array([0.30, 0.30, 0.25, 0.15])),
    (np.array([0.50, 0.25, 0.20, 0.05]), np.array([0.45, 0.25, 0.20, 0.10])),
]


def renyi(p, q, lam):
    return math.log(np.sum(p ** lam * q ** (1 - lam))) / (lam - 1)


def best_of_k_distribution(p, law, k_max=4000):
    """The exact law of A's output (index 0 is 'nothing', for K = 0):
    P[best = y] = sum_k P[K=k] (F(y)^k - F(y-1)^k), by its terms."""
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    out = np.zeros(len(p) + 1)
    out[0] = law.pmf(0)
    for k in range(1, k_max):
        w = law.pmf(k)
        if w < 1e-18 and k > 10 * law.expected_trials:
            break
        out[1:] += w * (cdf[1:] ** k - cdf[:-1] ** k)
    return out


def test_max_of_k_by_enumeration():
    """The F^k formula above against all K-tuples of outputs."""
    p = MECHANISMS[0][0]
    for k in (1, 2, 3, 4):
        law = np.zeros(len(p))
        for outcome in itertools.product(range(len(p)), repeat=k):
            law[max(outcome)] += np.prod(p[list(outcome)])
        cdf = np.concatenate([[0.0], np.cumsum(p)])
        np.testing.assert_allclose(law, cdf[1:] ** k - cdf[:-1] ** k,
                                   atol=1e-15)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.describe())
@pytest.mark.parametrize("pair", range(len(MECHANISMS)))
def test_bound_is_never_below_the_exact_divergence(law, pair):
    p, q = MECHANISMS[pair]
    orders = np.array([o for o in RDP_ORDERS if o <= 64])
    # Q's exact RDP curve: the larger of both directions.
    rdp = np.array([max(renyi(p, q, lam), renyi(q, p, lam))
                    for lam in orders])
    bound = best_of_k_rdp(rdp, law, orders)
    a, b = best_of_k_distribution(p, law), best_of_k_distribution(q, law)
    support = (a > 0) | (b > 0)
    for lam, upper in zip(orders, bound):
        exact = max(renyi(a[support], b[support], lam),
                    renyi(b[support], a[support], lam))
        assert exact <= upper + 1e-12, (lam, exact, upper)


# -- calibration and validation ----------------------------------------------

@pytest.mark.parametrize("law", [LAWS[0], LAWS[4]],
                         ids=lambda law: law.describe())
def test_calibrated_noise_is_the_smallest_meeting_the_target(law):
    kwargs = dict(num_examples=5000, batch_size=100, steps=300, delta=1e-5,
                  score_noise=10.0)
    sigma = calibrate_trial_noise(2.0, law, **kwargs)

    def eps(s):
        return search_epsilon(trial_rdp(5000, 100, s, 300, score_noise=10.0),
                              law, delta=1e-5)
    assert eps(sigma) <= 2.0 < eps(sigma * 0.998)


def test_search_costs_more_than_one_trial_and_less_than_composition():
    rdp = trial_rdp(5000, 100, 1.5, 300, score_noise=10.0)
    one = epsilon_of_rdp(rdp, delta=1e-5)
    law = TrialCount("truncated_negative_binomial", 10.0, 1.0)
    assert one < search_epsilon(rdp, law, delta=1e-5) < composed_epsilon(
        rdp, trials=10, delta=1e-5)
    # More trials in expectation cost more.
    costs = [search_epsilon(rdp, TrialCount(mean=m), delta=1e-5)
             for m in (2, 5, 20)]
    assert costs == sorted(costs)


def test_score_noise_is_a_gaussian_mechanism_of_sensitivity_one():
    with_score = trial_rdp(5000, 100, 1.5, 300, score_noise=4.0)
    without = trial_rdp(5000, 100, 1.5, 300)
    np.testing.assert_allclose(with_score - without,
                               np.array(RDP_ORDERS) / 32.0)


def test_unreachable_target_names_what_to_change():
    with pytest.raises(ValueError, match="selection and scores alone"):
        calibrate_trial_noise(0.05, TrialCount(mean=50), num_examples=5000,
                              batch_size=100, steps=300, delta=1e-5,
                              score_noise=1.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(distribution="uniform"), "distribution='uniform': must be one of"),
    (dict(mean=1.0), "mean=1.0: must be > 1"),
    (dict(mean=float("nan")), "mean=nan: must be finite"),
    (dict(distribution="poisson", mean=-2), "mean=-2: must be >= 1"),
    # Below 1 the Poisson bound goes under the exact divergence.
    (dict(distribution="poisson", mean=0.5), "mean=0.5: must be >= 1"),
    (dict(eta=-1.0), "eta=-1.0: must be > -1"),
    (dict(mean=True), "mean=True: must be a number"),
])
def test_trial_count_refuses_bad_laws(kwargs, message):
    with pytest.raises(ValueError) as info:
        TrialCount(**kwargs)
    assert message in str(info.value)


def test_curve_checks():
    with pytest.raises(ValueError, match="rdp: 2 values for"):
        best_of_k_rdp([1.0, 2.0], TrialCount())
    with pytest.raises(ValueError, match="must be a TrialCount"):
        best_of_k_rdp(dp_sgd_curve(), 5)
    with pytest.raises(ValueError, match="score_noise=0.0: must be > 0"):
        trial_rdp(100, 10, 1.0, 5, score_noise=0.0)
    # No noise: no bound.
    assert search_epsilon(trial_rdp(100, 10, 0.0, 5), TrialCount(),
                          delta=1e-5) == math.inf


# -- the released model's ledger ---------------------------------------------

def test_ledger_of_a_searched_model_states_the_search():
    from keras_tempered_dp.privacy.accounting import Segment
    from keras_tempered_dp.privacy.ledger import Ledger
    from keras_tempered_dp.privacy.selection import SearchRecord
    trial = Segment(5000, 100, 300, 1.5)
    record = SearchRecord(trial, 10.0, "truncated_negative_binomial", 5.0)
    ledger = Ledger(searches=[record])
    law = TrialCount("truncated_negative_binomial", 5.0, 0.0)
    rdp = trial_rdp(5000, 100, 1.5, 300, score_noise=10.0)
    assert ledger.epsilon(delta=1e-5) == pytest.approx(
        search_epsilon(rdp, law, delta=1e-5), rel=1e-12)
    # More than the one trial's DP-SGD alone: never understated.
    assert ledger.epsilon(delta=1e-5) > Ledger([trial]).epsilon(delta=1e-5)
    # Training on afterwards composes in RDP with the search.
    more = Segment(5000, 100, 100, 1.5)
    ledger.record(more)
    total = best_of_k_rdp(rdp, law) + 100 * one_step_rdp(5000, 100, 1.5,
                                                         "poisson")
    assert ledger.epsilon(delta=1e-5) == pytest.approx(
        epsilon_of_rdp(total, delta=1e-5), rel=1e-12)
    assert Ledger.from_dict(ledger.to_dict()) == ledger
    assert "the best of a private search" in ledger.statement(delta=1e-5)
    with pytest.raises(ValueError, match="its bound is Renyi DP"):
        ledger.epsilon(delta=1e-5, accountant="pld")
    # A ledger saved before searches existed (format 1) still reads.
    old = {"format": 1, "segments": [dict(num_examples=5000, batch_size=100,
                                          steps=3, noise_multiplier=1.0,
                                          sampling="poisson",
                                          used_microbatching=False)],
           "unattributed": []}
    assert Ledger.from_dict(old).steps == 3


def test_search_record_refuses_what_it_cannot_bound():
    from keras_tempered_dp.privacy.accounting import Segment
    from keras_tempered_dp.privacy.selection import SearchRecord
    with pytest.raises(ValueError, match="Poisson-sampled steps"):
        SearchRecord(Segment(100, 10, 5, 1.0, "without_replacement"), None,
                     "poisson", 2.0)
    with pytest.raises(ValueError, match="mean=0.5: must be >= 1"):
        SearchRecord(Segment(100, 10, 5, 1.0), None, "poisson", 0.5)

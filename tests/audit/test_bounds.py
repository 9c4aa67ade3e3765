"""Tests of the audit's bounds: formulas, soundness, validation."""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import sklearn.metrics

from keras_tempered_dp.audit import (
    HeldOutThresholdAudit,
    OneRunAudit,
    clopper_pearson_lower,
    clopper_pearson_upper,
    default_guess_grid,
    held_out_threshold_audit,
    membership_inference_summary,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    threshold_epsilon_lower_bound,
)


@pytest.fixture(autouse=True)
def seeded():
    """Overrides the suite's Keras seeding and clear_session: this module is
    pure NumPy/SciPy and seeds its own generators (clearing a Keras session
    after each of ~100 cases cost ~0.16 s apiece on Keras 3)."""
    yield


def _randomized_response(rng, m, eps):
    """Inclusion bits and their eps-DP randomized-response release."""
    included = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    return included, np.where(keep, included, ~included)


def _gaussian_true_epsilon(mu, delta):
    """Exact epsilon of the Gaussian mechanism with sensitivity/sigma = mu.

    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    (Balle & Wang 2018), solved for eps.
    """
    phi = scipy.stats.norm.cdf

    def gap(eps):
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(
            -eps / mu - mu / 2) - delta

    return scipy.optimize.brentq(gap, 0.0, 200.0, xtol=1e-10)


# --------------------------------------------------------------------------
# one_run_p_value / one_run_epsilon_lower_bound
# --------------------------------------------------------------------------

@pytest.mark.parametrize("m,r,v,eps", [
    (10, 10, 7, 0.5), (100, 40, 30, 1.3), (1000, 1000, 600, 0.2),
    (50, 20, 0, 2.0), (50, 20, 20, 3.0)])
def test_p_value_without_delta_is_binomial_tail(m, r, v, eps):
    q = 1 / (1 + math.exp(-eps))
    expected = scipy.stats.binom.sf(v - 1, r, q)
    assert one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(
        expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_correct_matches_closed_form(confidence):
    # p = q^10 < 1 - c  <=>  q < t = (1 - c)^(1/10), eps = logit(t).
    t = (1 - confidence) ** (1 / 10)
    expected = math.log(t / (1 - t))
    got = one_run_epsilon_lower_bound(10, 10, 10, delta=0.0,
                                      confidence=confidence)
    assert got == pytest.approx(expected, abs=1e-6)
    assert got <= expected  # the bisection returns the rejected end


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (20, 6, 5, 0.7, 0.01), (30, 12, 9, 1.5, 1e-3), (8, 8, 6, 0.0, 0.05)])
def test_p_value_with_delta_by_brute_force(m, r, v, eps, delta):
    q = math.exp(eps) / (1 + math.exp(eps))

    def pmf(k):
        return math.comb(r, k) * q ** k * (1 - q) ** (r - k)

    beta = sum(pmf(k) for k in range(v, r + 1))
    # alpha = max_i P[v - i <= X <= v - 1] / i, summed from scratch each i.
    alpha = max(sum(pmf(k) for k in range(v - i, v)) / i
                for i in range(1, v + 1))
    expected = min(1.0, beta + alpha * delta * 2 * m)
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(
        expected, rel=1e-10)


@pytest.mark.parametrize("m,r,v,delta", [
    (100, 100, 90, 0.0), (100, 100, 90, 1e-3), (1000, 200, 170, 1e-5),
    (1000, 1000, 1000, 1e-5), (50, 30, 25, 0.02)])
def test_p_value_is_non_decreasing_in_epsilon(m, r, v, delta):
    # A larger epsilon is a weaker claim, so it is harder to reject.
    ps = [one_run_p_value(m, r, v, e, delta) for e in np.linspace(0, 12, 241)]
    assert np.all(np.diff(ps) >= -1e-12)
    assert ps[-1] > ps[0]


@pytest.mark.parametrize("m,r,v,delta,confidence", [
    (100, 100, 90, 0.0, 0.95), (1000, 200, 170, 1e-5, 0.95),
    (1000, 1000, 1000, 1e-5, 0.99), (50, 40, 40, 0.02, 0.9),
    (100, 60, 58, 0.01, 0.9)])
def test_bound_is_rejected_and_slightly_more_is_not(m, r, v, delta,
                                                    confidence):
    level = 1 - confidence
    eps = one_run_epsilon_lower_bound(m, r, v, delta, confidence)
    assert eps > 0
    assert one_run_p_value(m, r, v, eps, delta) < level
    assert one_run_p_value(m, r, v, eps + 1e-3, delta) >= level


def test_bound_is_zero_when_nothing_is_rejected():
    # Half right is what a coin achieves: no evidence at all.
    assert one_run_epsilon_lower_bound(100, 100, 50, 1e-5) == 0.0
    assert one_run_epsilon_lower_bound(100, 0, 0, 1e-5) == 0.0


def test_bound_grows_with_confidence_lowered_and_delta_lowered():
    loose = one_run_epsilon_lower_bound(1000, 500, 450, 1e-5, 0.9)
    strict = one_run_epsilon_lower_bound(1000, 500, 450, 1e-5, 0.99)
    big_delta = one_run_epsilon_lower_bound(1000, 500, 450, 1e-4, 0.9)
    assert strict < loose
    assert big_delta < loose


def test_one_run_rejection_rate_at_the_true_epsilon():
    # eps=1 randomized response guessed on all m canaries is exactly the
    # worst case of the theorem: rejecting eps=1 must happen <= 5%.
    rng = np.random.default_rng(7)
    m, trials = 100, 2000
    q = math.exp(1) / (1 + math.exp(1))
    correct = rng.binomial(m, q, size=trials)
    rejected = sum(one_run_p_value(m, m, int(v), 1.0, 0.0) < 0.05
                   for v in correct)
    # Exact rate is P[Bin(100, q) >= v*] <= 0.05; allow 3 sigma of noise.
    assert rejected <= 0.05 * trials + 3 * math.sqrt(trials * 0.05 * 0.95)
    assert rejected > 0.01 * trials  # the test is not vacuous


# --------------------------------------------------------------------------
# one_run_audit
# --------------------------------------------------------------------------

def test_default_grid_is_fixed_by_m_only():
    assert default_guess_grid(1000) == (
        (25, 25), (50, 50), (125, 125), (250, 250), (500, 500))
    assert default_guess_grid(1) == ((1, 0),)
    # 5% and 10% of 10 both round to one guess; the duplicate is dropped.
    assert default_guess_grid(10) == ((1, 0), (1, 1), (3, 2), (5, 5))


def test_one_run_audit_applies_bonferroni():
    rng = np.random.default_rng(1)
    m = 1000
    included = rng.random(m) < 0.5
    scores = 1.5 * included + rng.standard_normal(m)
    result = one_run_audit(scores, included, delta=1e-5, confidence=0.95)
    assert isinstance(result, OneRunAudit)
    grid = default_guess_grid(m)
    corrected = 1 - 0.05 / len(grid)
    assert result.epsilon == one_run_epsilon_lower_bound(
        m, result.guesses, result.correct, 1e-5, corrected)
    assert result.epsilon < one_run_epsilon_lower_bound(
        m, result.guesses, result.correct, 1e-5, 0.95)
    assert result.epsilon > 0.5
    # A one-candidate grid needs no correction.
    single = one_run_audit(scores, included, delta=1e-5, guesses=[(100, 100)])
    assert single.guesses == 200
    assert single.epsilon == one_run_epsilon_lower_bound(
        m, 200, single.correct, 1e-5, 0.95)


def test_one_run_audit_counts_correct_guesses():
    scores = np.arange(10.0)
    included = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    # Top 3 (indices 9, 8, 7): in, in, out -> 2; bottom 2 (0, 1): out -> 2.
    result = one_run_audit(scores, included, delta=0.0, guesses=[(3, 2)])
    assert (result.guesses, result.correct) == (5, 4)


def test_ties_do_not_help_the_auditor():
    # Equal scores with the members last: a stable sort would put exactly
    # the members on top and guess perfectly.
    included = np.arange(1000) >= 500
    result = one_run_audit(np.zeros(1000), included, delta=1e-5)
    assert result.epsilon < 0.3


def test_randomized_response_one_run_is_sound_and_tight():
    eps_true, bounds = 1.0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        included, released = _randomized_response(rng, 2000, eps_true)
        scores = released + 1e-6 * rng.standard_normal(2000)
        bounds.append(one_run_audit(scores, included, delta=1e-5).epsilon)
    assert max(bounds) <= eps_true
    assert np.mean(bounds) > 0.7  # close to the truth: a tight audit


def test_perfect_attacker_one_run():
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    result = one_run_audit(included.astype(float), included, delta=1e-5)
    # Only ~500 members exist, so the 500/500 split may miss one or two.
    assert result.correct >= result.guesses - 5
    # delta=0 and r=v=1000 at 0.99 (Bonferroni over 5) gives logit(0.01^1e-3)
    # ~ 5.38; delta=1e-5 costs a little.
    assert 4 < result.epsilon < 5.39


# --------------------------------------------------------------------------
# Clopper-Pearson and threshold bounds
# --------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1),
                                 (0, 1), (17, 250), (249, 250)])
@pytest.mark.parametrize("alpha", [0.025, 0.05, 0.1])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    ci = scipy.stats.binomtest(k, n).proportion_ci(
        confidence_level=1 - 2 * alpha, method="exact")
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(
        ci.high, abs=1e-12)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(
        ci.low, abs=1e-12)


def test_threshold_bound_by_hand():
    scores_in = np.r_[np.full(36, 1.0), np.full(4, 0.0)]     # fn = 4 of 40
    scores_out = np.r_[np.full(3, 1.0), np.full(47, 0.0)]    # fp = 3 of 50
    delta = 1e-3
    fpr_u = scipy.stats.beta.ppf(0.975, 4, 47)
    fnr_u = scipy.stats.beta.ppf(0.975, 5, 36)
    expected = max(math.log((1 - delta - fnr_u) / fpr_u),
                   math.log((1 - delta - fpr_u) / fnr_u), 0.0)
    assert expected > 0
    got = threshold_epsilon_lower_bound(scores_in, scores_out, 0.5,
                                        delta=delta, confidence=0.95)
    assert got == pytest.approx(expected, rel=1e-12)
    # Scores equal to the threshold count as predicted "out".
    assert threshold_epsilon_lower_bound(
        scores_in, scores_out, 1.0, delta=delta) == 0.0


def test_threshold_bound_uses_the_better_direction():
    # Perfect separation in the reverse direction: low scores are members.
    scores_in, scores_out = np.zeros(100), np.ones(100)
    forward = threshold_epsilon_lower_bound(np.ones(100), np.zeros(100), 0.5,
                                            delta=0.0)
    # Here FPR = FNR = 1, both logs are of non-positive numbers.
    assert threshold_epsilon_lower_bound(scores_in, scores_out, 0.5,
                                         delta=0.0) == 0.0
    u = 1 - 0.025 ** (1 / 100)
    assert forward == pytest.approx(math.log((1 - u) / u), rel=1e-10)


def test_threshold_bound_rejection_rate_many_runs():
    # Independent eps=1 randomized-response runs: the bound may exceed 1 in
    # at most 5% of audits.
    rng = np.random.default_rng(11)
    trials, n, exceed = 600, 200, 0
    for _ in range(trials):
        keep_in = rng.random(n) < math.exp(1) / (1 + math.exp(1))
        keep_out = rng.random(n) < math.exp(1) / (1 + math.exp(1))
        eps = threshold_epsilon_lower_bound(keep_in.astype(float),
                                            (~keep_out).astype(float), 0.5,
                                            delta=0.0)
        exceed += eps > 1.0
    assert exceed <= 0.05 * trials + 3 * math.sqrt(trials * 0.05 * 0.95)


def test_held_out_randomized_response_is_sound():
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        included, released = _randomized_response(rng, 2000, 1.0)
        result = held_out_threshold_audit(released.astype(float), included,
                                          delta=1e-5, seed=seed)
        bounds.append(result.epsilon)
    assert max(bounds) <= 1.0
    assert np.mean(bounds) > 0.5


def test_held_out_split_and_counts():
    rng = np.random.default_rng(5)
    included = rng.random(500) < 0.5
    scores = 2.0 * included + rng.standard_normal(500)
    a = held_out_threshold_audit(scores, included, delta=1e-5, seed=9)
    b = held_out_threshold_audit(scores, included, delta=1e-5, seed=9)
    assert isinstance(a, HeldOutThresholdAudit)
    assert a == b  # seeded split is reproducible
    assert a.n_in + a.n_out == 250
    # Recompute on the same held-out half from the documented recipe.
    second = np.random.default_rng(9).permutation(500)[250:]
    held_in = scores[second][included[second]]
    held_out = scores[second][~included[second]]
    assert a.n_in == held_in.size
    assert a.false_positives == int(np.sum(held_out > a.threshold))
    assert a.false_negatives == int(np.sum(held_in <= a.threshold))
    assert a.epsilon == threshold_epsilon_lower_bound(
        held_in, held_out, a.threshold, delta=1e-5)
    assert a.epsilon > 0.5


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_gaussian_mechanism_bounds_stay_below_truth(mu):
    delta = 1e-5
    true_eps = _gaussian_true_epsilon(mu, delta)
    # The formula: mu=1 is about (4.4, 1e-5)-DP.
    assert 4.0 < _gaussian_true_epsilon(1.0, delta) < 4.8
    for seed in range(10):
        rng = np.random.default_rng(seed)
        included = rng.random(2000) < 0.5
        scores = mu * included + rng.standard_normal(2000)
        one = one_run_audit(scores, included, delta=delta).epsilon
        held = held_out_threshold_audit(scores, included, delta=delta,
                                        seed=seed).epsilon
        assert 0 < one < true_eps
        assert 0 < held < true_eps


# --------------------------------------------------------------------------
# membership_inference_summary
# --------------------------------------------------------------------------

def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    included = rng.random(300) < 0.4
    scores = np.round(0.8 * included + rng.standard_normal(300), 1)  # ties
    summary = membership_inference_summary(scores, included)
    assert summary["auc"] == pytest.approx(
        sklearn.metrics.roc_auc_score(included, scores), abs=1e-12)


def test_tpr_at_low_fpr_by_hand():
    scores_out = np.arange(100.0)                    # 0, ..., 99
    scores_in = np.array([99.5, 100.0, 101.0, 99.0, 10.0])
    scores = np.r_[scores_in, scores_out]
    included = np.r_[np.ones(5, bool), np.zeros(100, bool)]
    summary = membership_inference_summary(scores, included)
    # score >= 99 catches 4 members and the tied non-member 99: FPR 1%.
    assert summary["tpr_at_1pct_fpr"] == 0.8
    # FPR <= 0.1% means no false positive, so the member tied with a
    # non-member at 99 cannot be counted: score >= 99.5 catches 3.
    assert summary["tpr_at_0.1pct_fpr"] == 0.6


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

_GOOD_SCORES = np.array([0.1, 0.9, 0.4, 0.7])
_GOOD_BITS = np.array([False, True, False, True])


@pytest.mark.parametrize("call,name", [
    (lambda: one_run_p_value(0, 0, 0, 1.0, 0.0), "m=0"),
    (lambda: one_run_p_value(10, 11, 0, 1.0, 0.0), "r=11"),
    (lambda: one_run_p_value(10, 5, 6, 1.0, 0.0), "v=6"),
    (lambda: one_run_p_value(10, -1, 0, 1.0, 0.0), "r=-1"),
    (lambda: one_run_p_value(10.5, 5, 3, 1.0, 0.0), "m=10.5"),
    (lambda: one_run_p_value(True, 1, 1, 1.0, 0.0), "m=True"),
    (lambda: one_run_p_value(10, 5, 3, -1.0, 0.0), "epsilon=-1.0"),
    (lambda: one_run_p_value(10, 5, 3, math.inf, 0.0), "epsilon=inf"),
    (lambda: one_run_p_value(10, 5, 3, math.nan, 0.0), "epsilon=nan"),
    (lambda: one_run_p_value(10, 5, 3, 1.0, 1.0), "delta=1.0"),
    (lambda: one_run_p_value(10, 5, 3, 1.0, -0.1), "delta=-0.1"),
    (lambda: one_run_p_value(10, 5, 3, 1.0, "x"), "delta='x'"),
    (lambda: one_run_epsilon_lower_bound(10, 5, 3, 0.0, 1.5),
     "confidence=1.5"),
    (lambda: one_run_epsilon_lower_bound(10, 5, 3, 0.0, 0.0),
     "confidence=0.0"),
    (lambda: one_run_epsilon_lower_bound(10, 5, 3, 2.0), "delta=2.0"),
    (lambda: one_run_epsilon_lower_bound(10, 5, 6, 0.0), "v=6"),
    (lambda: one_run_audit([], [], delta=0.0), "scores"),
    (lambda: one_run_audit([1.0, np.nan], [True, False], delta=0.0),
     r"scores\[1\]=nan"),
    (lambda: one_run_audit([[1.0]], [True], delta=0.0), "scores"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS[:3], delta=0.0),
     "included"),
    (lambda: one_run_audit(_GOOD_SCORES, [0, 1, 2, 1], delta=0.0),
     "included"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=1.0),
     "delta=1.0"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           confidence=1.0), "confidence=1.0"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0, guesses=[]),
     "guesses"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           guesses=[(3, 2)]), "guesses"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           guesses=[(0, 0)]), "guesses"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           guesses=[(1,)]), "guesses"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           guesses=5), "guesses"),
    (lambda: one_run_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                           guesses=[(-1, 2)]), "guesses k_plus"),
    (lambda: default_guess_grid(0), "m=0"),
    (lambda: clopper_pearson_upper(5, 4, 0.05), "k=5"),
    (lambda: clopper_pearson_upper(1, 0, 0.05), "n=0"),
    (lambda: clopper_pearson_upper(-1, 4, 0.05), "k=-1"),
    (lambda: clopper_pearson_upper(1, 4, 0.0), "alpha=0.0"),
    (lambda: clopper_pearson_lower(1, 4, 1.0), "alpha=1.0"),
    (lambda: clopper_pearson_lower(1.5, 4, 0.1), "k=1.5"),
    (lambda: threshold_epsilon_lower_bound([], [1.0], 0.5, delta=0.0),
     "scores_in"),
    (lambda: threshold_epsilon_lower_bound([1.0], [], 0.5, delta=0.0),
     "scores_out"),
    (lambda: threshold_epsilon_lower_bound([1.0], [math.inf], 0.5,
                                           delta=0.0), r"scores_out\[0\]"),
    (lambda: threshold_epsilon_lower_bound([1.0], [0.0], math.nan,
                                           delta=0.0), "threshold=nan"),
    (lambda: threshold_epsilon_lower_bound([1.0], [0.0], "a", delta=0.0),
     "threshold='a'"),
    (lambda: threshold_epsilon_lower_bound([1.0], [0.0], 0.5, delta=-1.0),
     "delta=-1.0"),
    (lambda: threshold_epsilon_lower_bound([1.0], [0.0], 0.5, delta=0.0,
                                           confidence=2), "confidence=2"),
    (lambda: held_out_threshold_audit([], [], delta=0.0), "scores"),
    (lambda: held_out_threshold_audit(_GOOD_SCORES, [True] * 4, delta=0.0,
                                      seed=0), "included"),
    (lambda: held_out_threshold_audit(_GOOD_SCORES, _GOOD_BITS, delta=0.0,
                                      confidence=-0.5), "confidence=-0.5"),
    (lambda: membership_inference_summary(_GOOD_SCORES, [False] * 4),
     "included"),
    (lambda: membership_inference_summary([], []), "scores"),
    (lambda: membership_inference_summary(_GOOD_SCORES, _GOOD_BITS[:2]),
     "included"),
])
def test_validation_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()

"""Private selection: the Renyi DP of releasing the best of a random number
of trials (Papernot & Steinke, "Hyperparameter Tuning with Renyi
Differential Privacy", ICLR 2022).

A trial ``Q`` (train one model with DP-SGD, score it) is ``(lambda,
eps(lambda))``-RDP at every order ``lambda``. The search ``A`` draws a
secret number of trials ``K``, runs ``Q`` ``K`` times independently (each
with hyperparameters drawn independently of the data) and releases only the
best trial's output. Then ``A`` is ``(lambda, eps_A(lambda))``-RDP with:

- **K ~ truncated negative binomial** ``D(eta, gamma)``, ``eta > -1``,
  ``gamma`` in ``(0, 1)``:
  ``P[K = k] = (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l+eta)/(l+1)``
  for ``k >= 1`` (``eta = 0``: the logarithmic law,
  ``(1-gamma)^k / (k log(1/gamma))``; ``eta = 1``: the geometric law),
  ``E[K] = eta (1-gamma) / (gamma (1 - gamma^eta))`` (Theorem 2)::

      eps_A(lambda) = eps(lambda) + log(E[K]) / (lambda - 1)
          + (1 + eta) * min_lhat [(1 - 1/lhat) eps(lhat) + log(1/gamma)/lhat]

- **K ~ Poisson(mu)** (``K = 0`` releases nothing; Theorem 6): with
  ``eps_hat = log(1 + 1/(lambda - 1))`` and ``delta_hat`` the delta at which
  ``Q`` is ``(eps_hat, delta_hat)``-DP (from its RDP curve, dp_accounting's
  conversion)::

      eps_A(lambda) = eps(lambda) + mu * delta_hat + log(mu) / (lambda - 1)

Renyi divergences grow with the order, so ``eps_A(lambda) <=
min_{lambda' >= lambda} eps_A(lambda')`` holds too and is applied last. The
curve is converted to ``(epsilon, delta)`` once, by dp_accounting's
conversion, as every epsilon in the package is.

The bound holds only while ``K`` stays secret: no log line, file, count or
index may reveal how many trials ran. :class:`TrialCount` draws ``K`` from
OS entropy, never from a seed.

Example:

>>> count = TrialCount("truncated_negative_binomial", mean=5, eta=0.0)
>>> rdp = trial_rdp(54000, 1024, 1.2, steps=530)
>>> one = epsilon_of_rdp(rdp, delta=1e-5)
>>> search = search_epsilon(rdp, count, delta=1e-5)
>>> bool(one < search < composed_epsilon(rdp, trials=5, delta=1e-5))
True
"""

import dataclasses
import math
import secrets

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from keras_tempered_dp.privacy.accounting import (
    RDP_ORDERS,
    accountant_name,
    check_delta,
    check_integer,
    check_noise_multiplier,
    check_run,
    one_step_rdp,
    smallest_noise,
)
from keras_tempered_dp.validation import check_choice, check_number

DISTRIBUTIONS = ("truncated_negative_binomial", "poisson")


def secret_generator():
    """A NumPy generator seeded from OS entropy (``secrets``): what draws
    the number of trials, the trials' hyperparameters and the score noise,
    none of which may be predictable."""
    return np.random.default_rng(secrets.randbits(128))


@dataclasses.dataclass(frozen=True)
class TrialCount:
    """The law of K, the secret number of trials, validated on creation.

    Args:
        distribution: "truncated_negative_binomial" (K >= 1 always) or
            "poisson" (K = 0, with probability ``exp(-mean)``, releases
            nothing).
        mean: E[K]; > 1 for the truncated negative binomial, >= 1 for
            Poisson.
        eta: the truncated negative binomial's shape, > -1 (0: logarithmic,
            1: geometric). Ignored for Poisson.

    ``gamma`` is solved from ``(eta, mean)`` on creation;
    :attr:`expected_trials` is the exact mean of the law sampled, which is
    what the bound uses.

    Example:

    >>> geometric = TrialCount("truncated_negative_binomial", mean=3, eta=1)
    >>> round(geometric.gamma, 9)
    0.333333333
    >>> TrialCount("poisson", mean=0.5)
    Traceback (most recent call last):
    ...
    ValueError: mean=0.5: must be >= 1. It is E[K], the expected number of ...
    """

    distribution: str = "truncated_negative_binomial"
    mean: float = 5.0
    eta: float = 0.0

    def __post_init__(self):
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        hint = "It is E[K], the expected number of trials."
        if self.distribution == "poisson":
            # Theorem 6's log(mean) / (lambda - 1) goes below zero for a
            # mean under 1, where the bound would fall below the truth (a
            # brute-force check finds it); dp_accounting refuses it too.
            check_number("mean", self.mean, low=1, hint=hint)
        else:
            check_number("mean", self.mean, low=1, low_open=True, hint=hint
                         + " K >= 1 always, so E[K] = 1 would mean exactly "
                         "one trial: train once instead.")
        check_number("eta", self.eta, low=-1, low_open=True, hint=(
            "It is the truncated negative binomial's shape (0: "
            "logarithmic, 1: geometric)."))
        if self.distribution != "poisson":
            object.__setattr__(self, "gamma", _solve_gamma(self.eta,
                                                           self.mean))

    @property
    def expected_trials(self):
        if self.distribution == "poisson":
            return float(self.mean)
        return _tnb_mean(self.eta, self.gamma)

    def pmf(self, k):
        """P[K = k]."""
        k = check_integer("k", k)
        if self.distribution == "poisson":
            return math.exp(k * math.log(self.mean) - self.mean
                            - math.lgamma(k + 1))
        if k == 0:
            return 0.0
        g, eta = self.gamma, self.eta
        # (1-g)^k * eta / (g^-eta - 1) * prod_{l<k} (l+eta)/(l+1), with
        # prod_{1<=l<k} (l+eta) = Gamma(k+eta) / Gamma(1+eta); the first
        # factor's eta over (g^-eta - 1) tends to 1/log(1/g) as eta -> 0.
        first = (eta / math.expm1(-eta * math.log(g)) if eta != 0
                 else 1 / math.log(1 / g))
        return first * math.exp(
            k * math.log1p(-g) + math.lgamma(k + eta) - math.lgamma(1 + eta)
            - math.lgamma(k + 1))

    def sample(self, rng=None):
        """Draws K, from OS entropy unless a generator is given (tests)."""
        rng = rng or secret_generator()
        if self.distribution == "poisson":
            return int(rng.poisson(self.mean))
        # Inverse CDF; stops where the remaining mass is below float
        # resolution (the pmf falls geometrically).
        u, k, p, total = rng.random(), 1, self.pmf(1), 0.0
        while total + p < u and p > 1e-300:
            total += p
            p *= (1 - self.gamma) * (k + self.eta) / (k + 1)
            k += 1
        return k

    def describe(self):
        if self.distribution == "poisson":
            return f"K ~ Poisson(mean {self.mean:g})"
        return (f"K ~ truncated negative binomial (eta {self.eta:g}, gamma "
                f"{self.gamma:.6g}; E[K] = {self.expected_trials:.4g})")


def _tnb_mean(eta, gamma):
    log_g = math.log(gamma)
    if eta == 0:
        return (1 - gamma) / (gamma * -log_g)
    return eta * (1 - gamma) / (gamma * -math.expm1(eta * log_g))


def _solve_gamma(eta, mean):
    """The gamma with E[K] = mean (E[K] falls as gamma grows), by bisection
    on log(gamma)."""
    low, high = -700.0, 0.0  # log(gamma)
    for _ in range(200):
        mid = (low + high) / 2
        if _tnb_mean(eta, math.exp(mid)) > mean:
            low = mid
        else:
            high = mid
    return math.exp((low + high) / 2)


def _check_curve(rdp, orders):
    orders = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    if orders.shape != rdp.shape or orders.ndim != 1:
        raise ValueError(f"rdp: {rdp.shape[0] if rdp.ndim else 0} values "
                         f"for {len(orders)} orders; give one per order.")
    if np.any(orders <= 1) or np.any(np.diff(orders) <= 0):
        raise ValueError("orders: must be increasing and above 1.")
    if np.any(np.isnan(rdp)) or np.any(rdp < 0):
        raise ValueError("rdp: every value must be >= 0 (not nan).")
    return orders, rdp


def best_of_k_rdp(rdp, trial_count, orders=RDP_ORDERS):
    """The RDP curve of the search, from one trial's (module docstring).

    Args:
        rdp: one trial's RDP at each of ``orders``.
        trial_count: a :class:`TrialCount`.
        orders: increasing Renyi orders above 1.

    Returns:
        an array, the search's RDP at each order (``inf`` where no bound).
    """
    orders, rdp = _check_curve(rdp, orders)
    if not isinstance(trial_count, TrialCount):
        raise ValueError(f"trial_count={trial_count!r}: must be a "
                         "TrialCount(distribution, mean, eta).")
    mean = trial_count.expected_trials
    if trial_count.distribution == "poisson":
        extra = np.array([
            mean * rdp_privacy_accountant.compute_delta(
                orders, rdp, math.log1p(1 / (order - 1)))[0]
            for order in orders])
    else:
        log_gamma = math.log(trial_count.gamma)
        each = (1 - 1 / orders) * rdp - log_gamma / orders
        extra = (1 + trial_count.eta) * np.min(each)
    bound = rdp + extra + math.log(mean) / (orders - 1)
    # Monotonicity in the order: the smallest bound at any higher order.
    return np.minimum.accumulate(bound[::-1])[::-1]


def epsilon_of_rdp(rdp, *, delta, orders=RDP_ORDERS):
    """``(epsilon, delta)`` from an RDP curve: dp_accounting's conversion
    (Canonne, Kamath & Steinke 2020, Proposition 12)."""
    orders, rdp = _check_curve(rdp, orders)
    check_number("delta", delta, low=0, high=1, low_open=True,
                 high_open=True)
    if not np.any(np.isfinite(rdp)):
        return math.inf
    return float(rdp_privacy_accountant.compute_epsilon(
        list(orders), list(rdp), delta)[0])


def trial_rdp(num_examples, batch_size, noise_multiplier, steps, *,
              score_noise=None):
    """One trial's RDP curve on :data:`RDP_ORDERS`: ``steps`` Poisson-
    sampled DP-SGD steps (dp_accounting's), composed with the Gaussian
    mechanism that releases the trial's score, when ``score_noise`` is
    given: the number of correct validation predictions (sensitivity 1 under
    add-or-remove-one) plus ``N(0, score_noise^2)``, RDP
    ``lambda / (2 score_noise^2)``.

    Example:

    >>> rdp = trial_rdp(1000, 10, 1.0, steps=0, score_noise=2.0)
    >>> float(rdp[RDP_ORDERS.index(32)])  # 32 / (2 * 2.0 ** 2)
    4.0
    """
    num_examples, batch_size = check_run(num_examples, batch_size)
    noise_multiplier = check_noise_multiplier(noise_multiplier)
    steps = check_integer("steps", steps)
    check_number("score_noise", score_noise, low=0, low_open=True,
                 allow_none=True, hint=SCORE_NOISE_HINT)
    orders = np.array(RDP_ORDERS)
    if steps and noise_multiplier == 0:
        rdp = np.full_like(orders, np.inf)
    else:
        rdp = steps * one_step_rdp(num_examples, batch_size,
                                   noise_multiplier, "poisson")
    if score_noise is not None:
        rdp = rdp + orders / (2 * score_noise ** 2)
    return rdp


SCORE_NOISE_HINT = (
    "It is the standard deviation of the Gaussian noise added to the number "
    "of correctly classified validation examples (e.g. 20: about 0.3 "
    "accuracy points on 6,000 validation examples).")


def search_epsilon(rdp, trial_count, *, delta, orders=RDP_ORDERS):
    """Epsilon of releasing the best of K trials, each with RDP ``rdp``."""
    return epsilon_of_rdp(best_of_k_rdp(rdp, trial_count, orders),
                          delta=delta, orders=orders)


def composed_epsilon(rdp, *, trials, delta, orders=RDP_ORDERS):
    """Epsilon of releasing all of ``trials`` trials (RDP composition): what
    a search with a known number of trials spends when more than the best
    trial may come out."""
    trials = check_integer("trials", trials, 1)
    return epsilon_of_rdp(trials * np.asarray(rdp, dtype=float),
                          delta=delta, orders=orders)


def calibrate_trial_noise(target_epsilon, trial_count, *, num_examples,
                          batch_size, steps, delta, score_noise=None,
                          tolerance=1e-3):
    """The smallest DP-SGD noise multiplier for which the whole search (the
    best of K trials of ``steps`` steps each, scores included) is
    ``(target_epsilon, delta)``-DP.

    Example:

    >>> count = TrialCount(mean=5, eta=0.0)
    >>> sigma = calibrate_trial_noise(2.7, count, num_examples=54000,
    ...                               batch_size=1024, steps=530,
    ...                               delta=1e-5, score_noise=20.0)
    >>> rdp = trial_rdp(54000, 1024, sigma, 530, score_noise=20.0)
    >>> bool(search_epsilon(rdp, count, delta=1e-5) <= 2.7)
    True
    """
    check_run(num_examples, batch_size)
    check_delta(delta, num_examples)
    trial_rdp(num_examples, batch_size, 1.0, steps, score_noise=score_noise)
    floor = search_epsilon(trial_rdp(num_examples, batch_size, 1.0, 0,
                                     score_noise=score_noise),
                           trial_count, delta=delta)
    if floor >= target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon!r}: the search's selection "
            f"and scores alone spend {floor:.3f} ({trial_count.describe()}"
            f", score_noise={score_noise!r}); raise the target, lower the "
            "expected number of trials, raise score_noise or score on a "
            "public validation set.")

    def eps(sigma):
        return search_epsilon(trial_rdp(num_examples, batch_size, sigma,
                                        steps, score_noise=score_noise),
                              trial_count, delta=delta)

    return smallest_noise(eps, target_epsilon, tolerance,
                          "a noise multiplier")


def search_statement(epsilon, delta, trial_count, *, num_examples,
                     batch_size, steps, noise_multiplier, score_noise):
    """The sentence a private search's results carry."""
    score = ("each trial's validation score released with Gaussian noise "
             f"of std {score_noise:g} on its count of correct predictions"
             if score_noise is not None else
             "trials ranked by their exact accuracy on a public validation "
             "set (no privacy cost)")
    return (
        f"({epsilon:.3f}, {delta:g})-DP for each training example (those "
        f"the trials trained on and those that scored them), for the whole "
        f"search and the released best model and score: best of K trials, "
        f"{trial_count.describe()}, K secret (Papernot & Steinke 2022); "
        f"each trial DP-SGD with {steps} steps, N={num_examples}, "
        f"batch_size={batch_size}, noise_multiplier={noise_multiplier:g}, "
        f"{score}; {accountant_name('rdp')} assuming Poisson subsampling "
        "with q = batch_size / N, add-or-remove-one neighbours.")


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    """A private search, as the released model's ledger keeps it: its
    trials' steps, score noise and law of K, from which its RDP curve
    (:func:`best_of_k_rdp`) is recomputed. It replaces the best trial's own
    steps in that model's ledger: the model was chosen by the search, so
    what it spent is the search's, not one trial's.

    Example:

    >>> from keras_tempered_dp.privacy.accounting import Segment
    >>> record = SearchRecord(Segment(54000, 1024, 795, 1.5645), 20.0,
    ...                       "truncated_negative_binomial", 5.0, 0.0)
    >>> round(epsilon_of_rdp(record.rdp(), delta=1e-5), 2)
    2.7
    >>> SearchRecord.from_dict(record.to_dict()) == record
    True
    """

    trial: object  # an accounting.Segment (Poisson sampling)
    score_noise: float | None
    distribution: str
    mean: float
    eta: float = 0.0

    def __post_init__(self):
        from keras_tempered_dp.privacy.accounting import Segment
        if (not isinstance(self.trial, Segment)
                or self.trial.sampling != "poisson"
                or self.trial.used_microbatching):
            raise ValueError(f"trial={self.trial!r}: must be a Segment of "
                             "Poisson-sampled steps without microbatches.")
        check_number("score_noise", self.score_noise, low=0, low_open=True,
                      allow_none=True, hint=SCORE_NOISE_HINT)
        self.trial_count()  # validates the law

    def trial_count(self):
        return TrialCount(self.distribution, self.mean, self.eta)

    def rdp(self):
        """The search's RDP curve on :data:`RDP_ORDERS`."""
        t = self.trial
        return best_of_k_rdp(trial_rdp(
            t.num_examples, t.batch_size, t.noise_multiplier, t.steps,
            score_noise=self.score_noise), self.trial_count())

    def describe(self):
        t, law = self.trial, self.trial_count().describe()
        return (f"the best of a private search ({law}; trials of "
                f"{t.steps} steps at N="
                f"{t.num_examples}, batch_size={t.batch_size}, "
                f"noise_multiplier={t.noise_multiplier:g}"
                + (f", scores noised with std {self.score_noise:g}"
                   if self.score_noise is not None else
                   ", scored on public data") + ")")

    def to_dict(self):
        return {"trial": dataclasses.asdict(self.trial),
                "score_noise": self.score_noise,
                "distribution": self.distribution, "mean": self.mean,
                "eta": self.eta}

    @classmethod
    def from_dict(cls, data):
        from keras_tempered_dp.privacy.accounting import Segment
        return cls(Segment(**data["trial"]), data["score_noise"],
                   data["distribution"], data["mean"], data["eta"])

"""What a private search costs each trial, for each law of K.

Before a private search (``keras-tempered-dp tune --private``), choose the
law of K, the secret number of trials: more trials in expectation find
better hyperparameters but leave each trial less budget (more noise). This
prints, for one run's settings, the noise every trial needs so that the
whole search is (target_epsilon, delta)-DP, and the epsilon one trial's
DP-SGD alone then spends.

    python examples/private_search_costs.py

The table in docs/tuning.md is this script's output.
"""

from keras_tempered_dp.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_epsilon,
)
from keras_tempered_dp.privacy.selection import (
    TrialCount,
    calibrate_trial_noise,
)

LAWS = (("truncated_negative_binomial", 0.0),
        ("truncated_negative_binomial", 1.0),
        ("truncated_negative_binomial", -0.5),
        ("poisson", 0.0))


def costs(*, num_examples=54000, batch_size=1024, steps=795,
          target_epsilon=2.7, delta=1e-5, score_noise=20.0,
          means=(3, 5, 10), laws=LAWS):
    """Rows ``(law, E[K], P[K=0], P[K=1], P[K > 2 E[K]], sigma, epsilon of
    one trial's DP-SGD)``; the first row is a single run without search.
    The defaults: the Fashion-MNIST search of docs/results/
    fashion_mnist_tuning (54,000 examples train, 15 epochs of 1024)."""
    single = calibrate_noise_multiplier(target_epsilon, num_examples,
                                        batch_size, steps=steps, delta=delta)
    rows = [("one run, no search", 1, 0.0, 1.0, 0.0, single,
             target_epsilon)]
    for distribution, eta in laws:
        for mean in means:
            law = TrialCount(distribution, mean, eta)
            sigma = calibrate_trial_noise(
                target_epsilon, law, num_examples=num_examples,
                batch_size=batch_size, steps=steps, delta=delta,
                score_noise=score_noise)
            tail = 1 - sum(law.pmf(k) for k in range(2 * mean + 1))
            name = ("Poisson" if distribution == "poisson"
                    else f"TNB, eta = {eta:g}")
            rows.append((name, mean, law.pmf(0), law.pmf(1), tail, sigma,
                         compute_epsilon(num_examples, batch_size, sigma,
                                         steps=steps, delta=delta)))
    return rows


def main():
    print("| law of K | E[K] | P[K = 0] | P[K = 1] | P[K > 2 E[K]] | trial "
          "noise multiplier | one trial's DP-SGD epsilon |")
    print("|---|---|---|---|---|---|---|")
    for name, mean, p0, p1, tail, sigma, epsilon in costs():
        print(f"| {name} | {mean} | {p0:.3f} | {p1:.2f} | {tail:.2f} | "
              f"{sigma:.3f} | {epsilon:.3f} |")


if __name__ == "__main__":
    main()

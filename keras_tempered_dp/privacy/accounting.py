"""Privacy accounting for DP-SGD with dp_accounting's RDP accountant.

The numbers assume the *add-or-remove-one-example* neighbouring relation and,
by default, **Poisson subsampling**: at each step every example joins the
batch independently with probability ``q = batch_size / num_examples``. That
is what the RDP analysis of DP-SGD (Abadi et al. 2016, Mironov et al. 2019)
proves. Keras' ``fit`` instead shuffles and cuts fixed-size batches; the
epsilon reported for such a run is the number a Poisson-sampled run with the
same q and number of steps would have, which is the common practice but not
a proof for shuffling. ``sampling="without_replacement"`` accounts each batch
as a uniformly random fixed-size subset (replace-one relation) instead.
"""

import math

import dp_accounting
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

SAMPLINGS = ("poisson", "without_replacement")

# dp_accounting's default Renyi orders refined by a finer grid; the
# accountant reports the best order, so more orders only tighten epsilon.
RDP_ORDERS = tuple(sorted(set(
    DEFAULT_RDP_ORDERS
    + [1 + x / 40.0 for x in range(1, 400)]
    + list(range(64, 129, 4))
    + [160, 192, 384]
)))


def _check(num_examples, batch_size, noise_multiplier, delta, sampling):
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(
            f"num_examples={num_examples!r}: must be a positive integer.")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size={batch_size!r}: must be an integer in "
            f"[1, num_examples={num_examples}].")
    if not noise_multiplier >= 0:
        raise ValueError(
            f"noise_multiplier={noise_multiplier!r}: must be >= 0.")
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r}: must be in (0, 1), typically "
                         "below 1 / num_examples.")
    if sampling not in SAMPLINGS:
        raise ValueError(
            f"sampling={sampling!r}: must be one of {', '.join(SAMPLINGS)}.")


def steps_per_epoch(num_examples, batch_size):
    """Steps of one epoch: ``ceil(num_examples / batch_size)``."""
    return int(math.ceil(num_examples / batch_size))


def dp_sgd_event(num_examples, batch_size, noise_multiplier, steps,
                 sampling="poisson"):
    """The dp_accounting event of ``steps`` DP-SGD steps."""
    q = batch_size / num_examples
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        sampled = dp_accounting.PoissonSampledDpEvent(q, gaussian)
    else:
        sampled = dp_accounting.SampledWithoutReplacementDpEvent(
            num_examples, batch_size, gaussian)
    return dp_accounting.SelfComposedDpEvent(sampled, int(steps))


def _accountant(sampling):
    relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
                if sampling == "poisson"
                else dp_accounting.NeighboringRelation.REPLACE_ONE)
    return dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS), relation)


def compute_epsilon(num_examples, batch_size, noise_multiplier, *,
                    epochs=None, steps=None, delta=1e-5, sampling="poisson",
                    used_microbatching=False):
    """Epsilon of a DP-SGD run at the given delta (RDP accountant).

    Args:
        num_examples: training set size N.
        batch_size: (expected) batch size B; q = B / N.
        noise_multiplier: sigma of each step's Gaussian noise, in units of
            the clipping norm.
        epochs: number of passes; steps = ceil(epochs * N / B). Give this or
            ``steps``.
        steps: number of DP-SGD steps.
        delta: the delta of (epsilon, delta)-DP.
        sampling: "poisson" (default) or "without_replacement"; see the
            module docstring.
        used_microbatching: True when microbatches hold more than one
            example: one example can then change a clipped microbatch mean by
            up to 2C under the replace-one view TF Privacy takes, so, as TF
            Privacy does, the analysis halves the noise multiplier.

    Returns:
        epsilon (float); ``inf`` when ``noise_multiplier == 0``.

    Example:

    >>> round(compute_epsilon(60000, 256, 1.1, epochs=60, delta=1e-5), 3)
    2.597
    """
    _check(num_examples, batch_size, noise_multiplier, delta, sampling)
    if (epochs is None) == (steps is None):
        raise ValueError("Give exactly one of epochs= and steps=.")
    if steps is None:
        if epochs < 0:
            raise ValueError(f"epochs={epochs!r}: must be >= 0.")
        steps = int(math.ceil(epochs * num_examples / batch_size))
    if steps < 0:
        raise ValueError(f"steps={steps!r}: must be >= 0.")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    sigma = noise_multiplier / 2 if used_microbatching else noise_multiplier
    accountant = _accountant(sampling)
    accountant.compose(
        dp_sgd_event(num_examples, batch_size, sigma, steps, sampling))
    return float(accountant.get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon, num_examples, batch_size, *,
                               epochs=None, steps=None, delta=1e-5,
                               sampling="poisson", used_microbatching=False,
                               tolerance=1e-3):
    """The smallest noise multiplier whose epsilon is <= ``target_epsilon``.

    Bisection on :func:`compute_epsilon` (epsilon falls as the noise grows);
    the returned sigma meets the target and is within ``tolerance`` (relative)
    of the smallest one that does.

    Example:

    >>> sigma = calibrate_noise_multiplier(2.597, 60000, 256, epochs=60)
    >>> bool(abs(sigma - 1.1) < 0.01)
    True
    """
    def eps(sigma):
        return compute_epsilon(num_examples, batch_size, sigma, epochs=epochs,
                               steps=steps, delta=delta, sampling=sampling,
                               used_microbatching=used_microbatching)

    return smallest_noise(eps, target_epsilon, tolerance,
                          "a noise multiplier")


def smallest_noise(eps, target_epsilon, tolerance, what):
    """Bisection: the smallest sigma with ``eps(sigma) <= target_epsilon``
    (``eps`` falls as sigma grows), within ``tolerance`` relative.

    ``what`` names the searched quantity in the error for unreachable
    targets. Shared by noise calibration here and under schedules.
    """
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise ValueError(f"target_epsilon={target_epsilon!r}: must be a "
                         "positive finite number.")
    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(
                f"target_epsilon={target_epsilon!r} needs {what} above 1e4 "
                "for this run; train fewer steps or with a smaller batch.")
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def privacy_statement(num_examples, batch_size, noise_multiplier, *,
                      epochs=None, steps=None, delta=1e-5, sampling="poisson",
                      used_microbatching=False):
    """A sentence stating epsilon and every assumption behind it."""
    epsilon = compute_epsilon(
        num_examples, batch_size, noise_multiplier, epochs=epochs, steps=steps,
        delta=delta, sampling=sampling, used_microbatching=used_microbatching)
    if steps is None:
        steps = int(math.ceil(epochs * num_examples / batch_size))
    how = ("Poisson subsampling with q = batch_size / N, add-or-remove-one "
           "neighbours" if sampling == "poisson" else
           "fixed-size batches sampled uniformly without replacement, "
           "replace-one neighbours")
    return (
        f"({epsilon:.3f}, {delta:g})-DP for each example: DP-SGD, "
        f"{steps} steps, N={num_examples}, batch_size={batch_size}, "
        f"noise_multiplier={noise_multiplier:g}"
        f"{' (halved in the analysis: microbatches of >1 example)' if used_microbatching else ''}"
        f"; RDP accountant (dp_accounting) assuming {how}."
    )

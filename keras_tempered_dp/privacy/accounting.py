"""Privacy accounting for DP-SGD with dp_accounting's RDP or PLD accountant.

The numbers assume the *add-or-remove-one-example* neighbouring relation and,
by default, **Poisson subsampling**: at each step every example joins the
batch independently with probability ``q = batch_size / num_examples``. That
is what the RDP analysis of DP-SGD (Abadi et al. 2016, Mironov et al. 2019)
proves. Keras' ``fit`` instead shuffles and cuts fixed-size batches; the
epsilon reported for such a run is the number a Poisson-sampled run with the
same q and number of steps would have, which is the common practice but not
a proof for shuffling. ``sampling="without_replacement"`` accounts each batch
as a uniformly random fixed-size subset (replace-one relation) instead.

A run is a sequence of :class:`Segment` (steps with one N, batch size and
noise multiplier); :func:`compose_epsilon` composes any such sequence exactly
(a resumed run with other settings, a noise schedule). The number of steps in
an epoch has one rule, :func:`steps_per_epoch`, used by the whole package.

Two accountants, both dp_accounting's, both upper bounds on epsilon:

- ``"rdp"`` (the default): Renyi DP (Mironov 2017) of the subsampled
  Gaussian at every order of :data:`RDP_ORDERS`, summed over the steps and
  converted once, ``eps = min_a [RDP(a) + log(1/delta) / (a - 1)]`` (with
  dp_accounting's tighter conversion). Fast; loose by 5-15% for DP-SGD.
- ``"pld"``: the privacy loss distribution (Koskela et al. 2020; Doroshenko
  et al. 2022) of one step, discretized on a grid of
  :data:`PLD_DISCRETIZATION` with every loss rounded *up* (dp_accounting's
  pessimistic estimate, so the result stays an upper bound), self-composed
  by FFT, and read off exactly: ``delta(eps) = E[(1 - e^(eps - L))_+]``.
  Near-exact; a smaller epsilon for the same noise, or less noise for the
  same epsilon. Poisson sampling only (dp_accounting's PLD accountant has no
  event for fixed-size batches without replacement).
"""

import contextlib
import dataclasses
import functools
import logging
import math

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

from keras_tempered_dp.validation import check_choice, check_number

SAMPLINGS = ("poisson", "without_replacement")

ACCOUNTANTS = ("rdp", "pld")

# The PLD's grid of privacy-loss values (dp_accounting's default). Losses
# are rounded up to it, so a coarser grid only raises epsilon; at 1e-4 the
# paper's settings are within 0.001 of a 10x finer grid.
PLD_DISCRETIZATION = 1e-4

# How the batches of an epoch are made, for steps_per_epoch.
BATCHINGS = ("fit", "poisson", "shuffle")

# dp_accounting's default Renyi orders refined by a finer grid; the
# accountant reports the best order, so more orders only tighten epsilon.
RDP_ORDERS = tuple(sorted(set(
    DEFAULT_RDP_ORDERS
    + [1 + x / 40.0 for x in range(1, 400)]
    + list(range(64, 129, 4))
    + [160, 192, 384]
)))


# -- validation: every public function refuses bad numbers by name, before
# -- any computation ----------------------------------------------------------

def check_integer(name, value, minimum=0):
    """``value`` as an int; refuses bools, floats and values < minimum."""
    return check_number(name, value, low=minimum, integer=True)


def check_noise_multiplier(value, name="noise_multiplier"):
    """``value`` as a float; refuses bools, negatives, nan and inf."""
    return check_number(name, value, low=0, hint=(
        "It is the noise standard deviation in units of the clipping "
        "norm; infinite noise would mean no training signal."))


def check_delta(delta, num_examples):
    """Refuses a delta that is not in (0, 1 / num_examples)."""
    return check_number(
        "delta", delta, low=0, high=1 / num_examples, low_open=True,
        high_open=True, hint=(
            f"1/num_examples for num_examples={num_examples}: a delta of "
            "1/N or more allows a mechanism that publishes one whole "
            "example at random and still calls itself DP. Use 1/(10N) = "
            f"{1 / (10 * num_examples):.3g} or less."))


def check_run(num_examples, batch_size):
    """Checks N and B; returns them as ints."""
    num_examples = check_integer("num_examples", num_examples, 1)
    batch_size = check_integer("batch_size", batch_size, 1)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size!r}: must be an integer in "
            f"[1, num_examples={num_examples}].")
    return num_examples, batch_size


def check_sampling(sampling):
    return check_choice("sampling", sampling, SAMPLINGS)


def check_accountant(accountant, sampling="poisson"):
    """Refuses an unknown accountant, and PLD without Poisson sampling."""
    check_choice("accountant", accountant, ACCOUNTANTS)
    if accountant == "pld" and sampling != "poisson":
        raise ValueError(
            f"accountant='pld' with sampling={sampling!r}: dp_accounting's "
            "PLD accountant analyses Poisson subsampling only; use "
            "accountant='rdp' for fixed-size batches without replacement.")
    return accountant


def steps_per_epoch(num_examples, batch_size, batching="fit"):
    """The number of DP-SGD steps in one epoch: the package's one rule.

    Args:
        num_examples: N.
        batch_size: B (the expected size under Poisson sampling).
        batching: "fit" (default): ``ceil(N / B)``, what ``model.fit`` runs
            over arrays (the last batch is partial); "poisson":
            ``max(1, round(N / B))``, one pass in expectation (what
            :func:`~keras_tempered_dp.training.train` runs with
            :func:`~keras_tempered_dp.privacy.sampling.poisson_batches`);
            "shuffle": ``N // B``, fixed-size batches with the remainder
            dropped (:func:`~keras_tempered_dp.privacy.sampling.
            shuffled_batches`).

    Example:

    >>> [steps_per_epoch(60000, 256, b) for b in BATCHINGS]
    [235, 234, 234]
    """
    num_examples, batch_size = check_run(num_examples, batch_size)
    if batching == "fit":
        return -(-num_examples // batch_size)
    if batching == "poisson":
        return max(1, int(round(num_examples / batch_size)))
    if batching == "shuffle":
        return num_examples // batch_size
    raise ValueError(f"batching={batching!r}: must be one of "
                     f"{', '.join(BATCHINGS)}.")


def resolve_steps(num_examples, batch_size, epochs, steps):
    """``steps``, or ``epochs`` whole epochs of what ``fit`` runs."""
    if (epochs is None) == (steps is None):
        raise ValueError("Give exactly one of epochs= and steps=.")
    if steps is None:
        epochs = check_integer("epochs", epochs)
        return epochs * steps_per_epoch(num_examples, batch_size)
    return check_integer("steps", steps)


# -- segments and their composition ------------------------------------------

@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps of a DP-SGD run that share N, the batch size and the noise.

    A run that changed its settings (a resumed run, a noise schedule) is a
    list of segments; :func:`compose_epsilon` composes them exactly. Store
    ``dataclasses.asdict(segment)`` in a checkpoint and rebuild with
    ``Segment(**d)``.

    Args:
        num_examples: N.
        batch_size: the (expected) batch size B; q = B / N.
        steps: the number of steps, >= 0.
        noise_multiplier: sigma of each step, finite and >= 0.
        sampling: "poisson" or "without_replacement" (see the module
            docstring).
        used_microbatching: True when microbatches held more than one
            example (the analysis then halves sigma, as TF Privacy does).

    Raises:
        ValueError: naming the field and the bad value.

    Example:

    >>> Segment(60000, 256, steps=235, noise_multiplier=1.1).steps
    235
    """

    num_examples: int
    batch_size: int
    steps: int
    noise_multiplier: float
    sampling: str = "poisson"
    used_microbatching: bool = False

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        n, b = check_run(self.num_examples, self.batch_size)
        set_("num_examples", n)
        set_("batch_size", b)
        set_("steps", check_integer("steps", self.steps))
        set_("noise_multiplier",
             check_noise_multiplier(self.noise_multiplier))
        check_sampling(self.sampling)
        if not isinstance(self.used_microbatching, bool):
            raise ValueError(f"used_microbatching={self.used_microbatching!r}"
                             ": must be True or False.")

    @property
    def accounted_noise_multiplier(self):
        """sigma as the analysis uses it (halved with microbatching)."""
        return (self.noise_multiplier / 2 if self.used_microbatching
                else self.noise_multiplier)

    def event(self):
        """The dp_accounting event of these steps."""
        return dp_sgd_event(self.num_examples, self.batch_size,
                            self.accounted_noise_multiplier, self.steps,
                            self.sampling)


def dp_sgd_event(num_examples, batch_size, noise_multiplier, steps,
                 sampling="poisson"):
    """The dp_accounting event of ``steps`` DP-SGD steps."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        sampled = dp_accounting.PoissonSampledDpEvent(
            batch_size / num_examples, gaussian)
    else:
        sampled = dp_accounting.SampledWithoutReplacementDpEvent(
            num_examples, batch_size, gaussian)
    return dp_accounting.SelfComposedDpEvent(sampled, int(steps))


def rdp_accountant(sampling="poisson"):
    """dp_accounting's RDP accountant on :data:`RDP_ORDERS`, with the
    neighbouring relation ``sampling`` is analysed under."""
    relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
                if check_sampling(sampling) == "poisson"
                else dp_accounting.NeighboringRelation.REPLACE_ONE)
    return dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS), relation)


class _NonConvergenceFilter(logging.Filter):
    """Drops dp_accounting's "failed to converge ... Excluding this order"
    warnings: for some (q, sigma) its series at fractional orders near 1
    does not converge within its iteration cap, and it then sets that
    order's RDP to infinity. That only drops the order from the minimum
    over orders, so epsilon can only be larger (never understated); the
    dozens of lines it prints during a noise calibration say nothing a user
    can act on."""

    def filter(self, record):
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_non_convergence():
    logger, quiet = logging.getLogger("absl"), _NonConvergenceFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@functools.lru_cache(maxsize=4096)
def one_step_rdp(num_examples, batch_size, noise_multiplier, sampling):
    """RDP at every order of :data:`RDP_ORDERS` of one DP-SGD step.

    dp_accounting's own computation. RDP adds up over composed events (that
    is all its accountant does when composing), so a run of many segments
    costs one cached vector per distinct step.
    """
    accountant = rdp_accountant(sampling)
    with _quiet_non_convergence():
        accountant.compose(dp_sgd_event(num_examples, batch_size,
                                        noise_multiplier, 1, sampling))
    # The one place that reads dp_accounting's private state: RdpAccountant
    # has no public accessor for its RDP vector (dp_accounting 0.4).
    return np.array(accountant._rdp, dtype=float)


def merge_segments(segments):
    """``segments`` with adjacent ones that differ only in their steps
    merged into one (the composition is the same).

    >>> merge_segments([Segment(100, 10, 5, 1.0), Segment(100, 10, 3, 1.0),
    ...                 Segment(100, 10, 2, 2.0)])[0].steps
    8
    """
    merged = []
    for segment in segments:
        last = merged[-1] if merged else None
        if last is not None and dataclasses.replace(
                last, steps=segment.steps) == segment:
            merged[-1] = dataclasses.replace(
                last, steps=last.steps + segment.steps)
        else:
            merged.append(segment)
    return tuple(merged)


def compose_epsilon(segments, *, delta, sampling="poisson",
                    accountant="rdp"):
    """Epsilon of the composition of ``segments``.

    Args:
        segments: :class:`Segment` objects, in any order.
        delta: the delta of (epsilon, delta)-DP; below 1/N for every
            segment's N.
        sampling: the analysis every segment must share ("poisson": add-or-
            remove-one neighbours, "without_replacement": replace-one); two
            neighbouring relations cannot be composed in one accountant.
        accountant: "rdp" (default) or "pld" (Poisson only); see the module
            docstring.

    Returns:
        epsilon (float); 0 for no steps, ``inf`` if a step had no noise.

    Example:

    >>> run = [Segment(60000, 256, 235 * 30, 1.1),
    ...        Segment(60000, 256, 235 * 30, 1.1)]
    >>> round(compose_epsilon(run, delta=1e-5), 3)
    2.6
    >>> round(compose_epsilon(run, delta=1e-5, accountant="pld"), 3)
    2.385
    """
    check_sampling(sampling)
    check_accountant(accountant, sampling)
    segments = list(segments)
    for segment in segments:
        if not isinstance(segment, Segment):
            raise ValueError(f"segments: {segment!r} is not a Segment; build "
                             "each part of the run with Segment(...).")
        if segment.sampling != sampling:
            raise ValueError(
                f"sampling={sampling!r} but a segment has sampling="
                f"{segment.sampling!r}: all segments must share one "
                "neighbouring relation.")
    if not segments:
        check_number("delta", delta, low=0, high=1, low_open=True,
                     high_open=True)
        return 0.0
    check_delta(delta, max(s.num_examples for s in segments))
    segments = [s for s in segments if s.steps > 0]
    if not segments:
        return 0.0
    if any(s.noise_multiplier == 0 for s in segments):
        return math.inf
    if accountant == "pld":
        return _pld_epsilon(merge_segments(segments), float(delta))
    total = sum(s.steps * one_step_rdp(s.num_examples, s.batch_size,
                                       s.accounted_noise_multiplier,
                                       s.sampling)
                for s in segments)
    return float(rdp_privacy_accountant.compute_epsilon(
        list(RDP_ORDERS), total, delta)[0])


@functools.lru_cache(maxsize=1024)
def _pld_epsilon(segments, delta):
    """dp_accounting's PLD accountant over ``segments`` (a tuple)."""
    accountant = dp_accounting.pld.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=PLD_DISCRETIZATION)
    for segment in segments:
        accountant.compose(segment.event())
    return float(accountant.get_epsilon(delta))


def compute_epsilon(num_examples, batch_size, noise_multiplier, *,
                    epochs=None, steps=None, delta=1e-5, sampling="poisson",
                    used_microbatching=False, accountant="rdp"):
    """Epsilon of a DP-SGD run at the given delta.

    Args:
        num_examples: training set size N.
        batch_size: (expected) batch size B; q = B / N.
        noise_multiplier: sigma of each step's Gaussian noise, in units of
            the clipping norm; finite, >= 0.
        epochs: number of epochs of ``model.fit`` over arrays, each
            ``steps_per_epoch(N, B) = ceil(N / B)`` steps. Give this or
            ``steps`` (for Poisson epochs of ``round(N / B)`` steps, pass
            ``steps=``).
        steps: number of DP-SGD steps.
        delta: the delta of (epsilon, delta)-DP, below 1 / N.
        sampling: "poisson" (default) or "without_replacement"; see the
            module docstring.
        used_microbatching: True when microbatches hold more than one
            example: one example can then change a clipped microbatch mean by
            up to 2C under the replace-one view TF Privacy takes, so, as TF
            Privacy does, the analysis halves the noise multiplier.
        accountant: "rdp" (default) or "pld" (tighter; Poisson only); see
            the module docstring.

    Returns:
        epsilon (float); ``inf`` when ``noise_multiplier == 0``.

    Raises:
        ValueError: naming the argument, before any computation.

    Example:

    >>> round(compute_epsilon(60000, 256, 1.1, epochs=60, delta=1e-5), 3)
    2.6
    >>> round(compute_epsilon(60000, 256, 1.1, epochs=60, delta=1e-5,
    ...                       accountant="pld"), 3)
    2.385
    """
    segment = _segment(num_examples, batch_size, noise_multiplier, epochs,
                       steps, delta, sampling, used_microbatching,
                       accountant)
    return compose_epsilon([segment], delta=delta, sampling=sampling,
                           accountant=accountant)


def _segment(num_examples, batch_size, noise_multiplier, epochs, steps,
             delta, sampling, used_microbatching, accountant="rdp"):
    num_examples, batch_size = check_run(num_examples, batch_size)
    noise_multiplier = check_noise_multiplier(noise_multiplier)
    check_delta(delta, num_examples)
    check_sampling(sampling)
    check_accountant(accountant, sampling)
    steps = resolve_steps(num_examples, batch_size, epochs, steps)
    return Segment(num_examples, batch_size, steps, noise_multiplier,
                   sampling, bool(used_microbatching))


def calibrate_noise_multiplier(target_epsilon, num_examples, batch_size, *,
                               epochs=None, steps=None, delta=1e-5,
                               sampling="poisson", used_microbatching=False,
                               tolerance=1e-3, accountant="rdp"):
    """The smallest noise multiplier whose epsilon is <= ``target_epsilon``.

    Bisection on :func:`compute_epsilon` under ``accountant`` (epsilon falls
    as the noise grows); the returned sigma meets the target and is within
    ``tolerance`` (relative, in (0, 1)) of the smallest one that does. The
    PLD accountant needs less noise for the same target (about 10% less at
    the paper's settings) and takes a few seconds instead of milliseconds.

    Example:

    >>> sigma = calibrate_noise_multiplier(2.6, 60000, 256, epochs=60)
    >>> bool(abs(sigma - 1.1) < 0.01)
    True
    """
    _segment(num_examples, batch_size, 1.0, epochs, steps, delta, sampling,
             used_microbatching, accountant)  # refuses bad arguments first

    def eps(sigma):
        return compute_epsilon(num_examples, batch_size, sigma, epochs=epochs,
                               steps=steps, delta=delta, sampling=sampling,
                               used_microbatching=used_microbatching,
                               accountant=accountant)

    return smallest_noise(eps, target_epsilon, tolerance,
                          "a noise multiplier")


def smallest_noise(eps, target_epsilon, tolerance, what):
    """Bisection: the smallest sigma with ``eps(sigma) <= target_epsilon``
    (``eps`` falls as sigma grows), within ``tolerance`` relative.

    ``what`` names the searched quantity in the error for unreachable
    targets. Shared by noise calibration here and under schedules.
    """
    check_number("target_epsilon", target_epsilon, low=0, low_open=True)
    check_number("tolerance", tolerance, low=0, high=1, low_open=True,
                 high_open=True, hint="It is relative to the noise found "
                 "(1e-3 is usual).")
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


def privacy_statement(num_examples, batch_size=None, noise_multiplier=None, *,
                      epochs=None, steps=None, delta=1e-5, sampling="poisson",
                      used_microbatching=False, accountant="rdp"):
    """A sentence stating epsilon and every assumption behind it, the
    accountant included.

    ``privacy_statement(model, delta=...)`` states what ``model`` spent:
    its ledger, every step it took
    (:func:`~keras_tempered_dp.privacy.recording.privacy_ledger`).

    Example:

    >>> privacy_statement(60000, 256, 1.1, epochs=60)[:40]
    '(2.600, 1e-05)-DP for each example: DP-S'
    """
    if hasattr(num_examples, "trainable_variables"):  # a model
        from keras_tempered_dp.privacy.recording import privacy_ledger
        if noise_multiplier is not None or batch_size is not None:
            raise ValueError("privacy_statement(model, delta=...): the "
                             "model's ledger holds N, batch sizes and noise.")
        return privacy_ledger(num_examples).statement(delta=delta,
                                                      accountant=accountant)
    segment = _segment(num_examples, batch_size, noise_multiplier, epochs,
                       steps, delta, sampling, used_microbatching,
                       accountant)
    epsilon = compose_epsilon([segment], delta=delta, sampling=sampling,
                              accountant=accountant)
    how = ("Poisson subsampling with q = batch_size / N, add-or-remove-one "
           "neighbours" if sampling == "poisson" else
           "fixed-size batches sampled uniformly without replacement, "
           "replace-one neighbours")
    halved = (" (halved in the analysis: microbatches of >1 example)"
              if used_microbatching else "")
    return (
        f"({epsilon:.3f}, {delta:g})-DP for each example: DP-SGD, "
        f"{segment.steps} steps, N={num_examples}, batch_size={batch_size}, "
        f"noise_multiplier={noise_multiplier:g}{halved}"
        f"; {accountant_name(accountant)} assuming {how}."
    )


def accountant_name(accountant):
    """How statements name ``accountant``.

    >>> accountant_name("pld")
    "dp_accounting's PLD accountant (pessimistic, grid 0.0001)"
    """
    if check_accountant(accountant) == "rdp":
        return "dp_accounting's RDP accountant"
    return (f"dp_accounting's PLD accountant (pessimistic, grid "
            f"{PLD_DISCRETIZATION:g})")

"""The noise plan: delta, steps, and the noise multiplier (or schedule) that
makes the run end at its target epsilon.

With ``target_epsilon`` the noise is the smallest that keeps the whole
run's epsilon at or below the target: for a constant noise multiplier by
:func:`~keras_tempered_dp.privacy.accounting.calibrate_noise_multiplier`,
under a schedule by calibrating its starting value, and after earlier parts
that ran with other settings (a resume with ``change_privacy``) by composing
those parts' steps with the new ones.
"""

import dataclasses
from collections.abc import Sequence

from keras_tempered_dp.privacy.accounting import (
    Segment,
    calibrate_noise_multiplier,
    compose_epsilon,
    compute_epsilon,
    smallest_noise,
    steps_per_epoch,
)
from keras_tempered_dp.privacy.schedules import (
    SCHEDULES,
    NoiseSchedule,
    calibrate_schedule,
    schedule_epsilon,
)


@dataclasses.dataclass(frozen=True)
class NoisePlan:
    """What the accountant is told about one part of a run."""

    num_examples: int
    batch_size: int
    steps_per_epoch: int
    sampling: str
    delta: float
    noise_multiplier: float          # sigma, or the schedule's sigma0
    schedule: NoiseSchedule | None
    previous: Sequence[Segment] = ()  # earlier parts with other settings
    accountant: str = "rdp"

    @property
    def accounting_sampling(self):
        # Shuffled batches are accounted as Poisson by convention (the
        # results say so); the accountant knows only Poisson here.
        return "poisson"

    def segments(self, epochs):
        """The segments of ``epochs`` epochs of this part."""
        sigmas = ([self.schedule(e) for e in range(epochs)]
                  if self.schedule is not None
                  else [self.noise_multiplier] * epochs)
        return [Segment(self.num_examples, self.batch_size,
                        self.steps_per_epoch, sigma) for sigma in sigmas]

    def epsilon(self, epochs):
        """Epsilon after the earlier parts and ``epochs`` epochs of this."""
        if self.previous:
            return compose_epsilon(
                list(self.previous) + self.segments(epochs),
                delta=self.delta, accountant=self.accountant)
        if self.schedule is not None:
            return schedule_epsilon(
                self.num_examples, self.batch_size, self.schedule,
                steps_per_epoch=self.steps_per_epoch, epochs=epochs,
                delta=self.delta, accountant=self.accountant)
        return compute_epsilon(
            self.num_examples, self.batch_size, self.noise_multiplier,
            steps=self.steps_per_epoch * epochs, delta=self.delta,
            accountant=self.accountant)



def make_schedule(name, sigma0, decay=None, period=1):
    """A noise schedule by name (constant, step, exponential or time), or
    None for a constant noise multiplier."""
    if name == "constant":
        return None
    if name == "step":
        return SCHEDULES[name](sigma0, factor=decay, period=period)
    return SCHEDULES[name](sigma0, rate=decay)


def plan_noise(privacy, *, num_examples, batch_size, sampling, epochs,
               previous=()):
    """The :class:`NoisePlan` of a run's (remaining) ``epochs`` epochs.

    Args:
        privacy: the run's :class:`~.config.PrivacyConfig`.
        previous: segments already spent with other settings; the target
            epsilon then covers them and this part together.
    """
    delta = privacy.delta
    if delta is None:
        delta = min(1e-5, 1 / (10 * num_examples))
    sigma = privacy.resolved_noise_multiplier()
    if sigma is None:  # a placeholder until calibrated to the target
        sigma = 1.0
    plan = NoisePlan(num_examples, batch_size,
                     steps_per_epoch(num_examples, batch_size, sampling),
                     sampling, delta, sigma,
                     make_schedule(privacy.noise_schedule, sigma,
                                   privacy.noise_decay,
                                   privacy.noise_decay_period),
                     tuple(previous), privacy.accountant)
    if privacy.target_epsilon is None:
        plan.epsilon(epochs)  # validates delta and the rest now
        return plan
    if plan.schedule is not None and not previous:
        schedule = calibrate_schedule(
            privacy.target_epsilon, num_examples, batch_size, plan.schedule,
            steps_per_epoch=plan.steps_per_epoch, epochs=epochs, delta=delta,
            accountant=plan.accountant)
        return dataclasses.replace(plan, schedule=schedule,
                                   noise_multiplier=schedule.sigma0)

    if not previous:
        sigma = calibrate_noise_multiplier(
            privacy.target_epsilon, num_examples, batch_size,
            steps=plan.steps_per_epoch * epochs, delta=delta,
            accountant=plan.accountant)
        return _with_sigma(plan, sigma)

    spent = compose_epsilon(list(previous), delta=delta,
                            accountant=plan.accountant)
    if spent >= privacy.target_epsilon:
        raise ValueError(
            f"target_epsilon={privacy.target_epsilon}: the earlier part of "
            f"this run already spent epsilon {spent:.3f} (delta {delta:g}), "
            "so no noise can keep the whole run at the target. Give a "
            "larger target_epsilon or a noise_multiplier.")

    def eps(sigma):
        return _with_sigma(plan, sigma).epsilon(epochs)

    sigma = smallest_noise(eps, privacy.target_epsilon, 1e-3,
                           "a noise multiplier")
    return _with_sigma(plan, sigma)


def _with_sigma(plan, sigma):
    schedule = (None if plan.schedule is None
                else plan.schedule.with_sigma0(sigma))
    return dataclasses.replace(plan, noise_multiplier=sigma,
                               schedule=schedule)

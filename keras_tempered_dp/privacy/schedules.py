"""Noise-multiplier schedules and their exact privacy accounting.

Auto DP-SGD (Chilukoti et al.) decays the noise multiplier epoch by epoch.
Whatever the schedule, each step is a Poisson-subsampled Gaussian mechanism
with that step's own sigma; the run's epsilon is the composition of those
events, computed here with dp_accounting's RDP or PLD accountant (the
schedule is fixed before training, so it reveals nothing about the data). The starting
noise can be calibrated so the whole run ends at a target epsilon.

Epoch e (counted from 0) uses ``schedule(e)``:

* :class:`ConstantNoise`: ``sigma0``
* :class:`StepDecay`: ``sigma0 * factor ** floor(e / period)``
* :class:`ExponentialDecay`: ``sigma0 * exp(-rate * e)``
* :class:`TimeBasedDecay`: ``sigma0 / (1 + rate * e)``

Example:

>>> schedule = ExponentialDecay(sigma0=2.0, rate=0.1)
>>> round(schedule(10), 4)
0.7358
>>> eps = schedule_epsilon(60000, 256, schedule, steps_per_epoch=235,
...                        epochs=10, delta=1e-5)
>>> bool(eps > compute_epsilon(60000, 256, 2.0, steps=2350, delta=1e-5))
True
"""

import math

from keras_tempered_dp.privacy.accounting import (
    Segment,
    check_accountant,
    check_delta,
    check_integer,
    check_noise_multiplier,
    check_run,
    check_sampling,
    compose_epsilon,
    compute_epsilon,
    smallest_noise,
)
from keras_tempered_dp.validation import check_number


class NoiseSchedule:
    """Base class: ``schedule(epoch) -> noise multiplier``.

    The extension point: a subclass implements ``__call__(epoch) -> sigma``
    (a finite sigma >= 0 fixed before training, so that the schedule reveals
    nothing about the data) and ``get_config()`` returning its constructor
    arguments, ``sigma0`` included.
    """

    def __init__(self, sigma0: float):
        self.sigma0 = check_number(
            "sigma0", sigma0, low=0, low_open=True,
            hint="It is the noise multiplier of epoch 0.")

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def with_sigma0(self, sigma0: float) -> "NoiseSchedule":
        """The same schedule shape starting from another sigma0."""
        config = self.get_config()
        config["sigma0"] = sigma0
        return type(self)(**config)

    def get_config(self) -> dict:
        return {"sigma0": self.sigma0}

    def __eq__(self, other):
        return (type(self) is type(other)
                and self.get_config() == other.get_config())

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ConstantNoise(NoiseSchedule):
    """``sigma0`` at every epoch."""

    def __call__(self, epoch):
        return self.sigma0


class StepDecay(NoiseSchedule):
    """``sigma0 * factor ** floor(epoch / period)``, factor in (0, 1]."""

    def __init__(self, sigma0, factor=0.9, period=1):
        super().__init__(sigma0)
        self.factor = check_number(
            "factor", factor, low=0, high=1, low_open=True,
            hint="Every period epochs, sigma is multiplied by it.")
        self.period = check_number(
            "period", period, low=1, integer=True,
            hint="It is the number of epochs between decays.")

    def __call__(self, epoch):
        return self.sigma0 * self.factor ** (epoch // self.period)

    def get_config(self):
        return {"sigma0": self.sigma0, "factor": self.factor,
                "period": self.period}


class ExponentialDecay(NoiseSchedule):
    """``sigma0 * exp(-rate * epoch)``, rate >= 0."""

    def __init__(self, sigma0, rate=0.05):
        super().__init__(sigma0)
        self.rate = check_number("rate", rate, low=0,
                                 hint="0 keeps sigma constant.")

    def __call__(self, epoch):
        return self.sigma0 * math.exp(-self.rate * epoch)

    def get_config(self):
        return {"sigma0": self.sigma0, "rate": self.rate}


class TimeBasedDecay(ExponentialDecay):
    """``sigma0 / (1 + rate * epoch)``, rate >= 0."""

    def __call__(self, epoch):
        return self.sigma0 / (1 + self.rate * epoch)


SCHEDULES = {"constant": ConstantNoise, "step": StepDecay,
             "exponential": ExponentialDecay, "time": TimeBasedDecay}


def noise_per_step(schedule: NoiseSchedule, *, steps_per_epoch: int,
                   steps: int, first_epoch: int = 0
                   ) -> list[tuple[float, int]]:
    """``[(sigma, count), ...]``: the run's steps grouped by epoch, starting
    at epoch ``first_epoch``."""
    steps_per_epoch = check_integer("steps_per_epoch", steps_per_epoch, 1)
    steps = check_integer("steps", steps)
    out, epoch = [], check_integer("first_epoch", first_epoch)
    while steps > 0:
        count = min(steps, steps_per_epoch)
        out.append((check_noise_multiplier(
            schedule(epoch), f"schedule({epoch})"), count))
        steps -= count
        epoch += 1
    return out


def schedule_segments(num_examples: int, batch_size: int,
                      schedule: NoiseSchedule, *, steps_per_epoch: int,
                      steps: int, sampling: str = "poisson",
                      first_epoch: int = 0) -> list[Segment]:
    """The run under ``schedule`` as one :class:`Segment` per epoch."""
    return [Segment(num_examples, batch_size, count, sigma, sampling)
            for sigma, count in noise_per_step(
                schedule, steps_per_epoch=steps_per_epoch, steps=steps,
                first_epoch=first_epoch)]


def schedule_epsilon(num_examples: int, batch_size: int,
                     schedule: NoiseSchedule, *, steps_per_epoch: int,
                     epochs: int | None = None,
                     steps: int | None = None, delta: float = 1e-5,
                     sampling: str = "poisson",
                     accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` (or ``epochs`` whole epochs) under a schedule.

    Composes, for each epoch, ``steps_per_epoch`` subsampled Gaussian events
    with that epoch's sigma (:func:`~keras_tempered_dp.privacy.accounting.
    compose_epsilon`, same assumptions as :func:`~keras_tempered_dp.privacy.
    accounting.compute_epsilon`), under ``accountant`` ("rdp" or "pld").
    """
    num_examples, batch_size = check_run(num_examples, batch_size)
    check_delta(delta, num_examples)
    check_sampling(sampling)
    check_accountant(accountant, sampling)
    if (epochs is None) == (steps is None):
        raise ValueError("Give exactly one of epochs= and steps=.")
    steps_per_epoch = check_integer("steps_per_epoch", steps_per_epoch, 1)
    if steps is None:
        steps = check_integer("epochs", epochs) * steps_per_epoch
    return compose_epsilon(
        schedule_segments(num_examples, batch_size, schedule,
                          steps_per_epoch=steps_per_epoch, steps=steps,
                          sampling=sampling),
        delta=delta, sampling=sampling, accountant=accountant)


def calibrate_schedule(target_epsilon: float, num_examples: int,
                       batch_size: int, schedule: NoiseSchedule, *,
                       steps_per_epoch: int, epochs: int,
                       delta: float = 1e-5, sampling: str = "poisson",
                       tolerance: float = 1e-3,
                       accountant: str = "rdp") -> NoiseSchedule:
    """``schedule`` with the smallest sigma0 whose run ends at epsilon <=
    ``target_epsilon`` (bisection; the shape of the decay is kept).

    >>> s = calibrate_schedule(3.0, 60000, 256, StepDecay(1.0, 0.8, 5),
    ...                        steps_per_epoch=235, epochs=20)
    >>> eps = schedule_epsilon(60000, 256, s, steps_per_epoch=235,
    ...                        epochs=20)
    >>> bool(2.99 < eps <= 3.0)
    True
    """
    # Refuse bad arguments before searching.
    schedule_epsilon(num_examples, batch_size, schedule,
                     steps_per_epoch=steps_per_epoch, steps=0, delta=delta,
                     sampling=sampling, accountant=accountant)
    check_integer("epochs", epochs)

    def eps(sigma0):
        return schedule_epsilon(
            num_examples, batch_size, schedule.with_sigma0(sigma0),
            steps_per_epoch=steps_per_epoch, epochs=epochs, delta=delta,
            sampling=sampling, accountant=accountant)

    return schedule.with_sigma0(
        smallest_noise(eps, target_epsilon, tolerance, "sigma0"))

__all__ = [
    "SCHEDULES",
    "ConstantNoise",
    "ExponentialDecay",
    "NoiseSchedule",
    "StepDecay",
    "TimeBasedDecay",
    "calibrate_schedule",
    "compute_epsilon",
    "noise_per_step",
    "schedule_epsilon",
    "schedule_segments",
]

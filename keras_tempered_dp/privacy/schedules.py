"""Noise-multiplier schedules and their exact privacy accounting.

Auto DP-SGD (Chilukoti et al.) decays the noise multiplier epoch by epoch.
Whatever the schedule, each step is a Poisson-subsampled Gaussian mechanism
with that step's own sigma; the run's epsilon is the composition of those
events, computed here with dp_accounting's RDP accountant (the schedule is
fixed before training, so it reveals nothing about the data). The starting
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

import functools
import math

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from keras_tempered_dp.privacy.accounting import (
    _accountant,
    _check,
    compute_epsilon,
    dp_sgd_event,
    smallest_noise,
)


def _positive(name, value):
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a positive finite "
                         "number.")
    return value


class NoiseSchedule:
    """Base class: ``schedule(epoch) -> noise multiplier``."""

    def __init__(self, sigma0):
        self.sigma0 = _positive("sigma0", sigma0)

    def __call__(self, epoch):
        raise NotImplementedError

    def with_sigma0(self, sigma0):
        """The same schedule shape starting from another sigma0."""
        config = self.get_config()
        config["sigma0"] = sigma0
        return type(self)(**config)

    def get_config(self):
        return {"sigma0": self.sigma0}

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
        self.factor = float(factor)
        if not 0 < self.factor <= 1:
            raise ValueError(f"factor={factor!r}: must be in (0, 1].")
        if isinstance(period, bool) or not isinstance(period, int) \
                or period < 1:
            raise ValueError(f"period={period!r}: must be an integer >= 1.")
        self.period = period

    def __call__(self, epoch):
        return self.sigma0 * self.factor ** (epoch // self.period)

    def get_config(self):
        return {"sigma0": self.sigma0, "factor": self.factor,
                "period": self.period}


class ExponentialDecay(NoiseSchedule):
    """``sigma0 * exp(-rate * epoch)``, rate >= 0."""

    def __init__(self, sigma0, rate=0.05):
        super().__init__(sigma0)
        self.rate = float(rate)
        if not self.rate >= 0 or not math.isfinite(self.rate):
            raise ValueError(f"rate={rate!r}: must be a finite number >= 0.")

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


def noise_per_step(schedule, *, steps_per_epoch, steps):
    """``[(sigma, count), ...]``: the run's steps grouped by their sigma."""
    if isinstance(steps_per_epoch, bool) or not isinstance(
            steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r}: must be a "
                         "positive integer.")
    out, epoch = [], 0
    while steps > 0:
        count = min(steps, steps_per_epoch)
        out.append((schedule(epoch), count))
        steps -= count
        epoch += 1
    return out


def schedule_epsilon(num_examples, batch_size, schedule, *, steps_per_epoch,
                     epochs=None, steps=None, delta=1e-5,
                     sampling="poisson"):
    """Epsilon after ``steps`` (or ``epochs`` whole epochs) under a schedule.

    Composes, for each epoch, ``steps_per_epoch`` subsampled Gaussian events
    with that epoch's sigma (RDP accountant, same assumptions as
    :func:`~keras_tempered_dp.privacy.accounting.compute_epsilon`).
    """
    if (epochs is None) == (steps is None):
        raise ValueError("Give exactly one of epochs= and steps=.")
    if steps is None:
        steps = int(epochs) * steps_per_epoch
    parts = noise_per_step(schedule, steps_per_epoch=steps_per_epoch,
                           steps=steps)
    for sigma, _ in parts:
        _check(num_examples, batch_size, sigma, delta, sampling)
    if not parts:
        return 0.0
    if any(sigma == 0 for sigma, _ in parts):
        return math.inf
    # RDP adds up over composed events: one cached vector per distinct
    # sigma keeps the per-epoch callback linear in the number of epochs.
    total = sum(count * _rdp_one_step(num_examples, batch_size, sigma,
                                      sampling)
                for sigma, count in parts)
    orders = _accountant(sampling)._orders
    return float(rdp_privacy_accountant.compute_epsilon(orders, total,
                                                        delta)[0])


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(num_examples, batch_size, sigma, sampling):
    """RDP at every order of one step (dp_accounting's own computation)."""
    accountant = _accountant(sampling)
    accountant.compose(dp_sgd_event(num_examples, batch_size, sigma, 1,
                                    sampling))
    return np.asarray(accountant._rdp, dtype=float)


def calibrate_schedule(target_epsilon, num_examples, batch_size, schedule, *,
                       steps_per_epoch, epochs, delta=1e-5,
                       sampling="poisson", tolerance=1e-3):
    """``schedule`` with the smallest sigma0 whose run ends at epsilon <=
    ``target_epsilon`` (bisection; the shape of the decay is kept).

    >>> s = calibrate_schedule(3.0, 60000, 256, StepDecay(1.0, 0.8, 5),
    ...                        steps_per_epoch=235, epochs=20)
    >>> eps = schedule_epsilon(60000, 256, s, steps_per_epoch=235,
    ...                        epochs=20)
    >>> bool(2.99 < eps <= 3.0)
    True
    """
    def eps(sigma0):
        return schedule_epsilon(
            num_examples, batch_size, schedule.with_sigma0(sigma0),
            steps_per_epoch=steps_per_epoch, epochs=epochs, delta=delta,
            sampling=sampling)

    return schedule.with_sigma0(
        smallest_noise(eps, target_epsilon, tolerance, "sigma0"))

__all__ = ["NoiseSchedule", "ConstantNoise", "StepDecay", "ExponentialDecay",
           "TimeBasedDecay", "SCHEDULES", "noise_per_step",
           "schedule_epsilon", "calibrate_schedule", "compute_epsilon"]

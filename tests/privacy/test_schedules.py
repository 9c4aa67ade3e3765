"""Noise schedules: epsilon equals the composition done directly with
dp_accounting; the scheduler drives the engine and the callback reports it."""

import math

import dp_accounting
import keras
import numpy as np
import pytest

from keras_tempered_dp.callbacks import EpsilonCallback, NoiseScheduler
from keras_tempered_dp.privacy.accounting import (
    RDP_ORDERS,
    Segment,
    compute_epsilon,
)
from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.privacy.schedules import (
    ConstantNoise,
    ExponentialDecay,
    StepDecay,
    TimeBasedDecay,
    calibrate_schedule,
    schedule_epsilon,
)
from keras_tempered_dp.privacy.state import get_dp_state

N, B, PER_EPOCH, DELTA = 60000, 256, 235, 1e-5


def _direct(sigmas, steps_per_epoch=PER_EPOCH, extra_steps=0):
    """One Poisson-subsampled Gaussian event per step, composed directly."""
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    for sigma in sigmas:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            B / N, dp_accounting.GaussianDpEvent(sigma)), steps_per_epoch)
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("schedule, sigmas", [
    (StepDecay(2.0, factor=0.5, period=2), [2.0, 2.0, 1.0, 1.0, 0.5]),
    (ExponentialDecay(1.5, rate=0.2),
     [1.5 * math.exp(-0.2 * e) for e in range(5)]),
    (TimeBasedDecay(1.5, rate=0.5), [1.5 / (1 + 0.5 * e) for e in range(5)]),
])
def test_schedule_epsilon_equals_direct_composition(schedule, sigmas):
    assert [schedule(e) for e in range(5)] == pytest.approx(sigmas)
    got = schedule_epsilon(N, B, schedule, steps_per_epoch=PER_EPOCH,
                           epochs=5, delta=DELTA)
    assert got == pytest.approx(_direct(sigmas), rel=1e-9)
    # Decaying noise costs more than holding sigma0 throughout.
    assert got > compute_epsilon(N, B, sigmas[0], steps=5 * PER_EPOCH,
                                 delta=DELTA)


def test_constant_schedule_is_plain_dp_sgd_and_partial_epochs_count():
    assert schedule_epsilon(N, B, ConstantNoise(1.1), steps_per_epoch=235,
                            epochs=60) == pytest.approx(
        compute_epsilon(N, B, 1.1, steps=60 * 235), rel=1e-12)
    got = schedule_epsilon(N, B, StepDecay(2.0, 0.5), steps_per_epoch=235,
                           steps=235 + 100, delta=DELTA)
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    for sigma, count in [(2.0, 235), (1.0, 100)]:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            B / N, dp_accounting.GaussianDpEvent(sigma)), count)
    assert got == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)


def test_calibrated_schedule_meets_the_target():
    schedule = calibrate_schedule(2.0, N, B, ExponentialDecay(1.0, 0.1),
                                  steps_per_epoch=PER_EPOCH, epochs=10,
                                  delta=DELTA)
    assert schedule.rate == 0.1
    sigmas = [schedule(e) for e in range(10)]
    eps = _direct(sigmas)
    assert 2.0 * 0.99 < eps <= 2.0 + 1e-9


@pytest.mark.parametrize("make, match", [
    (lambda: StepDecay(1.0, factor=1.5), "factor"),
    (lambda: StepDecay(1.0, period=0), "period"),
    (lambda: ExponentialDecay(0.0), "sigma0"),
    (lambda: TimeBasedDecay(1.0, rate=-1), "rate"),
])
def test_bad_schedules_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _digits_like(n=40):
    rng = np.random.default_rng(0)
    return (rng.uniform(size=(n, 8, 8, 1)).astype("float32"),
            np.arange(n) % 10)


def test_fit_with_scheduler_logs_exact_epsilon_and_noise():
    from keras_tempered_dp.models import digits_cnn
    x, y = _digits_like()
    model = digits_cnn()
    schedule = StepDecay(3.0, factor=0.5, period=1)
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=3.0,
               learning_rate=0.1)
    callback = EpsilonCallback(40, 10, delta=1e-3)
    history = model.fit(
        x, y, batch_size=10, epochs=3, verbose=0,
        callbacks=[callback, NoiseScheduler(schedule)])
    # One segment per epoch sigma, ready for a checkpoint.
    assert callback.segments() == tuple(
        Segment(40, 10, 4, sigma) for sigma in (3.0, 1.5, 0.75))
    assert history.history["noise_multiplier"] == [3.0, 1.5, 0.75]
    assert get_dp_state(model).engine.noise_multiplier == 0.75
    for epochs, eps in enumerate(history.history["epsilon"], start=1):
        accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
        for e in range(epochs):
            accountant.compose(dp_accounting.PoissonSampledDpEvent(
                10 / 40, dp_accounting.GaussianDpEvent(schedule(e))), 4)
        assert eps == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)


def test_lowered_noise_outside_a_schedule_is_accounted_as_it_ran():
    # The step records the sigma it used: a noise lowered by any callback
    # is composed for the steps it ran (it used to be refused at the
    # epoch's end; now the epsilon is simply the true one).
    from keras_tempered_dp.models import digits_cnn
    x, y = _digits_like()
    model = digits_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               learning_rate=0.1)

    class Sneaky(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            get_dp_state(self.model).engine.noise_multiplier = 0.5

    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0,
                        callbacks=[Sneaky(), EpsilonCallback(40, 10,
                                                             delta=1e-3)])
    assert history.history["epsilon"][0] == pytest.approx(
        compute_epsilon(40, 10, 0.5, steps=4, delta=1e-3), rel=1e-12)


def test_schedule_yielding_bad_noise_refused_by_name():
    class Broken(ConstantNoise):
        def __call__(self, epoch):
            return float("inf") if epoch == 1 else self.sigma0

    with pytest.raises(ValueError, match=r"schedule\(1\)=inf"):
        schedule_epsilon(N, B, Broken(1.0), steps_per_epoch=10, epochs=2,
                         delta=DELTA)


def test_schedule_segments_group_steps_by_epoch():
    from keras_tempered_dp.privacy.schedules import schedule_segments
    assert schedule_segments(N, B, StepDecay(2.0, 0.5), steps_per_epoch=10,
                             steps=25) == [Segment(N, B, 10, 2.0),
                                           Segment(N, B, 10, 1.0),
                                           Segment(N, B, 5, 0.5)]

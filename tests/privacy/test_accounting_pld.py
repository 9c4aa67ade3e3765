"""The PLD accountant against dp_accounting used directly, and against RDP.

The reference composes each run's events itself, one ``PoissonSampledDpEvent``
per step group, in dp_accounting's ``PLDAccountant`` (the package goes through
``Segment.event`` and a cache). PLD is the tighter analysis of the same
mechanism, so on every setting of a grid its epsilon must be at most RDP's.
"""

import math

import dp_accounting
import pytest

from keras_tempered_dp.privacy.accounting import (
    PLD_DISCRETIZATION,
    Segment,
    calibrate_noise_multiplier,
    compose_epsilon,
    compute_epsilon,
    privacy_statement,
)
from keras_tempered_dp.privacy.schedules import (
    StepDecay,
    calibrate_schedule,
    schedule_epsilon,
)


def direct_pld(parts, delta):
    """epsilon of ``parts`` = [(q, sigma, steps)], dp_accounting directly."""
    accountant = dp_accounting.pld.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=PLD_DISCRETIZATION)
    for q, sigma, steps in parts:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("n, b, sigma, steps, delta", [
    (60000, 256, 1.1, 235 * 60, 1e-5),     # Abadi et al.'s MNIST
    (60000, 2048, 2.0, 30 * 40, 1e-5),
    (50000, 512, 1.5, 98 * 10, 1e-5),
    (1000, 10, 0.8, 300, 1e-4),
    (100, 100, 3.0, 5, 1e-3),              # q = 1: no subsampling
])
def test_compute_epsilon_equals_dp_accounting(n, b, sigma, steps, delta):
    got = compute_epsilon(n, b, sigma, steps=steps, delta=delta,
                          accountant="pld")
    assert got == pytest.approx(direct_pld([(b / n, sigma, steps)], delta),
                                rel=1e-9)


def test_segments_composed_exactly():
    segments = [Segment(1000, 20, 50, 0.9), Segment(1000, 50, 10, 2.0),
                Segment(1000, 20, 7, 0.9)]
    got = compose_epsilon(segments, delta=1e-4, accountant="pld")
    want = direct_pld([(0.02, 0.9, 50), (0.05, 2.0, 10), (0.02, 0.9, 7)],
                      1e-4)
    assert got == pytest.approx(want, rel=1e-6)


def test_microbatching_halves_sigma_in_the_analysis():
    got = compute_epsilon(1000, 50, 2.0, steps=100, delta=1e-4,
                          used_microbatching=True, accountant="pld")
    assert got == pytest.approx(direct_pld([(0.05, 1.0, 100)], 1e-4),
                                rel=1e-9)


@pytest.mark.parametrize("q", [0.001, 0.03, 1.0])
@pytest.mark.parametrize("sigma", [0.7, 1.5, 5.0])
@pytest.mark.parametrize("steps", [1, 300, 2000])
def test_pld_at_most_rdp_on_a_grid(q, sigma, steps):
    n = 100000
    b = max(1, round(q * n))
    rdp = compute_epsilon(n, b, sigma, steps=steps, delta=1e-6)
    pld = compute_epsilon(n, b, sigma, steps=steps, delta=1e-6,
                          accountant="pld")
    assert 0 < pld <= rdp


def test_no_noise_and_no_steps():
    assert compute_epsilon(100, 10, 0.0, steps=3, delta=1e-3,
                           accountant="pld") == math.inf
    assert compute_epsilon(100, 10, 1.0, steps=0, delta=1e-3,
                           accountant="pld") == 0.0


def test_calibration_meets_the_target_with_less_noise_than_rdp():
    target, run = 2.7, dict(num_examples=60000, batch_size=2048, epochs=40)
    pld = calibrate_noise_multiplier(target, **run, accountant="pld")
    rdp = calibrate_noise_multiplier(target, **run)
    steps = 40 * 30
    assert direct_pld([(2048 / 60000, pld, steps)], 1e-5) <= target
    # within the tolerance of the smallest sigma that meets it
    assert direct_pld([(2048 / 60000, pld * (1 - 2e-3), steps)],
                      1e-5) > target
    assert pld < 0.95 * rdp


def test_schedule_epsilon_and_calibration():
    schedule = StepDecay(2.0, factor=0.8, period=2)
    got = schedule_epsilon(10000, 100, schedule, steps_per_epoch=100,
                           epochs=5, delta=1e-5, accountant="pld")
    want = direct_pld([(0.01, schedule(e), 100) for e in range(5)], 1e-5)
    assert got == pytest.approx(want, rel=1e-6)
    assert got < schedule_epsilon(10000, 100, schedule, steps_per_epoch=100,
                                  epochs=5, delta=1e-5)
    # Calibration under the schedule, on a shorter run (each try composes
    # one PLD per epoch).
    tuned = calibrate_schedule(1.5, 10000, 100, schedule,
                               steps_per_epoch=100, epochs=3,
                               accountant="pld", tolerance=1e-2)
    eps = schedule_epsilon(10000, 100, tuned, steps_per_epoch=100, epochs=3,
                           accountant="pld")
    assert 1.4 < eps <= 1.5


def test_statement_names_the_accountant():
    pld = privacy_statement(60000, 256, 1.1, epochs=60, accountant="pld")
    rdp = privacy_statement(60000, 256, 1.1, epochs=60)
    assert pld.startswith("(2.385, 1e-05)-DP") and "PLD accountant" in pld
    assert rdp.startswith("(2.600, 1e-05)-DP") and "RDP accountant" in rdp


@pytest.mark.parametrize("call", [
    lambda: compute_epsilon(100, 10, 1.0, steps=3, delta=1e-3,
                            accountant="gdp"),
    lambda: compose_epsilon([], delta=1e-3, accountant="PLD"),
    lambda: calibrate_noise_multiplier(1.0, 100, 10, steps=3, delta=1e-3,
                                       accountant=None),
])
def test_unknown_accountant_refused(call):
    with pytest.raises(ValueError, match="accountant=.*rdp, pld"):
        call()


def test_pld_without_poisson_sampling_refused():
    with pytest.raises(ValueError, match="accountant='pld' with sampling="
                       "'without_replacement'.*use accountant='rdp'"):
        compute_epsilon(100, 10, 1.0, steps=3, delta=1e-3,
                        sampling="without_replacement", accountant="pld")

import math

import dp_accounting
import pytest

from keras_tempered_dp.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_epsilon,
    privacy_statement,
)


def _direct_epsilon(n, batch, sigma, steps, delta):
    # Independent reference: dp_accounting used directly, its default orders.
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            batch / n, dp_accounting.GaussianDpEvent(sigma)), steps)
    return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)


def test_reference_value_2_597():
    eps = compute_epsilon(60000, 256, 1.1, epochs=60, delta=1e-5)
    assert eps == pytest.approx(2.597, abs=5e-4)
    steps = math.ceil(60 * 60000 / 256)
    assert eps == pytest.approx(_direct_epsilon(60000, 256, 1.1, steps, 1e-5),
                                rel=1e-3)


@pytest.mark.parametrize("n,batch,sigma,steps,delta", [
    (60000, 512, 1.23, 4690, 1e-5),
    (60000, 2048, 2.15, 1172, 1e-5),
    (1438, 64, 1.0, 200, 1e-4),
    (50000, 1024, 0.8, 100, 1e-6),
])
def test_matches_dp_accounting_directly(n, batch, sigma, steps, delta):
    ours = compute_epsilon(n, batch, sigma, steps=steps, delta=delta)
    assert ours == pytest.approx(
        _direct_epsilon(n, batch, sigma, steps, delta), rel=2e-2)
    # Our grid is finer than the default one, so never worse.
    assert ours <= _direct_epsilon(n, batch, sigma, steps, delta) + 1e-9


def test_microbatching_halves_noise():
    assert compute_epsilon(60000, 256, 2.2, epochs=5,
                           used_microbatching=True) == pytest.approx(
        compute_epsilon(60000, 256, 1.1, epochs=5), rel=1e-12)


def test_monotone_and_edges():
    e1 = compute_epsilon(60000, 256, 1.0, epochs=1)
    e2 = compute_epsilon(60000, 256, 1.0, epochs=2)
    e3 = compute_epsilon(60000, 256, 2.0, epochs=2)
    assert 0 < e1 < e2 and e3 < e2
    assert compute_epsilon(100, 10, 1.0, steps=0) == 0.0
    assert compute_epsilon(100, 10, 0.0, steps=1) == math.inf


def test_without_replacement_uses_replace_one_relation():
    direct = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            60000, 256, dp_accounting.GaussianDpEvent(1.1)), 1000))
    assert compute_epsilon(60000, 256, 1.1, steps=1000,
                           sampling="without_replacement") == pytest.approx(
        direct.get_epsilon(1e-5), rel=2e-2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_examples=0), "num_examples=0"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(batch_size=100000), "batch_size=100000"),
    (dict(noise_multiplier=-1), "noise_multiplier=-1"),
    (dict(delta=0), "delta=0"),
    (dict(delta=1.5), "delta=1.5"),
    (dict(sampling="shuffle"), "sampling='shuffle'"),
])
def test_bad_arguments_named(kwargs, message):
    args = dict(num_examples=60000, batch_size=256, noise_multiplier=1.0,
                epochs=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compute_epsilon(**args)


def test_needs_exactly_one_of_epochs_and_steps():
    with pytest.raises(ValueError, match="exactly one of epochs"):
        compute_epsilon(100, 10, 1.0)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        compute_epsilon(100, 10, 1.0, epochs=1, steps=10)


@pytest.mark.parametrize("target", [1.0, 2.93, 8.0])
def test_calibration_meets_target_tightly(target):
    sigma = calibrate_noise_multiplier(target, 60000, 256, epochs=20)
    assert compute_epsilon(60000, 256, sigma, epochs=20) <= target
    assert compute_epsilon(60000, 256, sigma * 0.99, epochs=20) > target


def test_calibration_rejects_bad_target():
    with pytest.raises(ValueError, match="target_epsilon=0"):
        calibrate_noise_multiplier(0, 60000, 256, epochs=1)


def test_statement_names_assumptions():
    text = privacy_statement(60000, 256, 1.1, epochs=60)
    assert "(2.597, 1e-05)-DP" in text
    assert "Poisson" in text and "14063 steps" in text

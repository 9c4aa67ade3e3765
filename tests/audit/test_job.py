"""The audit end to end on the digits: real training runs, real canaries.

- Without privacy (no noise; for input canaries also no effective clip) the
  audit must find a large lower bound.
- With DP the lower bound must stay below the accounted epsilon; and an
  engine whose noise is secretly ten times too small must be caught (its
  bound rises above the epsilon the accountant claims).
- The gradient canaries' statistic against its closed form: with no noise
  an included canary scores exactly C times the steps it joined, an
  excluded one 0; with noise an excluded canary's score is N(0, T (sigma
  C)^2).
- The inclusion draws are secret: they come from the OS, not from any seed
  of the training.
"""

import json

import numpy as np
import pytest

from keras_tempered_dp.audit import canaries as canaries_module
from keras_tempered_dp.audit.canaries import (
    GradientCanaryCallback,
    draw_inclusion,
)
from keras_tempered_dp.audit.gradient_canaries import GradientCanaries
from keras_tempered_dp.audit.job import AuditConfig, audit
from keras_tempered_dp.privacy.clipping.backend.tensorflow import (
    noise as noise_module,
)


def _audit(tmp_path, **kwargs):
    args = dict(dataset="digits", epochs=10, batch_size=64,
                output_dir=str(tmp_path / "audit"), verbose=0, noise_seed=5,
                canary_seed=7, num_canaries=500)
    args.update(kwargs)
    return audit(**args)


def test_non_private_run_gradient_canaries_large_bound(tmp_path):
    report = _audit(tmp_path, noise_multiplier=0)
    assert report["accounted_epsilon"] == float("inf")
    # 500 canaries cap the one-run bound near 4.1 (all guesses right).
    assert report["one_run"]["epsilon"] > 3.5, report["one_run"]
    assert report["canary_mia"]["auc"] > 0.99
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["one_run"] == report["one_run"]
    stored = np.load(tmp_path / "audit" / "canaries.npz")
    assert stored["scores"].shape == (500,)
    assert int(stored["included"].sum()) == report["included"]


def test_non_private_run_input_canaries_large_bound(tmp_path):
    report = _audit(tmp_path, canaries="input", noise_multiplier=0,
                    l2_norm_clip=1e6, epochs=30, num_canaries=400)
    assert report["one_run"]["epsilon"] > 2.5, report["one_run"]
    assert report["canary_mia"]["auc"] > 0.9
    # 400 canaries and 400 held-back examples out, then one of the two back
    # per canary: N does not depend on the secret coins.
    assert report["training"]["num_examples"] == 1438 - 400


def test_dp_run_bound_stays_below_its_epsilon(tmp_path):
    report = _audit(tmp_path, noise_multiplier=3.0)
    accounted = report["accounted_epsilon"]
    assert 0 <= report["one_run"]["epsilon"] < accounted
    assert report["held_out_threshold"]["epsilon"] < accounted
    assert "Consistent" in report["statement"]


def test_too_little_noise_is_caught(tmp_path, monkeypatch):
    """A bug that adds a tenth of the noise the accountant is told about."""
    honest = noise_module.noised_sums
    monkeypatch.setattr(
        noise_module, "noised_sums",
        lambda sums, stddev, generator: honest(sums, stddev / 10, generator))
    report = _audit(tmp_path, noise_multiplier=3.0)
    assert report["one_run"]["epsilon"] > report["accounted_epsilon"]
    assert "CONTRADICTS THE ACCOUNTANT" in report["statement"]


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_gradient_canary_statistic_against_its_closed_form(sigma):
    import keras

    from keras_tempered_dp.privacy.compile import compile_dp
    from keras_tempered_dp.privacy.sampling import poisson_batches
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 10)).astype("float32")
    y = rng.integers(0, 3, 1000)
    model = keras.Sequential([keras.Input((10,)),
                              keras.layers.Dense(64, activation="tanh"),
                              keras.layers.Dense(3)])
    clip, steps = 0.5, 100
    compile_dp(model, l2_norm_clip=clip, noise_multiplier=sigma,
               expected_batch_size=100, learning_rate=0.1, noise_seed=1)
    included = draw_inclusion(600, seed=2)
    canaries = GradientCanaries(included, sampling_rate=0.1, seed=3)
    model.fit(poisson_batches(x, y, 100, seed=4), steps_per_epoch=10,
              epochs=steps // 10, verbose=0,
              callbacks=[GradientCanaryCallback(canaries)])
    scores, joined = canaries.scores(), canaries.times_sampled()
    assert np.all(joined[~included] == 0)
    # Included canaries join each step with probability q = 0.1.
    assert abs(joined[included].mean() - 0.1 * steps) < 1.0
    if sigma == 0:
        np.testing.assert_allclose(scores, clip * joined, atol=1e-4)
    else:
        std = np.std(scores[~included])
        assert std == pytest.approx(np.sqrt(steps) * sigma * clip, rel=0.1)
        assert abs(np.mean(scores[~included])) < 4 * std / np.sqrt(
            (~included).sum())


def test_inclusion_draws_are_secret_by_default(tmp_path):
    assert AuditConfig().canary_seed is None
    assert not np.array_equal(draw_inclusion(200), draw_inclusion(200))
    # Same training seeds, the canary seed left to the OS: other draws.
    drawn = []
    for name in ("a", "b"):
        _audit(tmp_path / name, epochs=1, num_canaries=60, canary_seed=None)
        drawn.append(np.load(tmp_path / name / "audit" /
                             "canaries.npz")["included"])
    assert not np.array_equal(*drawn)


def test_seeded_draws_repeat():
    np.testing.assert_array_equal(draw_inclusion(50, seed=3),
                                  draw_inclusion(50, seed=3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(canaries="pixels"), "canaries='pixels'"),
    (dict(num_canaries=49), "num_canaries=49"),
    (dict(num_canaries=True), "num_canaries=True"),
    (dict(confidence=1.0), "confidence=1.0"),
    (dict(canary_seed=-1), "canary_seed=-1"),
    (dict(strategy="mirrored", cpu_devices=2), "strategy='mirrored'"),
    (dict(canaries="input", num_canaries=5000), "half the training set"),
    (dict(resume=True), "resume=True"),
])
def test_bad_settings_refused_before_anything_is_written(tmp_path, kwargs,
                                                          match):
    with pytest.raises(ValueError, match=match):
        _audit(tmp_path, **kwargs)
    assert not (tmp_path / "audit" / "audit.json").exists()


def test_more_canaries_than_weights_refused(tmp_path):
    import keras

    from keras_tempered_dp.privacy.compile import compile_dp
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    canaries = GradientCanaries(draw_inclusion(10, seed=0),
                                sampling_rate=0.5)
    with pytest.raises(ValueError, match="10 gradient canaries need"):
        model.fit(np.zeros((4, 2)), np.zeros(4), batch_size=2, verbose=0,
                  callbacks=[GradientCanaryCallback(canaries)])


def test_gradient_canaries_need_the_engine():
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    callback = GradientCanaryCallback(GradientCanaries(
        draw_inclusion(10, seed=0), sampling_rate=0.5))
    with pytest.raises(ValueError, match="Use input-space canaries"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 2)), verbose=0,
                  callbacks=[callback])


def test_mislabelled_canaries_have_wrong_labels(rng):
    x = rng.normal(size=(100, 3))
    y = rng.integers(0, 4, 100)
    keep = np.arange(100)
    (xr, yr), (xc, yc) = canaries_module.mislabelled_canaries(
        np.column_stack([x, keep]), y, 30, rng)
    original = y[xc[:, -1].astype(int)]
    assert len(xr) == 70 and np.all(yc != original)
    assert set(xr[:, -1].astype(int)).isdisjoint(xc[:, -1].astype(int))

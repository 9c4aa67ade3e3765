"""Behaviour: DP training with tempered sigmoids learns real data."""

import keras
import numpy as np
import pytest

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.privacy.compile import compile_dp


def test_dp_fit_on_digits_beats_chance_clearly(digits):
    (x, y), (xt, yt) = digits
    x, y = x[:1400], y[:1400]
    model = keras.Sequential([keras.Input((8, 8, 1)),
                                 keras.layers.Flatten()])
    model.add(keras.layers.Dense(64))
    model.add(TemperedSigmoid(s=2, T=2, o=1))
    model.add(keras.layers.Dense(10))
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.5, momentum=0.9, batch_size=56,
               num_examples=len(x))
    history = model.fit(x, y, batch_size=56, epochs=8, verbose=0,
                        callbacks=[EpsilonCallback(len(x), 56, delta=1e-4)])
    _, accuracy = model.evaluate(xt, yt, verbose=0)
    epsilon = history.history["epsilon"][-1]
    assert np.isfinite(epsilon) and epsilon < 10
    assert accuracy > 0.6, accuracy  # chance is 0.1


def _small_train(tmp_path, **kwargs):
    from keras_tempered_dp.training import train
    args = dict(dataset="digits", epochs=4, batch_size=64, noise_multiplier=1.0,
                output_dir=str(tmp_path / "run"), verbose=0, noise_seed=3)
    args.update(kwargs)
    return train(**args)


def test_train_writes_every_output(tmp_path):
    import json
    import os

    from keras_tempered_dp.privacy.accounting import compute_epsilon
    results = _small_train(tmp_path)
    folder = tmp_path / "run"
    for name in ("results.json", "log.csv", "model.keras"):
        assert (folder / name).exists(), name
    assert any((folder / "tensorboard" / "train").iterdir())
    saved = json.loads((folder / "results.json").read_text())
    assert saved["config"]["dataset"] == "digits"
    assert [round(e["epoch"]) for e in saved["epochs"]] == [0, 1, 2, 3]
    steps = 4 * round(1438 / 64)
    expected = compute_epsilon(1438, 64, 1.0, steps=steps, delta=1e-5)
    assert saved["epsilon"] == expected
    assert saved["epochs"][-1]["epsilon"] == expected
    assert 0.5 < saved["test_accuracy"] <= 1
    assert "Poisson" in saved["privacy"] and saved["wall_time_s"] > 0
    assert os.path.exists(folder / "checkpoint" / "model.keras")
    assert results == saved


def test_target_epsilon_is_met(tmp_path):
    results = _small_train(tmp_path, epochs=2, noise_multiplier=None,
                           target_epsilon=2.0)
    assert 1.99 < results["epsilon"] <= 2.0


def test_pld_accountant_calibrates_less_noise_and_says_so(tmp_path):
    import json

    import dp_accounting
    rdp = _small_train(tmp_path / "rdp", epochs=2, noise_multiplier=None,
                       target_epsilon=2.0)
    pld = _small_train(tmp_path / "pld", epochs=2, noise_multiplier=None,
                       target_epsilon=2.0, accountant="pld")
    assert 1.99 < pld["epsilon"] <= 2.0
    sigma = pld["config"]["noise_multiplier"]
    assert sigma < 0.97 * rdp["config"]["noise_multiplier"]
    # epsilon every epoch and at the end, against dp_accounting directly
    n, b = pld["config"]["num_examples"], 64
    steps = round(n / b)
    for epochs, row in enumerate(pld["epochs"], 1):
        direct = dp_accounting.pld.PLDAccountant(
            value_discretization_interval=1e-4)
        direct.compose(dp_accounting.PoissonSampledDpEvent(
            b / n, dp_accounting.GaussianDpEvent(sigma)), steps * epochs)
        assert row["epsilon"] == pytest.approx(
            direct.get_epsilon(pld["config"]["delta"]), rel=1e-6)
    saved = json.loads((tmp_path / "pld" / "run" / "results.json")
                       .read_text())
    assert saved["accountant"] == "pld"
    assert saved["config"]["accountant"] == "pld"
    assert "PLD accountant" in saved["privacy"]
    assert "RDP accountant" in rdp["privacy"]
    with pytest.raises(ValueError, match="accountant='gdp'"):
        _small_train(tmp_path / "bad", accountant="gdp")


def test_resume_ends_with_the_same_epsilon(tmp_path):
    uninterrupted = _small_train(tmp_path / "a", epochs=4)
    # An "interrupted" run: 2 epochs, then resumed to 4.
    _small_train(tmp_path / "b", epochs=2)
    resumed = _small_train(tmp_path / "b", epochs=4, resume=True)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["epsilon"] == uninterrupted["epsilon"]
    assert [e["epsilon"] for e in resumed["epochs"]] == \
        [e["epsilon"] for e in uninterrupted["epochs"]]
    assert len(resumed["epochs"]) == 4


def test_shuffled_sampling_says_what_its_epsilon_assumes(tmp_path):
    results = _small_train(tmp_path, epochs=1, sampling="shuffle")
    assert "not a proof for shuffling" in results["privacy"]


def test_train_argument_errors(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="give one or the other"):
        _small_train(tmp_path, target_epsilon=1.0)
    with pytest.raises(ValueError, match="sampling='random'"):
        _small_train(tmp_path, sampling="random")
    with pytest.raises(ValueError, match="not a known activation"):
        _small_train(tmp_path, activation="swishy")


def test_recipe_options_with_a_schedule_report_exact_epsilon(tmp_path):
    """Augmentation, accumulation, EMA and a decaying noise schedule in one
    run, its noise calibrated for the target under the schedule."""
    import pytest

    from keras_tempered_dp.privacy.schedules import (
        StepDecay,
        schedule_epsilon,
    )
    results = _small_train(
        tmp_path, epochs=3, noise_multiplier=None, target_epsilon=4.0,
        augmentation_multiplicity=2, crop_padding=1, flip=False,
        ema_decay=0.9, physical_batch_size=32, noise_schedule="step",
        noise_decay=0.5)
    schedule = StepDecay(results["config"]["noise_multiplier"], 0.5, 1)
    steps = round(1438 / 64)
    for epoch, row in enumerate(results["epochs"]):
        assert row["noise_multiplier"] == pytest.approx(schedule(epoch))
        assert row["epsilon"] == pytest.approx(schedule_epsilon(
            1438, 64, schedule, steps_per_epoch=steps,
            steps=(epoch + 1) * steps), rel=1e-12)
    assert 3.99 < results["epsilon"] <= 4.0
    assert "StepDecay" in results["privacy"]
    assert 0.3 < results["test_accuracy"] <= 1


def test_resume_with_schedule_and_average(tmp_path):
    import numpy as np

    args = dict(noise_multiplier=2.0, noise_schedule="exponential",
                noise_decay=0.3, ema_decay=0.5)
    uninterrupted = _small_train(tmp_path / "a", epochs=3, **args)
    _small_train(tmp_path / "b", epochs=2, **args)
    resumed = _small_train(tmp_path / "b", epochs=3, resume=True, **args)
    assert resumed["resumed_from_epoch"] == 2
    assert [e["epsilon"] for e in resumed["epochs"]] == \
        [e["epsilon"] for e in uninterrupted["epochs"]]
    assert [e["noise_multiplier"] for e in resumed["epochs"]] == \
        [e["noise_multiplier"] for e in uninterrupted["epochs"]]
    # The average continued from the checkpoint, not from scratch.
    ema = np.load(tmp_path / "b" / "run" / "checkpoint" / "ema.npz")
    assert int(ema["updates"]) == 3 * round(1438 / 64)


def test_quantile_clipping_run_logs_its_clip(tmp_path):
    # Every norm is below C = 1000 at first: the estimate shrinks C.
    results = _small_train(tmp_path, epochs=2, clipping="quantile",
                           l2_norm_clip=1000.0, target_quantile=0.5)
    clips = [e["l2_norm_clip"] for e in results["epochs"]]
    assert 0 < clips[1] < clips[0] < 1000.0
    assert results["config"]["target_quantile"] == 0.5


def test_seeded_resume_does_not_replay_noise(tmp_path, monkeypatch):
    """With noise_seed set, the resumed part draws new noise and batches."""
    from keras_tempered_dp.privacy.clipping.backend.tensorflow import (
        engine as engine_module,
    )
    seeds = []
    original = engine_module.ClippingEngine._setup

    def spy(self, config, *args):  # every engine is configured here
        seeds.append(config.noise_seed)
        original(self, config, *args)

    monkeypatch.setattr(engine_module.ClippingEngine, "_setup", spy)
    _small_train(tmp_path, epochs=1)
    _small_train(tmp_path, epochs=2, resume=True)
    assert seeds[0] == 3 and seeds[1] not in (None, 3)


def test_resume_continues_the_adaptive_clip(tmp_path):
    import json
    first = _small_train(tmp_path, epochs=1, clipping="quantile",
                         l2_norm_clip=1000.0)
    state = json.loads(
        (tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["l2_norm_clip"] == pytest.approx(
        first["epochs"][0]["l2_norm_clip"], rel=1e-6)
    resumed = _small_train(tmp_path, epochs=2, clipping="quantile",
                           l2_norm_clip=1000.0, resume=True)
    # It went on shrinking from where it stopped, not from 1000.
    # (Restarted at 1000 it would end near the first epoch's value again.)
    assert resumed["epochs"][1]["l2_norm_clip"] < 0.5 * state["l2_norm_clip"]


@pytest.mark.parametrize("model, activation", [
    ("vit", "gelu"), ("sequence_lstm", "tanh")])
def test_transformer_and_lstm_train_and_save(tmp_path, model, activation):
    """``train --model=vit|sequence_lstm``: the whole run (DP fit, epsilon,
    the saved model) with attention and recurrent units."""
    import json
    _small_train(tmp_path, model=model, activation=activation, epochs=1)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["model"] == model
    assert 0 < results["epsilon"] < 10
    loaded = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert loaded.count_params() > 0

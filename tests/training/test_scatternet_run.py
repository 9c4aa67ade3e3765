"""train() with a ScatterNet model: features computed once, the same
training as running the scattering every step, a saved model that takes
images, and the refusals."""

import json
import os

import keras
import numpy as np
import pytest

from keras_tempered_dp.privacy.accounting import compute_epsilon
from keras_tempered_dp.training import clear_feature_cache, train
from keras_tempered_dp.training import features


def _train(tmp_path, name="run", **kwargs):
    args = dict(dataset="digits", model="scatternet_linear", epochs=3,
                batch_size=128, learning_rate=2.0, noise_multiplier=1.0,
                output_dir=str(tmp_path / name), verbose=0, noise_seed=5)
    args.update(kwargs)
    return train(**args)


def _weights(folder):
    return keras.models.load_model(os.path.join(folder, "model.keras")) \
        .get_weights()


@pytest.mark.parametrize("model", ["scatternet_linear", "scatternet_cnn"])
def test_precomputed_features_train_as_the_whole_model_does(tmp_path,
                                                            model):
    """Same seeds, same Poisson batches and noise: training the head on
    precomputed features gives the weights that training the whole model
    (scattering every step) gives, and the same epsilon."""
    pre = _train(tmp_path, "pre", model=model, activation="tanh")
    whole = _train(tmp_path, "whole", model=model, activation="tanh",
                   precompute_features=False)
    assert pre["feature_time_s"] is not None
    assert whole["feature_time_s"] is None
    for a, b in zip(_weights(tmp_path / "pre"), _weights(tmp_path / "whole")):
        np.testing.assert_allclose(a, b, atol=2e-4)
    assert pre["epsilon"] == whole["epsilon"] == pytest.approx(
        compute_epsilon(pre["config"]["num_examples"], 128, 1.0,
                        steps=sum(e["steps"] for e in pre["ledger"]),
                        delta=pre["config"]["delta"]))
    assert abs(pre["test_accuracy"] - whole["test_accuracy"]) < 0.02


def test_saved_model_takes_images_and_scores_as_reported(tmp_path, digits):
    results = _train(tmp_path)
    model = keras.models.load_model(str(tmp_path / "run" / "model.keras"))
    assert model.input_shape == (None, 8, 8, 1)
    assert [layer.name for layer in model.layers][:2] == \
        ["scattering", "feature_norm"]
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    (_, _), (xt, yt) = digits
    _, accuracy = model.evaluate(xt, yt, verbose=0)
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["precompute_features"] is True


def test_features_are_reused_by_the_next_run(tmp_path, capsys):
    clear_feature_cache()  # earlier tests scattered the digits too
    _train(tmp_path, "a", verbose=1, epochs=1)
    assert len(features._LAST_SCATTERING) == 1
    _train(tmp_path, "b", verbose=1, epochs=1, model="scatternet_cnn",
           activation="tanh")  # the same front: scattering + group norm
    out = capsys.readouterr().out
    assert out.count("Fixed features") == 2
    assert out.count("scattering reused from the previous run") == 1


def test_resume_continues_the_head_and_refuses_a_changed_front(tmp_path):
    _train(tmp_path, epochs=2)
    resumed = _train(tmp_path, epochs=3, resume=True)
    assert resumed["resumed_from_epoch"] == 2
    assert len(resumed["ledger"]) == 3
    from keras_tempered_dp.training.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="precompute_features: True "
                       "-> False"):
        _train(tmp_path, epochs=4, resume=True, precompute_features=False)


def test_augmentation_with_precomputed_features_is_refused(tmp_path):
    with pytest.raises(ValueError, match="augmentation_multiplicity=2 and "
                       "precompute_features=True: augmentation crops"):
        _train(tmp_path, augmentation_multiplicity=2)
    assert not (tmp_path / "run").exists()
    # Without precomputation the scattering runs on the augmented copies.
    results = _train(tmp_path, augmentation_multiplicity=2, epochs=1,
                     precompute_features=False, crop_padding=1)
    assert np.isfinite(results["test_accuracy"])


def test_images_too_small_for_the_scattering_fail_before_training(
        tmp_path):
    """Images smaller than 2^J fail in the model builder, the model and
    the scattering's rule named, nothing written."""
    x = np.zeros((256, 3, 3, 1), "float32")
    y = np.arange(256) % 10
    with pytest.raises(ValueError, match=r"model='scatternet_linear' does "
                       r"not fit .* needs images of at least 2\^J = 4"):
        _train(tmp_path, data=((x, y), (x, y)))
    assert not (tmp_path / "run").exists()


def test_linear_model_records_no_activation_and_resumes_under_any(
        tmp_path):
    """scatternet_linear has no activation: none is recorded, and a resume
    that names another one continues the same model (a CNN's is
    refused)."""
    first = _train(tmp_path, epochs=1, activation="tanh")
    assert first["config"]["activation"] is None
    resumed = _train(tmp_path, epochs=2, resume=True, activation="relu")
    assert resumed["resumed_from_epoch"] == 1
    from keras_tempered_dp.training.checkpoint import CheckpointError
    _train(tmp_path, "cnn", epochs=1, model="scatternet_cnn",
           activation="tanh")
    with pytest.raises(CheckpointError, match="activation: 'tanh' -> "
                       "'relu'"):
        _train(tmp_path, "cnn", epochs=2, resume=True,
               model="scatternet_cnn", activation="relu")

"""The search space, for users of plain keras-tuner."""

import keras_tuner
import numpy as np

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import digits_cnn
from keras_tempered_dp.privacy.state import get_dp_state
from keras_tempered_dp.tuning import TemperedSigmoidHyperModel


def test_space_defaults_pinned():
    hp = keras_tuner.HyperParameters()
    TemperedSigmoidHyperModel(noise_multiplier=1.1).build(hp)
    assert hp.values == {"s": 2.0, "T": 2.0, "o": 1.0, "l2_norm_clip": 1.0,
                         "learning_rate": 0.15}
    space = {p.name: p for p in hp.space}
    assert space["T"].sampling == "log" and space["s"].sampling == "linear"
    # The space contains tanh (2, 2, 1) strictly inside its ranges.
    for name, value in (("s", 2.0), ("T", 2.0), ("o", 1.0)):
        assert space[name].min_value < value < space[name].max_value


def test_built_model_uses_the_trial_values():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("s", 3.0)
    hp.Fixed("T", 0.5)
    model = TemperedSigmoidHyperModel(noise_multiplier=1.1).build(hp)
    acts = [layer for layer in model.layers
            if isinstance(layer, TemperedSigmoid)]
    assert acts and all((a.s, a.T, a.o) == (3.0, 0.5, 1.0) for a in acts)
    assert get_dp_state(model).config.noise_multiplier == 1.1


def test_real_two_trial_search(tmp_path, digits):
    (x, y), (xt, yt) = digits
    hypermodel = TemperedSigmoidHyperModel(
        noise_multiplier=0.5, model_fn=digits_cnn, input_shape=(8, 8, 1))
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective="val_accuracy", max_trials=2, seed=3,
        directory=str(tmp_path), project_name="ts")
    tuner.search(x[:256], y[:256], validation_data=(xt[:128], yt[:128]),
                 batch_size=64, epochs=1, verbose=0)
    trials = tuner.oracle.get_best_trials(num_trials=2)
    assert len(trials) == 2 and trials[0].score >= trials[1].score
    best = tuner.get_best_hyperparameters()[0].values
    assert best == trials[0].hyperparameters.values
    # The score is the trained model's validation accuracy, as re-measured.
    model = tuner.get_best_models(num_models=1)[0]
    _, accuracy = model.evaluate(xt[:128], yt[:128], verbose=0)
    assert accuracy == np.float32(trials[0].score)


def test_scatternet_spaces():
    """The ScatterNet CNN searches (s, T, o) like the paper's CNNs; the
    linear model has no activation, so its space is the learning rate and
    the clip; with precomputed features a trial builds the head only."""
    from keras_tempered_dp.models import scatternet_cnn, scatternet_linear
    hp = keras_tuner.HyperParameters()
    model = TemperedSigmoidHyperModel(
        noise_multiplier=1.1, model_fn=scatternet_cnn).build(hp)
    assert set(hp.values) == {"s", "T", "o", "l2_norm_clip", "learning_rate"}
    assert model.input_shape == (None, 28, 28, 1)
    hp = keras_tuner.HyperParameters()
    model = TemperedSigmoidHyperModel(
        noise_multiplier=1.1, model_fn=scatternet_linear,
        precomputed_features=True).build(hp)
    assert hp.values == {"l2_norm_clip": 1.0, "learning_rate": 0.15}
    assert model.input_shape == (None, 7 * 7 * 81)  # the features
    assert get_dp_state(model).config.noise_multiplier == 1.1

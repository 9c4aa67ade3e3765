import keras_tuner
import numpy as np
import pytest

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


def test_search_without_tensorboard_says_what_to_install(monkeypatch,
                                                         tmp_path):
    import sys

    import pytest

    from keras_tempered_dp.tuning import search
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not importable
    with pytest.raises(ImportError, match="pip install tensorboard"):
        search(dataset="digits", max_trials=1, epochs=1,
               output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


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


def test_real_search_on_scatternet_features(tmp_path):
    from keras_tempered_dp.tuning import search
    best, noise = search(dataset="digits", model="scatternet_cnn",
                         max_trials=2, epochs=1, target_epsilon=3.0,
                         output_dir=str(tmp_path))
    assert {"s", "T", "o", "learning_rate", "l2_norm_clip"} <= set(best)
    assert noise > 0


@pytest.fixture
def no_trial_may_run(monkeypatch):
    """Makes any trial an error, so a setting that should be refused
    cannot start an endless (or meaningless) search instead."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a trial ran")
    monkeypatch.setattr(keras_tuner.RandomSearch, "search", refuse)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_trials=0), "max_trials=0: must be >= 1"),
    (dict(max_trials=-1), "max_trials=-1: must be >= 1"),
    (dict(max_trials=2.5), "max_trials=2.5: must be an integer"),
    (dict(epochs=0), "epochs=0: must be >= 1"),
    (dict(batch_size=0), "batch_size=0: must be >= 1"),
    (dict(delta=0.0), "delta=0.0: must be > 0"),
    (dict(delta=-1e-5), "delta=-1e-05: must be > 0"),
    (dict(target_epsilon=0.0), "target_epsilon=0.0: must be > 0"),
    (dict(validation_fraction=0.0),
     "validation_fraction=0.0: must be in (0, 1)"),
    (dict(validation_fraction=1.0),
     "validation_fraction=1.0: must be in (0, 1)"),
    (dict(accountant="moments"), "accountant='moments': must be one of"),
    (dict(model="resnet"), "model='resnet': must be one of"),
])
def test_search_refuses_bad_settings_before_any_work(
        kwargs, message, tmp_path, no_trial_may_run, monkeypatch):
    import keras_tempered_dp.data
    from keras_tempered_dp.tuning import search

    def no_data(*args, **kw):
        raise AssertionError("data was loaded")
    monkeypatch.setattr(keras_tempered_dp.data, "load_dataset", no_data)
    with pytest.raises(ValueError) as info:
        search(dataset="digits", output_dir=str(tmp_path / "o"), **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs,message", [
    # 1438 digits, 10% held out: 1295 training examples, 1280 in batches.
    (dict(delta=1 / 1000), "delta=0.001: must be below 1/N"),
    (dict(batch_size=2000), "batch_size=2000: larger than the training"),
])
def test_search_refuses_settings_too_large_for_the_data(
        kwargs, message, tmp_path, no_trial_may_run):
    from keras_tempered_dp.tuning import search
    with pytest.raises(ValueError, match=message):
        search(dataset="digits", output_dir=str(tmp_path / "o"), **kwargs)
    assert not (tmp_path / "o").exists()

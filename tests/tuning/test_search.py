"""search(): the plain search, and every refusal before any work."""

import json
import re

import numpy as np
import pytest

from keras_tempered_dp.tuning import search
from keras_tempered_dp.tuning.trials import TrialTuner


def test_search_without_tensorboard_says_what_to_install(monkeypatch,
                                                         tmp_path):
    import sys

    import pytest

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not importable
    with pytest.raises(ImportError, match="pip install tensorboard"):
        search(dataset="digits", max_trials=1, epochs=1,
               output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_real_search_on_scatternet_features(tmp_path):
    results = search(dataset="digits", model="scatternet_cnn", max_trials=2,
                     epochs=1, target_epsilon=3.0, output_dir=str(tmp_path))
    best = results["best"]["hyperparameters"]
    assert {"s", "T", "o", "learning_rate", "l2_norm_clip"} <= set(best)
    # The saved model takes images: the front joined back to the head.
    from keras_tempered_dp.privacy.saving import load_model
    model = load_model(str(tmp_path / "model.keras"))
    assert model.input_shape == (None, 8, 8, 1)


@pytest.fixture
def no_trial_may_run(monkeypatch):
    """Makes any trial an error, so a setting that should be refused
    cannot start an endless (or meaningless) search instead."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a trial ran")
    monkeypatch.setattr(TrialTuner, "search", refuse)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_trials=0), "max_trials=0: must be >= 1"),
    (dict(max_trials=-1), "max_trials=-1: must be >= 1"),
    (dict(max_trials=2.5), "max_trials=2.5: must be an integer"),
    (dict(epochs=0), "epochs=0: must be >= 1"),
    (dict(batch_size=0), "batch_size=0: must be >= 1"),
    (dict(delta=0.0), "delta=0.0: must be in (0, 1)"),
    (dict(delta=-1e-5), "delta=-1e-05: must be in (0, 1)"),
    (dict(target_epsilon=0.0), "target_epsilon=0.0: must be > 0"),
    (dict(validation_fraction=0.0),
     "validation_fraction=0.0: must be in (0, 1)"),
    (dict(validation_fraction=1.0),
     "validation_fraction=1.0: must be in (0, 1)"),
    (dict(accountant="moments"), "accountant='moments': must be one of"),
    (dict(model="resnet"), "model='resnet': must be one of"),
    (dict(dataset="cifar100"), "dataset='cifar100': must be one of"),
    (dict(delta=1.0), "delta=1.0: must be in (0, 1)"),
    (dict(l2_norm_clip=0.0), "l2_norm_clip=0.0: must be > 0"),
    (dict(learning_rate_range=(2.0, 1.0)), "low must be below high"),
    (dict(learning_rate_range=(0.0, 1.0)),
     "learning_rate_range[0]=0.0: must be > 0"),
    (dict(learning_rate_range="0.1"), "learning_rate_range='0.1': must be "
     "a pair"),
    (dict(output_dir=__file__), "is a file, not a folder"),
    (dict(seed=-1), "seed=-1: must be >= 0"),
    (dict(seed=None), "seed=None: must be an integer"),
    # The private search: K is secret and random; its law is checked.
    (dict(private=True, max_trials=3), "max_trials=3 with private=True"),
    (dict(private=True, accountant="pld"), "accountant='pld' with private"),
    (dict(private=True, trials_mean=1.0), "trials_mean=1.0: must be > 1"),
    (dict(private=True, trials_mean=0.5, trials_distribution="poisson"),
     "trials_mean=0.5: must be >= 1"),
    (dict(private=True, trials_eta=-1.0), "trials_eta=-1.0: must be > -1"),
    (dict(private=True, trials_distribution="uniform"),
     "trials_distribution='uniform': must be one of"),
    (dict(private=True, score_noise=0.0), "score_noise=0.0: must be > 0"),
    (dict(private="yes"), "private='yes': must be one of"),
])
def test_search_refuses_bad_settings_before_any_work(
        kwargs, message, tmp_path, no_trial_may_run, monkeypatch):
    import keras_tempered_dp.data

    def no_data(*args, **kw):
        raise AssertionError("data was loaded")
    monkeypatch.setattr(keras_tempered_dp.data, "load_dataset", no_data)
    kwargs = {"dataset": "digits", "output_dir": str(tmp_path / "o"),
              **kwargs}
    with pytest.raises(ValueError) as info:
        search(**kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs,message", [
    # 1438 training digits, 143 held out: 1295 training examples.
    (dict(delta=1 / 1000), "delta=0.001: must be below 1/N"),
    (dict(batch_size=2000), "batch_size=2000: larger than the 1295"),
    (dict(private=True, target_epsilon=0.01, score_noise=1.0),
     "selection and scores alone spend"),
    (dict(public_validation=np.zeros((3, 8, 8, 1))),
     "public_validation: must be a pair"),
    (dict(public_validation=(np.zeros((3, 8, 8, 1)), np.zeros(2))),
     "3 inputs and 2 labels"),
    (dict(public_validation=(np.zeros((3, 28, 28, 1)), np.zeros(3))),
     "inputs of shape (28, 28, 1), but the training data's are (8, 8, 1)"),
    (dict(public_validation=(np.zeros((3, 8, 8, 1)), np.array([0, 1, 10]))),
     "public validation labels hold 10"),
    (dict(public_validation=(np.full((3, 8, 8, 1), np.nan), np.zeros(3))),
     "public validation data has 192 non-finite values"),
])
def test_search_refuses_settings_too_large_for_the_data(
        kwargs, message, tmp_path, no_trial_may_run):
    with pytest.raises((ValueError, FloatingPointError),
                       match=re.escape(message)):
        search(dataset="digits", output_dir=str(tmp_path / "o"), **kwargs)
    assert not (tmp_path / "o").exists()


def test_plain_search_states_each_trial_and_their_composition(tmp_path):
    import dp_accounting
    results = search(dataset="digits", max_trials=3, epochs=1,
                     target_epsilon=2.0, output_dir=str(tmp_path))
    trials, plan = results["trials"], results["trial_settings"]
    assert len(trials) == 3
    n, b, steps = plan["num_examples"], plan["batch_size"], plan["steps"]
    assert n == 1295 and steps == 20  # round(1295 / 64) Poisson steps
    # Every trial's epsilon is its model's ledger's, at the target.
    assert all(1.99 < t["epsilon"] <= 2.0 for t in trials)
    # Releasing all three: their composition, as dp_accounting composes it.
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            b / n, dp_accounting.GaussianDpEvent(plan["noise_multiplier"])),
        3 * steps))
    assert results["epsilon_all_trials"] == pytest.approx(
        accountant.get_epsilon(1e-5), rel=1e-2)
    assert results["epsilon_all_trials"] > results["trial_epsilon"]
    assert "validation examples have no privacy guarantee" in results[
        "unprotected"]
    # The best is the highest validation accuracy; the file says the same.
    best = max(trials, key=lambda t: t["validation_accuracy"])
    assert results["best"]["hyperparameters"] == best["hyperparameters"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["best"] == results["best"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras",
                                                          "results.json"]
    # The released model's ledger holds every trial's steps: the ranking
    # read them all.
    from keras_tempered_dp.privacy.recording import privacy_ledger
    from keras_tempered_dp.privacy.saving import load_model
    ledger = privacy_ledger(load_model(str(tmp_path / "model.keras")))
    assert ledger.epsilon(delta=1e-5) == pytest.approx(
        results["epsilon_all_trials"], rel=1e-9)


def test_a_diverged_trial_scores_minus_infinity_and_the_search_goes_on(
        tmp_path, monkeypatch):
    from keras_tempered_dp import training
    from keras_tempered_dp.training.guards import TrainingDivergedError
    real, calls = training.train, []

    def first_diverges(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDivergedError("The training loss became nan")
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "train", first_diverges)
    results = search(dataset="digits", max_trials=2, epochs=1,
                     output_dir=str(tmp_path))
    first, second = results["trials"]
    assert "loss became nan" in first["failed"]
    assert first["validation_accuracy"] is None
    assert results["best"]["hyperparameters"] == second["hyperparameters"]


def test_any_other_trial_error_stops_the_search_and_writes_nothing(
        tmp_path, monkeypatch):
    from keras_tempered_dp import training

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(training, "train", broken)
    with pytest.raises(Exception, match="a trial failed, so the search "
                       "stopped.*out of memory"):
        search(dataset="digits", max_trials=2, epochs=1,
               output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad,message", [
    ("nan", "The training data has 1 non-finite value"),
    ("label", "The training labels hold 12"),
])
def test_bad_private_data_stops_the_search_before_any_trial(
        bad, message, tmp_path, digits, no_trial_may_run):
    (x, y), test = digits
    x, y = x.copy(), y.copy()
    if bad == "nan":
        x[5, 0, 0, 0] = np.nan
    else:
        y[7] = 12
    with pytest.raises((ValueError, FloatingPointError), match=message):
        search(dataset="digits", data=((x, y), test), private=True,
               output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_data_as_lists_is_taken_and_a_wrong_structure_refused(
        tmp_path, digits, monkeypatch):
    monkeypatch.setattr(TrialTuner, "search", lambda self, **kw: None)
    (x, y), (xt, yt) = digits
    lists = ((x.tolist(), y.tolist()), (xt.tolist(), yt.tolist()))
    results = search(dataset="digits", data=lists, max_trials=1,
                     output_dir=str(tmp_path / "o"))
    assert results["trial_settings"]["num_examples"] == 1295
    with pytest.raises(ValueError, match=re.escape(
            "data: must be ((x, y), (x_test, y_test)) arrays")):
        search(dataset="digits", data=(x, y), output_dir=str(tmp_path / "p"))

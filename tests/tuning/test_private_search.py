"""search(private=True): real trials on the digits, the statement checked
against dp_accounting, nothing released that shows K."""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import types
import zipfile

import numpy as np
import pytest

from keras_tempered_dp.privacy.selection import TrialCount
from keras_tempered_dp.tuning import search
from keras_tempered_dp.tuning.trials import TrialTuner
from tests.conftest import run_fresh_python


def _leftover_work_folders():
    return set(glob.glob(os.path.join(tempfile.gettempdir(),
                                      "keras_tempered_dp_search_*")))


def test_private_search_on_digits(tmp_path):
    import dp_accounting
    from dp_accounting import dp_event
    before = _leftover_work_folders()
    results = search(dataset="digits", private=True, target_epsilon=3.0,
                     epochs=1, trials_mean=2.0, output_dir=str(tmp_path))
    plan = results["trial_settings"]
    # The whole search's epsilon, recomputed with dp_accounting's own
    # RepeatAndSelectDpEvent from what the results state: at the target.
    trial = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            plan["batch_size"] / plan["num_examples"],
            dp_accounting.GaussianDpEvent(plan["noise_multiplier"])),
            plan["steps"]),
        dp_accounting.GaussianDpEvent(20.0)])  # the score, sensitivity 1
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_event.RepeatAndSelectDpEvent(trial, 2.0, 0.0))
    assert results["epsilon"] <= 3.0
    assert results["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5),
                                               rel=1e-2)
    assert results["statement"].startswith(f"({results['epsilon']:.3f}, "
                                           "1e-05)-DP for each training")
    # Released: the best model, its values, its score; nothing that counts
    # or orders trials, and no time.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras",
                                                          "results.json"]
    assert set(results) == {"private", "delta", "target_epsilon",
                            "trial_settings", "best", "epsilon",
                            "trial_count", "score", "statement",
                            "not_covered"}
    assert set(results["best"]) == {"hyperparameters", "score",
                                    "test_accuracy", "model"}
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert _leftover_work_folders() <= before
    # The model loads in a fresh process with a ledger that states what
    # choosing it spent: the search's bound (not its one trial's, about
    # 1.8 here), from a trial of exactly the steps accounted.
    out = run_fresh_python(f"""
        from keras_tempered_dp.privacy.saving import load_model
        from keras_tempered_dp.privacy.recording import privacy_ledger
        model = load_model({str(tmp_path / "model.keras")!r})
        ledger = privacy_ledger(model)
        assert not ledger.segments and len(ledger.searches) == 1
        t = ledger.searches[0].trial
        print(t.num_examples, t.batch_size, t.steps, t.noise_multiplier,
              ledger.epsilon(delta=1e-5))
    """)
    n, b, steps, sigma, epsilon = out.split()
    assert (int(n), int(b), int(steps)) == (
        plan["num_examples"], plan["batch_size"], plan["steps"])
    assert float(sigma) == pytest.approx(plan["noise_multiplier"])
    assert float(epsilon) == pytest.approx(results["epsilon"], rel=1e-9)


def test_private_split_is_by_per_example_coins(tmp_path, monkeypatch):
    """Each example scores with probability validation_fraction, by its
    own coin: two searches hold out different numbers of examples."""
    sizes = set()
    monkeypatch.setattr(TrialTuner, "search", lambda self, **kw: None)
    for _ in range(4):
        results = search(dataset="digits", private=True, epochs=1,
                         trials_mean=2.0, output_dir=str(tmp_path / "o"))
        sizes.add(results["trial_settings"]["validation_examples"])
        assert results["best"] is None  # no trial ran (patched)
    assert len(sizes) > 1
    assert all(80 < size < 220 for size in sizes)  # about 10% of 1438


def test_public_validation_ranks_by_exact_accuracy(tmp_path, digits):
    from keras_tempered_dp.privacy.saving import load_model
    (x, y), (x_test, y_test) = digits
    public = (x_test[:200], y_test[:200])
    results = search(dataset="digits", data=((x, y), (x_test, y_test)),
                     private=True, epochs=1, trials_mean=2.0,
                     public_validation=public, output_dir=str(tmp_path))
    assert results["trial_settings"]["num_examples"] == len(x)  # all train
    assert "public validation set" in results["score"]
    assert "public validation set (no privacy cost)" in results["statement"]
    model = load_model(str(tmp_path / "model.keras"))
    _, accuracy = model.evaluate(*public, verbose=0)
    correct = round(float(accuracy) * 200)
    assert results["best"]["score"] == correct / 200


def test_private_score_is_the_noised_count(rng):
    """(correct + N(0, s^2)) / n_val, by its mean and spread."""
    plan = types.SimpleNamespace(validation=(None, np.zeros(500)),
                                 score_noise=10.0)
    tuner = types.SimpleNamespace(plan=plan, _rng=rng)
    scores = np.array([TrialTuner._score(tuner, 0.8) for _ in range(4000)])
    assert scores.mean() == pytest.approx(0.8, abs=0.002)
    assert scores.std() == pytest.approx(10.0 / 500, rel=0.05)
    plan.score_noise = None
    assert TrialTuner._score(tuner, 0.8) == 0.8


def test_poisson_k_of_zero_releases_nothing_but_the_statement(
        tmp_path, monkeypatch):
    monkeypatch.setattr(TrialCount, "sample", lambda self, rng=None: 0)
    (tmp_path / "model.keras").write_text("an earlier search's model")
    results = search(dataset="digits", private=True, epochs=1,
                     trials_distribution="poisson", trials_mean=1.0,
                     output_dir=str(tmp_path))
    assert results["best"] is None and "No trial trained" in results[
        "no_trial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert results["epsilon"] <= 3.0


SEARCH_WITH_K = """
import sys
from keras_tempered_dp.privacy.selection import TrialCount
TrialCount.sample = lambda self, rng=None: {k}
from keras_tempered_dp.cli import main
sys.exit(main(["tune", "--private", "--epochs=1", "--trials_mean=2",
               "--output_dir={out}"]))
"""


def test_nothing_printed_or_written_depends_on_k(tmp_path):
    """The same search with K = 1 and K = 3 trials: the same lines (numbers
    masked) on stdout and stderr, the same files, the same results keys."""
    seen = []
    for k in (1, 3):
        out = tmp_path / f"k{k}"
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(
                SEARCH_WITH_K.format(k=k, out=out))],
            capture_output=True, text=True, timeout=600,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert run.returncode == 0, run.stderr[-3000:]
        text = re.sub(r"[-+]?\d[\d.e+-]*", "#",
                      run.stdout + run.stderr).replace(str(out), "OUT")
        keys = sorted(json.loads((out / "results.json").read_text()))
        with zipfile.ZipFile(out / "model.keras") as archive:
            names = sorted(_names(json.loads(archive.read("config.json"))))
            members = sorted(archive.namelist())
        seen.append((sorted(text.splitlines()), keys,
                     sorted(p.name for p in out.iterdir()), names, members))
    # Keras numbers layers per session: without a fresh session per trial,
    # the winner's "conv2d_6" would say that K >= 4.
    assert seen[0] == seen[1]


def _names(config):
    """Every "name" in a saved model's config, recursively."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "name" and isinstance(value, str):
                yield value
            yield from _names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _names(value)


def test_a_private_trial_is_judged_by_its_weights_not_the_batch_loss(
        tmp_path, monkeypatch):
    """Trials train on after a non-finite loss (stop_on_non_finite_loss
    False), and a model with a non-finite weight is never kept."""
    import keras

    from keras_tempered_dp import training
    from keras_tempered_dp.tuning.trials import _finite_weights
    real, seen = training.train, []

    def spy(*args, **kwargs):
        seen.append(kwargs["stop_on_non_finite_loss"])
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "train", spy)
    monkeypatch.setattr(TrialCount, "sample", lambda self, rng=None: 1)
    search(dataset="digits", private=True, epochs=1, trials_mean=2.0,
           output_dir=str(tmp_path / "o"))
    assert seen == [False]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    (tmp_path / "m").mkdir()
    model.save(tmp_path / "m" / "model.keras")
    assert _finite_weights(str(tmp_path / "m"))
    model.layers[0].kernel.assign(np.full((3, 2), np.nan))
    model.save(tmp_path / "m" / "model.keras")
    assert not _finite_weights(str(tmp_path / "m"))


def test_a_private_search_withholds_a_failed_trials_message(
        tmp_path, monkeypatch):
    from keras_tempered_dp import training

    def broken(*args, **kwargs):
        raise RuntimeError("example 7 of the private data is odd")
    monkeypatch.setattr(training, "train", broken)
    with pytest.raises(Exception) as info:
        search(dataset="digits", private=True, epochs=1, trials_mean=2.0,
               output_dir=str(tmp_path / "o"))
    assert "RuntimeError; its message is withheld" in str(info.value)
    assert "example 7" not in str(info.value)
    assert not (tmp_path / "o").exists()

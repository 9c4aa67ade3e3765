"""The secret-trials oracle: K trials, drawn from OS entropy, never shown."""

import json

import keras_tuner
import pytest

from keras_tempered_dp.privacy import selection
from keras_tempered_dp.privacy.selection import TrialCount
from keras_tempered_dp.tuning import SecretTrialsOracle

STOPPED = keras_tuner.engine.trial.TrialStatus.STOPPED


def _space():
    hp = keras_tuner.HyperParameters()
    hp.Float("T", 0.25, 8.0, sampling="log")
    hp.Float("s", 0.5, 4.0)
    hp.Fixed("l2_norm_clip", 1.0)
    return hp


def _run_all(oracle):
    """What keras-tuner's search loop does: trials until STOPPED."""
    values = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == STOPPED:
            return values
        values.append(trial.hyperparameters.values)
        oracle.update_trial(trial.trial_id, {"score": 0.5})
        trial.status = keras_tuner.engine.trial.TrialStatus.COMPLETED
        oracle.end_trial(trial)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_runs_exactly_the_drawn_number_of_trials(k, monkeypatch, tmp_path,
                                                 capsys):
    monkeypatch.setattr(TrialCount, "sample", lambda self, rng=None: k)
    oracle = SecretTrialsOracle(TrialCount(mean=3.0), hyperparameters=_space())
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.verbose = 1  # asked to show progress, it still shows nothing
    values = _run_all(oracle)
    assert len(values) == k
    for v in values:  # inside the space, the fixed value kept
        assert 0.25 <= v["T"] <= 8.0 and 0.5 <= v["s"] <= 4.0
        assert v["l2_norm_clip"] == 1.0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_k_is_in_no_saved_state(monkeypatch):
    """Before any trial, what keras-tuner saves is the same whatever K is
    (its records of trials do count them: the private search deletes
    them)."""
    states = []
    for k in (1, 7):
        monkeypatch.setattr(TrialCount, "sample", lambda self, rng=None: k)
        oracle = SecretTrialsOracle(TrialCount(mean=3.0),
                                    hyperparameters=_space())
        states.append(json.dumps(oracle.get_state(), sort_keys=True))
    assert states[0] == states[1]
    assert "seed" not in json.loads(states[0])


def test_draws_come_from_os_entropy_only(monkeypatch, tmp_path):
    """Two oracles draw different values; with the OS entropy source
    pinned, the same values: no other randomness (and no seed) enters."""
    monkeypatch.setattr(TrialCount, "sample", lambda self, rng=None: 2)

    def two_searches(name):
        runs = []
        for _ in range(2):
            oracle = SecretTrialsOracle(TrialCount(mean=3.0),
                                        hyperparameters=_space())
            oracle._set_project_dir(str(tmp_path), name)
            runs.append(_run_all(oracle))
        return runs
    free = two_searches("free")
    assert free[0] != free[1]
    monkeypatch.setattr(selection.secrets, "randbits", lambda bits: 42)
    pinned = two_searches("pinned")
    assert pinned[0] == pinned[1]


@pytest.mark.parametrize("kwargs", [dict(max_trials=5), dict(seed=1),
                                    dict(max_retries_per_trial=2)])
def test_refuses_what_would_break_the_bound(kwargs):
    with pytest.raises(ValueError, match="sets it itself"):
        SecretTrialsOracle(TrialCount(), **kwargs)
    with pytest.raises(ValueError, match="must be a TrialCount"):
        SecretTrialsOracle(5)

"""The examples/ scripts run as documented (shortened)."""

import importlib.util
import pathlib

import pytest

from keras_tempered_dp.privacy.accounting import compute_epsilon

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_example_logs_epsilon_and_trains(capsys):
    accuracy, epsilon = _load("train_digits.py").run(epochs=2)
    # 1,400 examples in batches of 56: 25 steps an epoch.
    assert epsilon == pytest.approx(
        compute_epsilon(1400, 56, 1.0, steps=50, delta=1e-4), rel=1e-9)
    assert accuracy > 0.3  # chance is 0.1
    out = capsys.readouterr().out
    assert "epsilon" in out and "test accuracy" in out


def test_private_search_costs_meet_the_target():
    from keras_tempered_dp.privacy.selection import (
        TrialCount,
        search_epsilon,
        trial_rdp,
    )
    rows = _load("private_search_costs.py").costs(
        num_examples=5000, batch_size=100, steps=200, means=(3,),
        laws=(("truncated_negative_binomial", 1.0), ("poisson", 0.0)))
    assert [row[0] for row in rows] == ["one run, no search",
                                        "TNB, eta = 1", "Poisson"]
    for (name, mean, _, _, _, sigma, epsilon), law in zip(rows[1:], (
            TrialCount("truncated_negative_binomial", 3, 1.0),
            TrialCount("poisson", 3))):
        whole = search_epsilon(trial_rdp(5000, 100, sigma, 200,
                                         score_noise=20.0), law, delta=1e-5)
        assert 2.69 < whole <= 2.7
        assert epsilon < 2.7  # each trial spends less than the search
        assert sigma > rows[0][5]  # so it needs more noise than one run

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

"""train() refuses what would misstate privacy or waste a run, before
anything is written, and never leaves a results file for a failed run."""

import json

import numpy as np
import pytest

from keras_tempered_dp.training import train
from keras_tempered_dp.training.checkpoint import CheckpointError
from keras_tempered_dp.training.guards import NonFiniteError
from tests.training.support import run_args


def _args(tmp_path, **kwargs):
    return run_args(tmp_path, **dict(dict(epochs=2), **kwargs))


def _small_data(seed, n=256, nan_at=None):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    y = (np.arange(n) % 10).astype("int32")
    xt, yt = x[:64].copy(), y[:64].copy()
    if nan_at is not None:
        x[nan_at, 3, 3, 0] = np.nan
    return (x, y), (xt, yt)


@pytest.mark.parametrize("change, listed", [
    (dict(batch_size=16), "batch_size: 64 -> 16"),
    (dict(noise_multiplier=3.0), "noise_multiplier: 1.0 -> 3.0"),
    (dict(l2_norm_clip=0.5), "l2_norm_clip: 1.0 -> 0.5"),
    (dict(delta=1e-4), "delta: 1e-05 -> 0.0001"),
    (dict(sampling="shuffle"), "sampling: 'poisson' -> 'shuffle'"),
])
def test_resume_with_other_privacy_settings_is_refused(tmp_path, change,
                                                       listed):
    train(**_args(tmp_path, epochs=1, delta=1e-5))
    with pytest.raises(CheckpointError, match="differ from the checkpoint"
                       ) as error:
        train(**_args(tmp_path, **dict(dict(epochs=2, delta=1e-5,
                                             resume=True), **change)))
    assert listed in str(error.value)
    assert "--change_privacy" in str(error.value)


@pytest.mark.parametrize("change", [dict(activation="relu"),
                                    dict(s=3.0), dict(model="mnist_cnn")])
def test_resume_with_another_model_is_refused(tmp_path, change):
    train(**_args(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="different model"):
        train(**_args(tmp_path, resume=True, **change))


def test_changed_privacy_composes_both_parts_exactly(tmp_path):
    """Noise 0.3 for one epoch, then 3.0: epsilon is at least the first
    part's alone, and equals dp_accounting composing both."""
    import dp_accounting

    from keras_tempered_dp.privacy.accounting import (
        RDP_ORDERS,
        compute_epsilon,
    )
    first = train(**_args(tmp_path, epochs=1, noise_multiplier=0.3,
                          delta=1e-5))
    resumed = train(**_args(tmp_path, epochs=2, noise_multiplier=3.0,
                            delta=1e-5, resume=True, change_privacy=True))
    steps = round(1438 / 64)
    # dp_accounting composing both parts itself, at the package's orders.
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    q = 64 / 1438
    for sigma in (0.3, 3.0):
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                q, dp_accounting.GaussianDpEvent(sigma)), steps))
    reference = accountant.get_epsilon(1e-5)
    assert resumed["epsilon"] >= first["epsilon"]
    assert resumed["epsilon"] > 30  # the first epoch alone spent that much
    assert resumed["epsilon"] == pytest.approx(reference, rel=1e-9)
    assert resumed["epochs"][-1]["epsilon"] == pytest.approx(
        resumed["epsilon"], rel=1e-9)
    # Recomputed as if the whole run had used 3.0 it would be tiny.
    assert compute_epsilon(1438, 64, 3.0, steps=2 * steps) < 1
    assert [e["noise_multiplier"] for e in resumed["ledger"]] == [0.3, 3.0]


def test_nan_pixel_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(NonFiniteError, match="first in example 7"):
        train(**_args(tmp_path), data=_small_data(0, nan_at=7))
    assert not (tmp_path / "run").exists()


def test_diverging_loss_stops_without_results(tmp_path):
    with pytest.raises(NonFiniteError, match="epoch 1, step"):
        train(**_args(tmp_path, learning_rate=1e30, noise_multiplier=50.0,
                      l2_norm_clip=1e6), data=_small_data(1))
    assert not (tmp_path / "run" / "results.json").exists()


def test_test_labels_outside_the_classes_are_refused(tmp_path):
    (x, y), (xt, yt) = _small_data(2)
    yt[0] = 12
    with pytest.raises(ValueError, match="declares 10 classes"):
        train(**_args(tmp_path), data=((x, y), (xt, yt)))
    assert not (tmp_path / "run").exists()


def test_the_classes_are_declared_never_read_off_private_labels(tmp_path):
    # One training example labelled 12 used to make the released model 13
    # outputs wide: the architecture leaked a private label.
    (x, y), (xt, yt) = _small_data(2)
    y[5] = 12
    with pytest.raises(ValueError, match=r"hold 12 \(first at index 5\)"):
        train(**_args(tmp_path), data=((x, y), (xt, yt)))
    assert not (tmp_path / "run").exists()
    # Declared, the model has the declared width whatever the labels hold.
    results = train(**_args(tmp_path), data=((x, y), (xt, yt)),
                    num_classes=13)
    import keras
    model = keras.models.load_model(str(tmp_path / "run" / "model.keras"))
    assert model.output_shape[-1] == 13
    assert results["config"]["num_classes"] == 13


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        train(**_args(tmp_path))
    assert target.read_text() == "not a folder"


def test_earlier_run_is_not_overwritten_silently(tmp_path):
    train(**_args(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="--resume.*--overwrite"):
        train(**_args(tmp_path, epochs=1))
    again = train(**_args(tmp_path, epochs=1, overwrite=True))
    assert again["resumed_from_epoch"] == 0


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    train(**_args(tmp_path, epochs=1))
    model = tmp_path / "run" / "checkpoint" / "model.keras"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        train(**_args(tmp_path, resume=True))
    state = tmp_path / "run" / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:20])
    with pytest.raises(CheckpointError, match="cannot be read"):
        train(**_args(tmp_path, resume=True))


@pytest.mark.parametrize("settings, match", [
    (dict(batch_size=0), "batch_size=0: must be >= 1"),
    (dict(epochs=0), "epochs=0: must be >= 1"),
    (dict(delta=0.0), r"delta=0.0: must be in \(0, 1\)"),
    (dict(model="resnet"), "model='resnet': must be one of"),
    (dict(noise_multiplier=1.0, target_epsilon=2.0), "one or the other"),
    (dict(noise_schedule="step"), "needs noise_decay"),
    (dict(learning_rate=-1.0), "learning_rate=-1.0"),
    (dict(epoch=3), "Did you mean epochs"),
])
def test_bad_settings_are_named_before_training(tmp_path, settings, match):
    with pytest.raises((ValueError, TypeError), match=match):
        train(**_args(tmp_path, **settings))
    assert not (tmp_path / "run").exists()


def test_model_that_does_not_fit_the_data_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not fit this dataset"):
        train(**_args(tmp_path, model="mnist_cnn"))
    assert not (tmp_path / "run").exists()


def test_results_record_what_ran_on_resume(tmp_path):
    train(**_args(tmp_path, epochs=1))
    resumed = train(**_args(tmp_path, epochs=2, resume=True))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["activation"] == "tempered_sigmoid"
    assert [e["epoch"] for e in saved["ledger"]] == [0, 1]
    assert resumed["resumed_from_epoch"] == 1

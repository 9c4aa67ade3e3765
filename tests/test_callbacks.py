import csv

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.privacy.accounting import compute_epsilon
from keras_tempered_dp.privacy.compile import compile_dp


def _model():
    return tf.keras.Sequential([tf.keras.Input((6,)),
                                tf.keras.layers.Dense(4, activation="tanh"),
                                tf.keras.layers.Dense(3)])


def test_epsilon_every_epoch_in_history_csv_and_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 6)), rng.integers(0, 3, 100)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5,
               learning_rate=0.1)
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x, y, batch_size=20, epochs=3, verbose=0,
        callbacks=[EpsilonCallback(num_examples=100, batch_size=20,
                                   delta=1e-3),
                   tf.keras.callbacks.CSVLogger(str(csv_path)),
                   tf.keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    expected = [compute_epsilon(100, 20, 1.5, steps=5 * e, delta=1e-3)
                for e in (1, 2, 3)]
    np.testing.assert_allclose(history.history["epsilon"], expected)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["epsilon"]) for r in rows], expected)
    tags = set()
    for event_file in (tmp_path / "tb" / "train").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert "epoch_epsilon" in tags


def test_noise_read_from_tf_privacy_optimizer():
    from tensorflow_privacy import DPKerasSGDOptimizer
    model = _model()
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=2.0, noise_multiplier=0.9, num_microbatches=None,
        learning_rate=0.1), loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    callback = EpsilonCallback(num_examples=40, batch_size=10)
    model.fit(np.zeros((40, 6)), np.zeros(40), batch_size=10, epochs=1,
              verbose=0, callbacks=[callback])
    assert callback.epsilon_after(4) == pytest.approx(
        compute_epsilon(40, 10, 0.9, steps=4))


def test_microbatching_inferred_and_accounted():
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               num_microbatches=5)
    callback = EpsilonCallback(num_examples=100, batch_size=20)
    callback.set_model(model)
    assert callback.epsilon_after(10) == pytest.approx(
        compute_epsilon(100, 20, 1.0, steps=10))


def test_unknown_noise_is_a_clear_error():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="noise_multiplier is unknown"):
        model.fit(np.zeros((4, 6)), np.zeros((4, 3)), epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(4, 4)])


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="delta=2"):
        EpsilonCallback(100, 10, noise_multiplier=1.0, delta=2)

"""Whole models, noise and batches through the engine (clipping/engine.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import cifar10_cnn, mnist_cnn
from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.privacy.losses import per_example_loss
from tests.privacy.clipping.support import (
    L,
    _assert_matches_reference,
    _head,
    _images,
    _install,
    _labels,
    _median_clip,
)
from tests.privacy.reference import clipped_mean
from tests.privacy.stacks import needs_tf_privacy


@pytest.mark.parametrize("num_groups", [None, 3, 2])
def test_mnist_cnn(num_groups):
    model = mnist_cnn("tempered_sigmoid")
    x = np.random.default_rng(2).uniform(size=(6, 28, 28, 1))
    _assert_matches_reference(model, x.astype("float32"), _labels(6, 10),
                              num_groups)


def test_cifar10_cnn():
    model = cifar10_cnn("tanh")
    x = np.random.default_rng(3).uniform(size=(4, 32, 32, 3))
    _assert_matches_reference(model, x.astype("float32"), _labels(4, 10))


def test_functional_model_with_branches():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(3, 3, padding="same", activation="tanh")(inputs)
    b = L.Conv2D(3, 1)(inputs)
    merged = L.Add()([a, b])
    outputs = L.Dense(3)(L.Flatten()(TemperedSigmoid()(merged)))
    model = keras.Model(inputs, outputs)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


@needs_tf_privacy
def test_matches_tf_privacy_dp_keras_sgd_update():
    x = np.random.default_rng(4).uniform(size=(8, 28, 28, 1))
    x, y = x.astype("float32"), _labels(8, 10)
    ours = mnist_cnn("tempered_sigmoid")
    theirs = mnist_cnn("tempered_sigmoid")
    theirs.set_weights(ours.get_weights())
    compile_dp(ours, l2_norm_clip=0.3, noise_multiplier=0.0,
               learning_rate=0.5)
    compile_dp(theirs, l2_norm_clip=0.3, noise_multiplier=0.0,
               learning_rate=0.5, optimizer="dp_keras_sgd")
    ours.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_noise_std_and_freshness():
    model = _head(L.Dense(64), input_shape=(50,), classes=10)  # ~3.9k params
    engine = _install(model, clip=0.7, noise=1.3, noise_seed=11)
    x = tf.constant(_images((50,), 16))
    y = tf.constant(_labels(16, 10))
    clean = _install(model, clip=0.7, noise=0.0)  # the same model
    noiseless, _ = clean.compute_gradients(x, y)
    draws = []
    for _ in range(20):
        noisy, _ = engine.compute_gradients(x, y)
        draws.append(np.concatenate([np.ravel(a - b) for a, b in
                                     zip(noisy, noiseless)]))
    draws = np.array(draws)
    expected = 1.3 * 0.7 / 16
    assert draws.std() == pytest.approx(expected, rel=0.02)
    # 78k draws: the mean's standard error is 0.0036 * expected.
    assert abs(draws.mean()) < 0.02 * expected
    # Fresh each step: consecutive draws are uncorrelated.
    assert abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.05


def test_noise_seed_reproducible_and_distinct():
    def draw(seed):
        model = _head(L.Dense(4), input_shape=(3,))
        model.set_weights([np.ones(w.shape, "float32") * 0.1
                           for w in model.get_weights()])
        engine = _install(model, clip=1.0, noise=1.0, noise_seed=seed)
        x = tf.constant(np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))
        y = tf.constant(_labels(4))
        return [np.concatenate([np.ravel(g) for g in
                                engine.compute_gradients(x, y)[0]])
                for _ in range(2)]
    a1, a2 = draw(5)
    b1, _ = draw(5)
    c1, _ = draw(6)
    np.testing.assert_array_equal(a1, b1)
    assert not np.allclose(a1, a2) and not np.allclose(a1, c1)


def test_expected_batch_size_divides_the_sum():
    model = _head(L.Dense(4), input_shape=(3,))
    x, y = tf.constant(_images((3,), 6)), tf.constant(_labels(6))
    per_batch, _ = _install(model, clip=0.5).compute_gradients(x, y)
    per_expected, _ = _install(model, clip=0.5, expected_batch_size=10
                               ).compute_gradients(x, y)
    for a, b in zip(per_batch, per_expected):
        np.testing.assert_allclose(np.asarray(a) * 6 / 10, b, rtol=1e-6)


def test_microbatches_must_divide_the_batch_at_run_time():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               num_microbatches=4)
    with pytest.raises(ValueError, match="num_microbatches=4 does not divide"):
        model.train_on_batch(np.zeros((6, 28, 28, 1)), np.zeros(6))
    # A dataset whose batch size is unknown when the step is traced.
    data = tf.data.Dataset.from_tensor_slices(
        (np.zeros((14, 28, 28, 1), "float32"), np.zeros(14))).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="num_microbatches=4 does not divide"):
        model.fit(data, epochs=1, verbose=0)


def test_unknown_batch_size_when_traced_matches_reference():
    # Keras traces fit's step with an unknown batch dimension.
    model = mnist_cnn("tempered_sigmoid")
    x = np.random.default_rng(5).uniform(size=(6, 28, 28, 1))
    x, y = x.astype("float32"), _labels(6, 10)
    clip = _median_clip(model, x, y)
    engine = _install(model, clip=clip)
    step = tf.function(engine.compute_gradients, input_signature=[
        tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32)])
    grads, _ = step(tf.constant(x), tf.constant(y))
    expected, scales = clipped_mean(model, per_example_loss(model.loss), x,
                                    y, clip)
    for got, want, scale in zip(grads, expected, scales):
        np.testing.assert_allclose(np.asarray(got) / scale, want / scale,
                                   rtol=0, atol=1e-5)


def test_wide_resnet_matches_reference():
    from keras_tempered_dp.models import wide_resnet
    # groups=4: with one channel per group (16 groups of 16 channels) GN
    # cancels the convolutions' biases exactly, and comparing gradients that
    # are zero up to rounding says nothing.
    model = wide_resnet(10, 1, activation=TemperedSigmoid(),
                        input_shape=(8, 8, 3), num_classes=3, groups=4)
    x = np.random.default_rng(8).uniform(size=(4, 8, 8, 3))
    _assert_matches_reference(model, x.astype("float32"), _labels(4))


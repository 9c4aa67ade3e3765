import numpy as np
import pytest
import tensorflow as tf
from tensorflow_privacy import DPKerasSGDOptimizer
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import (
    GenericDPSGDOptimizer,
)

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import mnist_cnn
from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state


def test_compile_dp_uses_tf_privacy_and_per_example_loss():
    model = mnist_cnn()
    config = compile_dp(model, l2_norm_clip=0.5, noise_multiplier=1.3,
                        learning_rate=0.1, momentum=0.9,
                        optimizer="dp_keras_sgd")
    assert isinstance(model.optimizer, GenericDPSGDOptimizer)
    assert model.loss.reduction == "none"
    assert get_dp_state(model).config is config and config.noise_multiplier == 1.3
    assert model.optimizer._dp_sum_query._stddev == pytest.approx(0.65)


def test_fast_engine_is_the_default():
    model = mnist_cnn()
    config = compile_dp(model, l2_norm_clip=0.5, noise_multiplier=1.3,
                        learning_rate=0.1, momentum=0.9)
    assert config.optimizer == "fast"
    assert type(model.optimizer).__name__ == "SGD"
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    assert get_dp_state(model).engine.noise_multiplier == 1.3
    assert get_dp_state(model).engine.l2_norm_clip == 0.5


def test_make_private_refuses_tf_privacy_optimizer_and_uncompiled():
    from keras_tempered_dp.privacy.compile import make_private
    model = mnist_cnn()
    with pytest.raises(ValueError, match="needs a compiled model"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer="dp_keras_sgd")
    with pytest.raises(ValueError, match="twice"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


def test_expected_batch_size_needs_fast():
    with pytest.raises(ValueError, match="needs optimizer='fast'"):
        compile_dp(mnist_cnn(), l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer="dp_keras_sgd", expected_batch_size=64)


def test_vectorized_selectable():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer="vectorized_dp_keras_sgd")
    assert "vectorized" in type(model.optimizer).__module__


@pytest.mark.parametrize("kwargs,message", [
    (dict(noise_multiplier=-0.5), "^noise_multiplier=-0.5"),
    (dict(l2_norm_clip=0.0), "^l2_norm_clip=0.0"),
    (dict(num_microbatches=3, batch_size=32), "does not divide batch_size=32"),
    (dict(num_microbatches=8, batch_size=32, num_examples=100),
     "last batch of each epoch holds 4"),
])
def test_refusals(kwargs, message):
    args = dict(l2_norm_clip=1.0, noise_multiplier=1.0)
    args.update(kwargs)
    model = mnist_cnn()
    with pytest.raises(ValueError, match=message):
        compile_dp(model, **args)
    assert model.optimizer is None  # nothing half-done


def test_batchnorm_refused():
    model = tf.keras.Sequential([tf.keras.Input((4,)),
                                 tf.keras.layers.Dense(2),
                                 tf.keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="GroupNormalization"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("loss", ["mse", tf.keras.losses.MeanSquaredError(),
                                  tf.keras.losses.mean_squared_error])
def test_per_example_loss_shapes(loss):
    fn = per_example_loss(loss)
    value = fn(tf.zeros((5, 3)), tf.ones((5, 3)))
    assert value.shape == (5,)
    np.testing.assert_allclose(value, np.ones(5))


def test_users_own_compile_with_tf_privacy_and_epsilon():
    # The design's usage, verbatim in spirit: model.add(TemperedSigmoid),
    # the user's own DPKerasSGDOptimizer, epsilon in the logs.
    model = tf.keras.Sequential([tf.keras.Input((28, 28, 1)),
                                 tf.keras.layers.Conv2D(4, 3, strides=2)])
    model.add(TemperedSigmoid(s=2, T=2, o=1))
    model.add(tf.keras.layers.Flatten())
    model.add(tf.keras.layers.Dense(10))
    model.compile(
        optimizer=DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=1.1,
                                      num_microbatches=None,
                                      learning_rate=0.1),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE))
    x = np.random.default_rng(0).uniform(size=(64, 28, 28, 1))
    y = np.arange(64) % 10
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(64, 16)])
    eps = history.history["epsilon"]
    assert eps[0] < eps[1]


def test_paper_model_trains_with_compile_dp():
    model = mnist_cnn("tempered_sigmoid")
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.0,
               learning_rate=0.05, batch_size=8, num_examples=16)
    before = model.get_weights()
    model.fit(np.random.default_rng(0).uniform(size=(16, 28, 28, 1)),
              np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    assert any(np.abs(a - b).max() > 0
               for a, b in zip(before, model.get_weights()))

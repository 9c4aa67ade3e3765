"""What installing the engine refuses (clipping/installation.py, tap.py).

Shared layers and layers owning weights and sublayers at once train:
tests/privacy/clipping/test_any_model.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.clipping import (
    ClippingEngine,
)
from keras_tempered_dp.privacy.compile import make_private
from tests.privacy.clipping.support import (
    L,
    _head,
    _install,
)


def test_regularizers_refused_at_install():
    model = _head(L.Dense(3, kernel_regularizer="l2"), input_shape=(3,))
    with pytest.raises(ValueError, match="kernel_regularizer.*weight decay"):
        _install(model)


class _TiedTranspose(L.Layer):
    """A decoder reusing an encoder's kernel, transposed (tied weights)."""

    def __init__(self, source, **kwargs):
        super().__init__(**kwargs)
        self.source = source

    def build(self, shape):
        self.kernel = self.source.kernel

    def call(self, x):
        return tf.matmul(x, self.kernel, transpose_b=True)


def test_tied_weights_refused_naming_the_variable_and_layers():
    # Before the refusal the engine kept one layer's gradient for the shared
    # kernel: relative error 0.64 against the per-example reference.
    inputs = keras.Input((4,))
    encoder = L.Dense(3, use_bias=False, activation="tanh", name="encoder")
    outputs = _TiedTranspose(encoder, name="decoder")(encoder(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    # The variable's full name: "encoder/kernel:0" on Keras 2, its path
    # "encoder/kernel" on Keras 3 (whose name is the bare "kernel").
    with pytest.raises(ValueError, match=r"'encoder/kernel(:0)?' is used "
                       r"by the layers 'encoder', 'decoder'"):
        ClippingEngine(1.0, 0.0).install(model)
    with pytest.raises(ValueError, match="tied weights"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=0.0)


def test_batch_mixing_refused_by_the_engine_itself():
    model = _head(L.BatchNormalization(name="bn"), input_shape=(3,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="'bn'.*GroupNormalization"):
        ClippingEngine(1.0, 1.0).install(model)


def test_batchnorm_refused_by_make_private():
    model = _head(L.BatchNormalization(name="bn"), input_shape=(3,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="'bn'.*GroupNormalization"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)



class _LazyBatchNormModel(keras.Model):
    """A subclassed model that creates its layers in build: unbuilt at
    install, so the install-time checks see no layers."""

    def build(self, shape):
        self.dense = L.Dense(4)
        self.norm = L.BatchNormalization()
        self.head = L.Dense(3)
        super().build(shape)

    def call(self, x, training=False):
        return self.head(self.norm(self.dense(x), training=training))


def test_batch_norm_in_a_model_built_after_install_refused_before_a_step():
    model = _LazyBatchNormModel(name="lazy")
    engine = _install(model)
    with pytest.raises(ValueError, match="BatchNormalization"):
        model.fit(tf.ones((4, 3)), tf.constant([0, 1, 2, 0]), verbose=0)
    assert int(engine.steps_taken) == 0


def test_batch_norm_added_after_install_refused():
    model = keras.Sequential([keras.Input((3,)), L.Dense(4)])
    _install(model)
    model.add(L.BatchNormalization(center=False, scale=False))
    model.add(L.Dense(3))
    with pytest.raises(ValueError, match="BatchNormalization"):
        model.fit(tf.ones((4, 3)), tf.constant([0, 1, 2, 0]), verbose=0)


class _DropoutInside(L.Layer):
    """A leaf layer with weights and its own randomness: the generic route
    recomputes it, and each call would draw another mask."""

    def build(self, shape):
        self.w = self.add_weight(name="w", shape=(shape[-1], 4))

    def call(self, x, training=None):
        if training:
            x = tf.nn.dropout(x, 0.5)
        return tf.matmul(x, self.w)


class _Deterministic(_DropoutInside):
    def call(self, x, training=None):
        return tf.matmul(x, self.w)


def test_random_layer_on_the_generic_route_refused_before_an_update():
    # Otherwise its norm and its clipped sum come from different dropout
    # masks, and one example's contribution can exceed the clip (measured:
    # up to 1.8 C before this check).
    model = _head(_DropoutInside(name="noisy"), input_shape=(3,))
    engine = _install(model, clip=0.05)
    before = [w.numpy() for w in model.trainable_weights]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="noisy.{0,4} gave different outputs"):
        model.fit(tf.ones((4, 3)), tf.constant([0, 1, 2, 0]), batch_size=4,
                  verbose=0)
    for w, old in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), old)
    assert int(engine.steps_taken) == 0


def test_deterministic_layer_on_the_generic_route_still_trains():
    model = _head(_Deterministic(name="plain"), input_shape=(3,))
    engine = _install(model)
    model.fit(tf.ones((4, 3)), tf.constant([0, 1, 2, 0]), batch_size=4,
              verbose=0)
    assert int(engine.steps_taken) == 1

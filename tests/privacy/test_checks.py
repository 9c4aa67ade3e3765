import keras
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.checks import (
    check_microbatches,
    check_no_batch_mixing,
)
from keras_tempered_dp.stack import KERAS_3
from tests.privacy.stacks import needs_tf_privacy


def test_batchnorm_refused_with_reason_and_alternative():
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3),
        keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ValueError, match="'bn'.*BatchNormalization.*"
                       "GroupNormalization"):
        check_no_batch_mixing(model)


def test_nested_batchnorm_found():
    inner = keras.Sequential([keras.Input((4,)),
                                 keras.layers.BatchNormalization(
                                     name="inner_bn")])
    outer = keras.Sequential([keras.Input((4,)), inner])
    with pytest.raises(ValueError, match="inner_bn"):
        check_no_batch_mixing(outer)


def test_group_and_layer_norm_allowed():
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.GroupNormalization(2),
        keras.layers.LayerNormalization()])
    check_no_batch_mixing(model)


def test_microbatches_must_divide_batch():
    with pytest.raises(ValueError, match="num_microbatches=3 does not divide "
                       "batch_size=8"):
        check_microbatches(3, batch_size=8)


def test_microbatches_must_divide_last_batch():
    with pytest.raises(ValueError, match="last batch of each epoch holds 4 "
                       "examples"):
        check_microbatches(8, batch_size=16, num_examples=100)


def test_microbatches_ok():
    check_microbatches(None, batch_size=7, num_examples=100)
    check_microbatches(4, batch_size=16, num_examples=100)
    check_microbatches(4, batch_size=16, num_examples=96)


class _Block(keras.layers.Layer):
    """A custom layer holding its sublayers as attributes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.parts = [keras.layers.BatchNormalization(name="hidden_bn")]

    def call(self, x):
        return self.parts[0](self.dense(x))


class _MyBatchNorm(keras.layers.BatchNormalization):
    pass


@pytest.mark.parametrize("make", [
    lambda: keras.layers.BatchNormalization(name="bad"),
    lambda: (keras.layers.BatchNormalization(synchronized=True, name="bad")
             if KERAS_3 else
             keras.layers.experimental.SyncBatchNormalization(name="bad")),
    lambda: _MyBatchNorm(name="bad"),
    lambda: tf.compat.v1.keras.layers.BatchNormalization(name="bad"),
])
def test_every_batchnorm_variant_refused(make):
    model = keras.Sequential([keras.Input((4,)), make()])
    with pytest.raises(ValueError, match="'bad'"):
        check_no_batch_mixing(model)


def test_batchnorm_inside_custom_layer_refused_with_its_path():
    inputs = keras.Input((4,))
    outputs = _Block(name="block")(inputs)
    inner = keras.Model(inputs, outputs, name="inner")
    model = keras.Sequential([keras.Input((4,)), inner], name="outer")
    with pytest.raises(ValueError) as error:
        check_no_batch_mixing(model)
    message = str(error.value)
    assert "inner/block/hidden_bn" in message
    assert "every other example's gradient" in message
    assert "GroupNormalization" in message and "LayerNormalization" in message


def test_compile_dp_refuses_batchnorm_in_custom_layer_for_tf_privacy():
    from keras_tempered_dp.privacy.compile import compile_dp
    model = keras.Sequential([keras.Input((4,)), _Block()])
    with pytest.raises(ValueError, match="hidden_bn"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer="dp_keras_sgd")


@pytest.mark.parametrize("optimizer", [
    "fast", pytest.param("dp_keras_sgd", marks=needs_tf_privacy)])
@pytest.mark.parametrize("kwargs", [dict(kernel_regularizer="l2"),
                                    dict(activity_regularizer="l1")])
def test_regularizers_are_refused_before_training(optimizer, kwargs):
    from keras_tempered_dp.privacy.compile import compile_dp
    model = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(3, **kwargs)])
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"has {name}"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer=optimizer)


def test_mixed_precision_is_refused():
    from keras_tempered_dp.privacy.compile import compile_dp
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)),
                                     keras.layers.Dense(3)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="computes in float16"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)

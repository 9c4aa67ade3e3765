import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.checks import (
    check_microbatches,
    check_no_batch_mixing,
)


def test_batchnorm_refused_with_reason_and_alternative():
    model = tf.keras.Sequential([
        tf.keras.Input((4,)), tf.keras.layers.Dense(3),
        tf.keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ValueError, match="'bn'.*BatchNormalization.*"
                       "GroupNormalization"):
        check_no_batch_mixing(model)


def test_nested_batchnorm_found():
    inner = tf.keras.Sequential([tf.keras.Input((4,)),
                                 tf.keras.layers.BatchNormalization(
                                     name="inner_bn")])
    outer = tf.keras.Sequential([tf.keras.Input((4,)), inner])
    with pytest.raises(ValueError, match="inner_bn"):
        check_no_batch_mixing(outer)


def test_group_and_layer_norm_allowed():
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 4)),
        tf.keras.layers.GroupNormalization(2),
        tf.keras.layers.LayerNormalization()])
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

"""Helpers shared by the clipping tests: models, data, the reference check."""

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp.privacy.compile import make_private
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state
from tests.privacy.reference import clipped_mean, per_group_gradients

L = keras.layers


def _compile(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    return per_example_loss(model.loss)


def _install(model, clip=1.0, noise=0.0, **kwargs):
    """An engine built through the public entry point, make_private."""
    _compile(model)
    make_private(model, l2_norm_clip=clip, noise_multiplier=noise, **kwargs)
    return get_dp_state(model).engine


def _median_clip(model, x, y, num_groups=None):
    """A clip norm with examples both below and above it."""
    norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads))
             for grads in per_group_gradients(model, _compile(model), x, y,
                                              num_groups)]
    clip = float(np.median(norms))
    assert min(norms) < clip < max(norms)
    return clip


def _assert_matches_reference(model, x, y, num_groups=None, floor=0.0):
    """The engine's clipped mean equals the reference's, within 1e-5 of the
    largest clipped per-example contribution to each variable; ``floor``:
    that scale at least ``floor`` times the largest over all variables
    (for a variable whose exact gradient is 0, such as attention's key
    bias, both sides are round-off)."""
    clip = _median_clip(model, x, y, num_groups)
    engine = _install(model, clip=clip, num_microbatches=num_groups)
    grads, _ = engine.compute_gradients(*_tensors(x, y))
    expected, scales = clipped_mean(model, per_example_loss(model.loss), x,
                                    y, clip, num_groups)
    assert len(grads) == len(expected)
    scales = [max(s, floor * max(scales)) for s in scales]
    for got, want, scale, var in zip(grads, expected, scales,
                                     model.trainable_variables):
        # 1e-5 relative to the largest clipped per-example contribution.
        np.testing.assert_allclose(np.asarray(got) / (scale + 1e-12),
                                   want / (scale + 1e-12), rtol=0, atol=1e-5,
                                   err_msg=var.name)


def _tensors(x, y):
    """``(x, y)`` as the backend's tensors (NumPy arrays on JAX)."""
    if keras.backend.backend() == "jax":
        return x, y
    return tf.nest.map_structure(tf.constant, x), tf.constant(y)


def _images(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32")


def _labels(n=6, classes=3):
    return (np.arange(n) % classes).astype("int32")


def _head(*body, input_shape, classes=3):
    return keras.Sequential([keras.Input(input_shape), *body,
                                L.Flatten(), L.Dense(classes)])


CONV_CASES = [
    dict(filters=4, kernel_size=3, padding="same"),
    dict(filters=4, kernel_size=3, padding="valid"),
    dict(filters=3, kernel_size=(3, 2), strides=2, padding="same"),
    dict(filters=3, kernel_size=4, strides=(2, 1), padding="valid"),
    dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"),
    dict(filters=3, kernel_size=2, dilation_rate=(1, 2), padding="valid"),
    dict(filters=5, kernel_size=1, use_bias=False),
    dict(filters=4, kernel_size=3, padding="same", activation="tanh"),
    dict(filters=4, kernel_size=3, groups=2, padding="same"),
    # Few positions, wide kernels: the ghost norm, clipped sum by a filter
    # gradient (per example; microbatches of 2 take the materialized one).
    dict(filters=8, kernel_size=3, strides=3, padding="valid"),
    dict(filters=16, kernel_size=3, strides=3, groups=2, padding="valid"),
]


WS_CASES = [
    dict(filters=4, kernel_size=3, padding="same"),
    dict(filters=3, kernel_size=3, strides=2, padding="valid"),
    # (a 1x1 kernel on 2 channels standardizes to +-1/sqrt(2): degenerate)
    dict(filters=5, kernel_size=2, use_bias=False),
    dict(filters=4, kernel_size=3, padding="same", activation="tanh"),
]


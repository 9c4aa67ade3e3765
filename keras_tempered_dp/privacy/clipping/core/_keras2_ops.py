"""``keras.ops``' signatures over TensorFlow, for Keras 2 (no
``keras.ops``): only the operations :mod:`.ops` lists."""

import tensorflow as tf

cast = tf.cast
einsum = tf.einsum
equal = tf.equal
expand_dims = tf.expand_dims
maximum = tf.maximum
rsqrt = tf.math.rsqrt
square = tf.square
tensordot = tf.tensordot


def any(x, axis=None, keepdims=False):  # noqa: A001 (keras.ops' name)
    return tf.reduce_any(x, axis=axis, keepdims=keepdims)


def ones(shape, dtype=None):
    return tf.ones(shape, dtype or tf.float32)


def shape(x):
    """Each axis: an int where static, a scalar tensor where not."""
    dynamic = tf.shape(x)
    return tuple(dynamic[i] if size is None else size
                 for i, size in enumerate(x.shape))


def reshape(x, newshape):
    return tf.reshape(x, newshape)


def sum(x, axis=None, keepdims=False):  # noqa: A001 (keras.ops' name)
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return tf.reduce_mean(x, axis=axis, keepdims=keepdims)


def moments(x, axes, keepdims=False):
    return tf.nn.moments(x, axes, keepdims=keepdims)


def concatenate(xs, axis=0):
    return tf.concat(xs, axis)


def pad(x, pad_width):
    return tf.pad(x, pad_width)


def where(condition, x1, x2):
    x1 = tf.convert_to_tensor(x1)
    return tf.where(condition, x1, tf.cast(x2, x1.dtype))

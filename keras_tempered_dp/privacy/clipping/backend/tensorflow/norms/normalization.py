"""Exact per-example gradients of GroupNormalization.

It computes ``z = gamma * xhat + beta`` with ``xhat`` normalized per example
and channel group, so each example's gradients are ``sum dz * xhat``
(gamma) and ``sum dz`` (beta) over the axes the weights are broadcast along
(the shared LayerNormalization function's :func:`weight_grads`).
"""

import tensorflow as tf

from ....core.norms.materialized import materialized_sq_norms
from ....core.norms.normalization import weight_grads


def group_norm_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    x = tf.cast(inputs, tf.float32)
    rank = x.shape.rank
    axis = layer.axis % rank
    channels = x.shape[axis]
    groups = layer.groups
    # [B, ..., C, ...] -> [B, ..., G, C/G, ...]; statistics over everything
    # but the batch and the group index.
    shape = tf.shape(x)
    grouped_shape = tf.concat(
        [shape[:axis], [groups, channels // groups], shape[axis + 1:]], 0)
    grouped = tf.reshape(x, grouped_shape)
    stat_axes = [a for a in range(1, rank + 1) if a != axis]
    mean, variance = tf.nn.moments(grouped, stat_axes, keepdims=True)
    xhat = tf.reshape((grouped - mean) * tf.math.rsqrt(
        variance + layer.epsilon), shape)
    dz = tf.cast(grad_outputs, tf.float32)
    return materialized_sq_norms(weight_grads(layer, xhat, dz, [axis]),
                                 num_groups)

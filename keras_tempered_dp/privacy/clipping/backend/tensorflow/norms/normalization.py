"""Exact per-example gradients of LayerNormalization and GroupNormalization.

Both compute ``z = gamma * xhat + beta`` with ``xhat`` normalized per example,
so each example's gradients are ``sum dz * xhat`` (gamma) and ``sum dz``
(beta) over the axes the weights are broadcast along.
"""

import tensorflow as tf

from .generic import generic_sq_norms
from .materialized import materialized_sq_norms


def _weight_grads(layer, xhat, dz, param_axes):
    """Per-example gamma/beta gradients, in weight order."""
    rank = dz.shape.rank
    reduce_axes = [a for a in range(1, rank) if a not in param_axes]
    wanted = {}
    if layer.scale:
        wanted[id(layer.gamma)] = tf.reduce_sum(dz * xhat, axis=reduce_axes)
    if layer.center:
        wanted[id(layer.beta)] = tf.reduce_sum(dz, axis=reduce_axes)
    return [wanted[id(w)] for w in layer.weights]


def layer_norm_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """LayerNormalization; Keras 3's ``rms_scaling=True`` (a different
    normalization, gain only) takes the exact generic route."""
    if getattr(layer, "rms_scaling", False):
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    x = tf.cast(inputs, tf.float32)
    # An int until the layer is built (both stacks), a list after.
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) \
        else [layer.axis]
    axes = sorted(a % x.shape.rank for a in axis)
    mean, variance = tf.nn.moments(x, axes, keepdims=True)
    xhat = (x - mean) * tf.math.rsqrt(variance + layer.epsilon)
    dz = tf.cast(grad_outputs, tf.float32)
    return materialized_sq_norms(_weight_grads(layer, xhat, dz, axes),
                                 num_groups)


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
    return materialized_sq_norms(_weight_grads(layer, xhat, dz, [axis]),
                                 num_groups)

"""The sum over a batch's groups of each group's clipped gradient.

One forward pass with every trainable layer tapped (:mod:`.tap`), one
backward pass to the taps' outputs, per-group squared norms layer by layer
(:mod:`.registry`), clip factors, then each layer's share of the clipped
sum from its inputs and re-weighted output gradients.
"""

import contextlib
from typing import NamedTuple

import tensorflow as tf

from keras_tempered_dp.privacy.clipping import groups as grouping
from keras_tempered_dp.privacy.clipping.quantile import count_below
from keras_tempered_dp.privacy.clipping.recompute import (
    Recompute,
    check_same_outputs,
    deviation,
)
from keras_tempered_dp.privacy.clipping.registry import norm_fn_for


class ClippedSum(NamedTuple):
    """What one batch (or chunk) contributes to a step.

    Attributes:
        sums: ``sum_m factor_m * grad_m``, in the order of
            ``model.trainable_variables``.
        y_pred: the model's outputs for the rows seen (augmented copies
            included).
        below: groups of weight > 0 whose norm is <= the clip (for
            ``clipping="quantile"``).
        counted: groups of weight > 0.
    """

    sums: list[tf.Tensor]
    y_pred: tf.Tensor
    below: tf.Tensor
    counted: tf.Tensor


class LayerNorms(NamedTuple):
    """Per-group squared norms summed over layers, and each layer's
    clipped-sum function (None: recompute the layer)."""

    sq_norms: tf.Tensor
    clipped_sums: list


def clip_factors(norms, clip, clipping, gamma):
    """``C / max(||g||, C)`` ("clip", "quantile") or ``C / (||g|| +
    gamma)`` ("normalize")."""
    if clipping == "normalize":
        return clip / (norms + gamma)
    return clip / tf.maximum(norms, clip)


def _forward(model, taps, x):
    with contextlib.ExitStack() as stack:
        for tap in taps:
            stack.enter_context(tap.installed())
        y_pred = model(x, training=True)
    return y_pred, [tap.only_record() for tap in taps]


def _layer_norms(taps, records, grad_outputs, num_groups):
    total, clipped_sums = 0.0, []
    for tap, record, dz in zip(taps, records, grad_outputs):
        result = norm_fn_for(tap.layer)(tap.layer, record.inputs, dz,
                                        num_groups, Recompute(tap, record))
        total += tf.cast(result.sq_norms, tf.float32)
        clipped_sums.append(result.clipped_sum)
    return LayerNorms(total, clipped_sums)


def _broadcast_to_rank(weights, rank):
    return tf.reshape(weights, [-1] + [1] * (rank - 1))


def _recomputed_sum(tap, record, dz, example_weights):
    """A layer's clipped sum by recomputing it with re-weighted ``dz``,
    checked to reproduce the recorded outputs (:mod:`.recompute`)."""
    scaled = dz * tf.cast(_broadcast_to_rank(example_weights, dz.shape.rank),
                          dz.dtype)
    with tf.GradientTape() as tape:
        z = Recompute(tap, record)(tf.stop_gradient(record.inputs))
    checked = check_same_outputs(tap.layer, deviation(z, record.outputs),
                                 record.outputs)
    grads = tape.gradient(z, tap.layer.trainable_weights,
                          output_gradients=scaled,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    with tf.control_dependencies([checked]):
        return [tf.identity(tf.convert_to_tensor(g)) for g in grads]


def _variable_sums(taps, records, grad_outputs, layer_norms, factors,
                   example_weights):
    """``{id(variable): sum_m factors[m] * grad_m}``."""
    sums = {}
    for tap, record, dz, layer_sum in zip(taps, records, grad_outputs,
                                          layer_norms.clipped_sums):
        if layer_sum is not None:
            layer_grads = layer_sum(factors)
        else:
            layer_grads = _recomputed_sum(tap, record, dz, example_weights)
        for w, g in zip(tap.layer.trainable_weights, layer_grads):
            sums[id(w)] = tf.convert_to_tensor(g)  # IndexedSlices too
    return sums


def clipped_sum(model, taps, loss_fn, batch, num_groups, clip, options):
    """The :class:`ClippedSum` of ``batch`` (already augmented), whose rows
    are grouped by ``num_groups`` (:data:`.groups.Groups`)."""
    with tf.GradientTape() as tape:
        y_pred, records = _forward(model, taps, batch.x)
        losses = loss_fn(batch.y, y_pred, batch.sample_weight)
        total = tf.reduce_sum(losses)
    grad_outputs = tape.gradient(total, [r.outputs for r in records])
    if isinstance(num_groups, int):
        records, grad_outputs = grouping.checked_microbatches(
            losses, records, grad_outputs, num_groups)
    rows = tf.shape(losses)[0]
    per_group = grouping.rows_per_group(rows, num_groups)
    # None = per example: keeps static shapes, which choose the cheaper norm
    # method per layer even when the batch size varies.
    layer_norms = _layer_norms(taps, records, grad_outputs, num_groups)
    norms = tf.sqrt(layer_norms.sq_norms)
    factors = clip_factors(norms, clip, options.clipping, options.gamma)
    example_weights = (tf.repeat(factors, per_group)
                       / tf.cast(per_group, tf.float32))
    sums = _variable_sums(taps, records, grad_outputs, layer_norms, factors,
                          example_weights)
    below, counted = count_below(norms, clip, grouping.groups_with_weight(
        batch.sample_weight, rows, num_groups))
    return ClippedSum([sums[id(v)] for v in model.trainable_variables],
                      y_pred, below, counted)

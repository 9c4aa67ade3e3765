"""The sum over a batch's groups of each group's clipped gradient.

One forward pass with every clip unit tapped (:mod:`.tap`), one backward
pass to the outputs of each unit's calls, per-group squared norms unit by
unit (:mod:`...core.registry`; a unit called k times by exact
recomputation of its k calls together,
:func:`.norms.generic.calls_sq_norms`), clip factors,
then each unit's share of the clipped sum from its inputs and re-weighted
output gradients.

A group whose loss, layer inputs, outputs or output gradients hold a NaN
or an infinity anywhere, or whose gradient norm is not finite, contributes
exactly nothing: its clip factor is 0 and, since ``0 * NaN`` is NaN, its
rows of every layer's inputs and output gradients are replaced by zeros
(``tf.where``, which selects rather than multiplies) before the norms and
the weighted sums are formed. It is counted in ``ClippedSum.nonfinite``.
Zero is within the clip bound C, so the sensitivity (and epsilon) do not
change; stopping the step instead would make a data-dependent event public.
One case is left: an example whose inputs and loss are finite but whose
per-example gradient has an entry beyond float32's range (not just its
squared norm) gets factor 0, and a layer that forms per-example gradients
outright would still compute ``0 * inf``.
"""

import contextlib
from typing import NamedTuple

import tensorflow as tf

from . import batches
from ...core import groups as grouping
from ...core.norm_contract import NormResult
from ...core.factors import clip_factors
from ...core.registry import norm_fn_for, takes_all_calls
from ...core.routes import announce_generic
from .norms.generic import calls_sq_norms, generic_sq_norms
from .quantile import count_below
from .recompute import (
    batched_args,
    check_same_outputs,
    deviation,
    map_batched_args,
    Recompute,
)


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
        nonfinite: groups of weight > 0 left out of ``sums`` because
            something non-finite (NaN or infinity) appeared in their loss,
            layer inputs, outputs, output gradients or gradient norm
            (float32).
    """

    sums: list[tf.Tensor]
    y_pred: tf.Tensor
    below: tf.Tensor
    counted: tf.Tensor
    nonfinite: tf.Tensor


class LayerNorms(NamedTuple):
    """Per-group squared norms summed over layers, and each layer's
    clipped-sum function (None: recompute the layer)."""

    sq_norms: tf.Tensor
    clipped_sums: list


def _forward(model, taps, x):
    """The model's outputs, and each call of each tap: ``(call_taps,
    records)``, one entry per call (a unit called k times has k)."""
    with contextlib.ExitStack() as stack:
        for tap in taps:
            stack.enter_context(tap.installed())
        y_pred = model(x, training=True)
    calls = [(tap, record) for tap in taps for record in tap.records]
    return y_pred, [tap for tap, _ in calls], [r for _, r in calls]


def _calls_of(tap, call_taps, *per_call):
    """``tap``'s entries of each per-call list."""
    return [[items[i] for i, t in enumerate(call_taps) if t is tap]
            for items in per_call]


def _unit_norms(tap, records, grad_outputs, num_groups):
    """One unit's :class:`NormResult`: its norm function for one call; the
    exact recomputation of all its calls together for several (cross terms
    included); nothing for a unit this pass did not call."""
    if not records:
        weights = tap.layer.trainable_weights
        return NormResult(0.0, lambda factors: [tf.zeros_like(w)
                                                for w in weights])
    calls = [(record.inputs, dz, Recompute(tap, record))
             for record, dz in zip(records, grad_outputs)]
    if takes_all_calls(tap.layer):
        result = norm_fn_for(tap.layer)(tap.layer, calls, num_groups)
        if result is not None:
            return result
        announce_generic(tap.layer, len(records),
                         "its norm function does not cover these calls")
        return calls_sq_norms(tap.layer, calls, num_groups)
    if len(records) == 1:
        fn = norm_fn_for(tap.layer)
        (inputs, dz, call), = calls
        args = (tap.layer, inputs, dz, num_groups, call)
        result = None if fn is None else fn(*args)
        if result is None:  # no function, or one that does not apply
            announce_generic(tap.layer, 1, None if fn is None else
                             "its norm function does not cover this "
                             "layer's options")
            result = generic_sq_norms(*args)
        return result
    announce_generic(tap.layer, len(records))
    return calls_sq_norms(tap.layer, calls, num_groups)


def _layer_norms(taps, call_taps, records, grad_outputs, num_groups):
    total, clipped_sums = 0.0, []
    for tap in taps:
        result = _unit_norms(tap, *_calls_of(tap, call_taps, records,
                                             grad_outputs), num_groups)
        total += tf.cast(result.sq_norms, tf.float32)
        clipped_sums.append(result.clipped_sum)
    return LayerNorms(total, clipped_sums)


def _finite_rows(tensor, rows):
    """``[rows]`` bool: each row of ``tensor`` all finite; None for
    integer tensors (token ids), which are."""
    tensor = tf.convert_to_tensor(tensor)
    if not tensor.dtype.is_floating:
        return None
    return tf.reduce_all(
        tf.reshape(tf.math.is_finite(tensor), [rows, -1]), axis=1)


def _nonfinite_groups(losses, records, grad_outputs, rows, num_groups):
    """``[G]`` bool: the groups with a non-finite value in a row's loss,
    a tapped unit's inputs, other batched arguments or outputs, or its
    output gradients."""
    tensors = [losses, *grad_outputs]
    for record in records:
        tensors += [t for t in tf.nest.flatten(record.inputs)
                    if t is not None] + [record.outputs]
        # a mask, attention's key and value: rows of the batch too
        tensors += batched_args(record)
    masks = [m for m in (_finite_rows(t, rows) for t in tensors)
             if m is not None]
    finite = tf.reduce_all(tf.stack(masks), axis=0)
    return tf.logical_not(tf.reduce_all(
        grouping.regroup(finite, num_groups), axis=1))


def _zero_rows(bad_rows, tensor):
    """``tensor`` with the rows where ``bad_rows`` holds set to 0 (by
    selection: ``0 * NaN`` would stay NaN)."""
    if not tensor.dtype.is_floating:
        return tensor
    mask = tf.reshape(bad_rows, [-1] + [1] * (tensor.shape.rank - 1))
    return tf.where(mask, tf.zeros_like(tensor), tensor)


def _sanitized(taps, records, grad_outputs, bad_rows):
    """Records and output gradients with the ``bad_rows`` zeroed.

    Those rows then add exactly 0 to every layer's norm and clipped sum.
    Their recorded outputs are replaced by the layer's outputs on the zeroed
    inputs, so that a recomputation (generic route) still matches them;
    computed only when some row is bad.
    """
    any_bad = tf.reduce_any(bad_rows)
    grad_outputs = [_zero_rows(bad_rows, g) for g in grad_outputs]
    cleaned = []
    for tap, record in zip(taps, records):
        record = map_batched_args(
            lambda t: _zero_rows(bad_rows, tf.convert_to_tensor(t)),
            record._replace(inputs=tf.nest.map_structure(
                lambda t: t if t is None
                else _zero_rows(bad_rows, tf.convert_to_tensor(t)),
                record.inputs)))

        def recomputed(tap=tap, record=record):
            z = Recompute(tap, record)(record.inputs)
            return tf.where(
                tf.reshape(bad_rows, [-1] + [1] * (z.shape.rank - 1)),
                tf.cast(z, record.outputs.dtype), record.outputs)

        outputs = tf.cond(any_bad, recomputed,
                          lambda record=record: tf.identity(record.outputs))
        outputs.set_shape(record.outputs.shape)
        cleaned.append(record._replace(outputs=outputs))
    return cleaned, grad_outputs


def _broadcast_to_rank(weights, rank):
    return tf.reshape(weights, [-1] + [1] * (rank - 1))


def _recomputed_sum(tap, records, grad_outputs, example_weights):
    """A unit's clipped sum by recomputing each of its calls with
    re-weighted ``dz``, checked to reproduce the recorded outputs
    (:mod:`.recompute`)."""
    zs, scaled = [], []
    with tf.GradientTape() as tape:
        for record, dz in zip(records, grad_outputs):
            zs.append(Recompute(tap, record)(tf.nest.map_structure(
                tf.stop_gradient, record.inputs)))
            scaled.append(dz * tf.cast(
                _broadcast_to_rank(example_weights, dz.shape.rank),
                dz.dtype))
    checks = [check_same_outputs(tap.layer, deviation(z, record.outputs),
                                 record.outputs)
              for z, record in zip(zs, records)]
    grads = tape.gradient(zs, tap.layer.trainable_weights,
                          output_gradients=scaled,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    with tf.control_dependencies(checks):
        return [tf.identity(tf.convert_to_tensor(g)) for g in grads]


def _variable_sums(taps, call_taps, records, grad_outputs, layer_norms,
                   factors, example_weights):
    """``{id(variable): sum_m factors[m] * grad_m}``."""
    sums = {}
    for tap, layer_sum in zip(taps, layer_norms.clipped_sums):
        if layer_sum is not None:
            layer_grads = layer_sum(factors)
        else:
            layer_grads = _recomputed_sum(
                tap, *_calls_of(tap, call_taps, records, grad_outputs),
                example_weights)
        for w, g in zip(tap.layer.trainable_weights, layer_grads):
            sums[id(w)] = tf.convert_to_tensor(g)  # IndexedSlices too
    return sums


def clipped_sum(model, taps, loss_fn, batch, num_groups, clip, options):
    """The :class:`ClippedSum` of ``batch`` (already augmented), whose rows
    are grouped by ``num_groups`` (:data:`.groups.Groups`)."""
    with tf.GradientTape() as tape:
        y_pred, call_taps, records = _forward(model, taps, batch.x)
        losses = loss_fn(batch.y, y_pred, batch.sample_weight)
        total = tf.reduce_sum(losses)
    # A unit whose output does not reach the loss (a backbone's pooler
    # under a sequence head) has output gradient 0.
    grad_outputs = tape.gradient(
        total, [r.outputs for r in records],
        unconnected_gradients=tf.UnconnectedGradients.ZERO)
    sample_weight = batch.sample_weight
    if isinstance(num_groups, int):
        records, grad_outputs = batches.checked_microbatches(
            losses, records, grad_outputs, num_groups)
        # Everything regrouped below waits for the check, the losses and
        # weights too: a reshape must not fail first, with a raw message.
        with tf.control_dependencies(grad_outputs):
            losses = tf.identity(losses)
            if sample_weight is not None:
                sample_weight = tf.identity(sample_weight)
    rows = tf.shape(losses)[0]
    per_group = batches.rows_per_group(rows, num_groups)
    bad = _nonfinite_groups(losses, records, grad_outputs, rows, num_groups)
    records, grad_outputs = _sanitized(call_taps, records, grad_outputs,
                                       tf.repeat(bad, per_group))
    # None = per example: keeps static shapes, which choose the cheaper norm
    # method per layer even when the batch size varies.
    layer_norms = _layer_norms(taps, call_taps, records, grad_outputs,
                               num_groups)
    norms = tf.sqrt(layer_norms.sq_norms)
    # A squared norm can still overflow (a finite but huge gradient).
    kept = tf.logical_and(tf.logical_not(bad), tf.math.is_finite(norms))
    factors = tf.where(kept, clip_factors(tf.where(kept, norms, 0.0), clip,
                                          options.clipping, options.gamma),
                       0.0)
    example_weights = (tf.repeat(factors, per_group)
                       / tf.cast(per_group, tf.float32))
    sums = _variable_sums(taps, call_taps, records, grad_outputs,
                          layer_norms, factors, example_weights)
    weighted = grouping.groups_with_weight(sample_weight, rows, num_groups)
    # A group left out counts as above the clip (its norm is not <= C):
    # each group still moves the count by at most 1/2.
    below, counted = count_below(
        tf.where(kept, norms, float("inf")), clip, weighted)
    nonfinite = tf.reduce_sum(
        weighted * tf.cast(tf.logical_not(kept), tf.float32))
    return ClippedSum([sums[id(v)] for v in model.trainable_variables],
                      y_pred, below, counted, nonfinite)

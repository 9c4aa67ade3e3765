"""The exact generic route: per-group gradients by vectorized recomputation.

For a layer without a specialised norm function, each group's weight
gradient is recomputed on its own examples, ``tape.gradient(layer(x_g),
weights, output_gradients=dz_g)``, vectorized over groups with
``tf.vectorized_map``. Exact for any layer that treats examples
independently (which DP-SGD requires anyway) and whose call is deterministic
(checked: :mod:`..recompute`); the cost grows with the layer's weight count
times the number of groups.
"""

import tensorflow as tf

from ....core.groups import examples_per_group, regroup
from ....core.norm_contract import NormResult
from ..recompute import check_same_outputs, deviation
from ..variables import tf_variables


def generic_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Squared norms of per-group gradients, by recomputation.

    ``call`` is the layer's call without its activation; when it is a
    :class:`..recompute.Recompute` (as the engine passes), every group's
    recomputed outputs are checked against the recorded ones.

    Returns:
        ``NormResult(sq_norms, None)``: the engine forms the clipped sum by
        the same recomputation with per-example weights on
        ``grad_outputs``.
    """
    return calls_sq_norms(layer, [(inputs, grad_outputs, call)], num_groups)


def calls_sq_norms(layer, calls, num_groups):
    """Squared norms of per-group gradients of a unit called k times.

    ``calls``: ``(inputs, grad_outputs, call)`` for each call of the
    forward pass. One group's gradient is the sum over the calls,
    ``g_m = sum_c d/dW <z_c(x_m^c; W), dz_m^c>``, formed in one tape per
    group, so ``||g_m||^2`` holds every cross term between calls. Other
    arguments with the batch axis (``call.batched_args()``: masks, the
    keys of attention) are regrouped with the inputs.
    """
    weights = layer.trainable_weights
    watched = tf_variables(weights)
    if num_groups is None:
        num_groups = tf.shape(calls[0][1])[0]
    elems = [_group_rows(inputs, dz, call, num_groups)
             for inputs, dz, call in calls]

    def one_group(elems):
        with tf.GradientTape() as tape:
            tape.watch(watched)
            zs = [_call(call, x_g, batched_g)
                  for (_, _, call), (x_g, batched_g, _, _)
                  in zip(calls, elems)]
        grads = tape.gradient(zs, weights,
                              output_gradients=[e[2] for e in elems],
                              unconnected_gradients="zero")
        return (tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g)))
                          for g in grads]),
                tf.reduce_max(tf.stack([deviation(z, e[3])
                                        for z, e in zip(zs, elems)])))

    sq_norms, deviations = _per_group(one_group, elems)
    recorded = [getattr(call, "recorded", None) for _, _, call in calls]
    if any(r is None for r in recorded):
        return NormResult(sq_norms)
    checked = check_same_outputs(layer, tf.reduce_max(deviations),
                                 tf.concat([tf.reshape(r, [-1])
                                            for r in recorded], 0))
    with tf.control_dependencies([checked]):
        return NormResult(tf.identity(sq_norms))


def _group_rows(inputs, dz, call, num_groups):
    """One call's ``(x, batched args, dz / group size, recorded z)``,
    each ``[G, B / G, ...]``."""
    def rows(tensor):
        return regroup(tensor, num_groups)

    x = tf.nest.map_structure(
        lambda t: rows(t) if tf.is_tensor(t) else t, inputs)
    batched = [rows(t) for t in getattr(call, "batched_args", list)()]
    dz_g = rows(dz) / examples_per_group(dz, num_groups)
    recorded = getattr(call, "recorded", None)
    z_g = rows(recorded) if recorded is not None else tf.zeros_like(dz_g)
    return x, batched, dz_g, z_g


def _per_group(one_group, elems):
    """``one_group`` over the groups: vectorized where TensorFlow can, else
    one group after another (``tf.map_fn``, exact and slower). TF 2.15's
    vectorizer cannot convert the TensorList loops of its LSTM and GRU."""
    try:
        return tf.vectorized_map(one_group, elems)
    except (TypeError, ValueError, NotImplementedError):
        return tf.map_fn(one_group, elems, fn_output_signature=(
            tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)))


def _call(call, x, batched):
    return call(x, batched) if batched else call(x)

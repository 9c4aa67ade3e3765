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

from keras_tempered_dp.privacy.clipping.groups import (
    examples_per_group,
    regroup,
)
from keras_tempered_dp.privacy.clipping.norm_contract import NormResult
from keras_tempered_dp.privacy.clipping.recompute import (
    check_same_outputs,
    deviation,
)
from keras_tempered_dp.privacy.clipping.variables import tf_variables


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
    weights = layer.trainable_weights
    watched = tf_variables(weights)
    if num_groups is None:
        num_groups = tf.shape(grad_outputs)[0]
    x = regroup(inputs, num_groups)
    dz = (regroup(grad_outputs, num_groups)
          / examples_per_group(grad_outputs, num_groups))

    recorded = getattr(call, "recorded", None)
    z_recorded = (regroup(recorded, num_groups) if recorded is not None
                  else tf.zeros_like(dz))

    def one_group(args):
        x_g, dz_g, z_g = args
        with tf.GradientTape() as tape:
            tape.watch(watched)
            z = call(x_g)
        grads = tape.gradient(z, weights, output_gradients=dz_g,
                              unconnected_gradients="zero")
        return (tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]),
                deviation(z, z_g))

    sq_norms, deviations = tf.vectorized_map(one_group, (x, dz, z_recorded))
    if recorded is None:
        return NormResult(sq_norms)
    checked = check_same_outputs(layer, tf.reduce_max(deviations), recorded)
    with tf.control_dependencies([checked]):
        return NormResult(tf.identity(sq_norms))

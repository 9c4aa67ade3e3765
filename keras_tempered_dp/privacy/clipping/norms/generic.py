"""The exact generic route: per-group gradients by vectorized recomputation.

For a layer without a specialised norm function, each group's weight
gradient is recomputed on its own examples, ``tape.gradient(layer(x_g),
weights, output_gradients=dz_g)``, vectorized over groups with
``tf.vectorized_map``. Exact for any layer that treats examples
independently (which DP-SGD requires anyway); the cost grows with the layer's
weight count times the number of groups.
"""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.groups import (
    examples_per_group,
    regroup,
)
from keras_tempered_dp.privacy.clipping.norm_contract import NormResult
from keras_tempered_dp.privacy.clipping.variables import tf_variables


def generic_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Squared norms of per-group gradients, by recomputation.

    ``call`` is the layer's call without its activation.

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

    def one_group(args):
        x_g, dz_g = args
        with tf.GradientTape() as tape:
            tape.watch(watched)
            z = call(x_g)
        grads = tape.gradient(z, weights, output_gradients=dz_g,
                              unconnected_gradients="zero")
        return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])

    return NormResult(tf.vectorized_map(one_group, (x, dz)))

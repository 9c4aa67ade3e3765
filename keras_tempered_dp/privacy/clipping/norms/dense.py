"""Dense: per-example norms of a sum of outer products over positions."""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.norms.outer_products import (
    factored_sq_norms,
    flatten_positions,
)


def dense_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Dense on ``[B, D_in]`` or ``[B, ..., D_in]`` (a sequence)."""
    a = flatten_positions(tf.cast(inputs, grad_outputs.dtype))
    return factored_sq_norms(a, flatten_positions(grad_outputs), num_groups,
                             bias=layer.use_bias)

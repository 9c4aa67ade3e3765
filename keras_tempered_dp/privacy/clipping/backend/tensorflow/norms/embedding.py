"""Embedding: a ghost norm with an equality mask over token ids."""

import tensorflow as tf

from ....core.norm_contract import NormResult
from .outer_products import flatten_positions, grouped_mean_grads


def embedding_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Embedding: rows looked up more than once in a group add up.

    ``||grad||^2 = sum_{p,q: id_p == id_q} g_p . g_q`` (a ghost norm with an
    equality mask). The clipped sum is left to the generic recomputation.
    """
    g = grouped_mean_grads(flatten_positions(grad_outputs), num_groups)
    ids = tf.reshape(tf.cast(inputs, tf.int64), [tf.shape(g)[0], -1])
    same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    norms = tf.reduce_sum(same * tf.matmul(g, g, transpose_b=True),
                          axis=[1, 2])
    return NormResult(norms)

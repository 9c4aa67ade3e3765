"""Norms and clipped sums from materialized per-example gradients.

For layers whose per-example gradients are small (normalization layers:
one gain and one bias per channel), forming them outright is the cheapest
exact route.
"""

import tensorflow as tf

from ....core.groups import regroup
from ....core.norm_contract import NormResult


def materialized_sq_norms(per_example_grads, num_groups):
    """Squared norms and clipped-sum function from ``[B, ...]`` gradients.

    Args:
        per_example_grads: one ``[B, *weight_shape]`` tensor per weight: the
            gradient of each example's loss.
        num_groups: see :mod:`.groups`; a group's gradient is the mean
            over its examples.

    Returns:
        ``NormResult(sq_norms [G], clipped_sum)``.
    """
    grouped = []
    for g in per_example_grads:
        if num_groups is not None:
            g = tf.reduce_mean(regroup(g, num_groups), axis=1)
        grouped.append(g)
    norms = tf.add_n([
        tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1)
        for g in grouped])

    def clipped_sum(factors):
        return [tf.tensordot(tf.cast(factors, g.dtype), g, axes=1)
                for g in grouped]

    return NormResult(norms, clipped_sum)

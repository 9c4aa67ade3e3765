"""Norms and clipped sums from materialized per-example gradients.

For layers whose per-example gradients are small (normalization layers:
one gain and one bias per channel; positions' embeddings), forming them
outright is the cheapest exact route.
"""

from .. import ops
from ..groups import regroup
from ..norm_contract import NormResult


def weighted_sum(factors, per_group):
    """``sum_m factors[m] * per_group[m]``, a group of factor 0 adding
    exactly 0 even where its gradient overflowed (``0 * inf`` is NaN)."""
    factors = ops.cast(factors, per_group.dtype)
    kept = ops.reshape(factors != 0,
                       (-1,) + (1,) * (len(per_group.shape) - 1))
    return ops.tensordot(factors, ops.where(kept, per_group, 0.0), axes=1)


def materialized_sq_norms(per_example_grads, num_groups):
    """Squared norms and clipped-sum function from ``[B, ...]`` gradients.

    Args:
        per_example_grads: one ``[B, *weight_shape]`` tensor per weight: the
            gradient of each example's loss.
        num_groups: see :mod:`..groups`; a group's gradient is the mean
            over its examples.

    Returns:
        ``NormResult(sq_norms [G], clipped_sum)``.
    """
    grouped = [g if num_groups is None
               else ops.mean(regroup(g, num_groups), axis=1)
               for g in per_example_grads]
    norms = 0.0
    for g in grouped:
        norms = norms + ops.sum(
            ops.reshape(ops.square(g), (ops.shape(g)[0], -1)), axis=1)

    def clipped_sum(factors):
        return [weighted_sum(factors, g) for g in grouped]

    return NormResult(norms, clipped_sum)

"""Per-example gradient norms of layers whose weight gradient is a sum of
outer products: ``grad_W = sum_p a_p^T g_p`` over positions p.

Dense layers (p: the positions of a sequence, or one position), convolutions
(p: output pixels, a_p: the input patch) and friends all have this form. Two
exact ways to get ``||grad_W||^2`` for every example:

* materialize: form ``sum_p a_p^T g_p`` per example, ``[B, D_in, D_out]``;
  costs ``B * P * D_in * D_out``, and the clipped sum is then a cheap
  weighted sum of those;
* ghost norm (Goodfellow 2015, Li et al. 2022): ``||sum_p a_p^T g_p||^2 =
  sum_{p,q} (a_p . a_q)(g_p . g_q)``; costs ``B * P^2 * (D_in + D_out)``, and
  the clipped sum is one matmul with re-weighted ``g``.

The cheaper one is chosen per layer from the static shapes (Bu et al. 2022,
"mixed ghost clipping").
"""

import math

from .. import ops
from ..groups import examples_per_group, merge_positions
from ..norm_contract import NormResult
from .materialized import weighted_sum


def flatten_positions(tensor):
    """``[B, ..., D] -> [B, P, D]``, with P static whenever it is known.

    A static P is what lets the norm code pick the cheaper method when the
    batch size is unknown at tracing time (as in TensorFlow's ``fit``).
    """
    inner = tuple(tensor.shape[1:-1])
    if all(size is not None for size in inner):
        return ops.reshape(tensor, (-1, math.prod(inner), tensor.shape[-1]))
    return ops.reshape(tensor, (ops.shape(tensor)[0], -1, tensor.shape[-1]))


def grouped_mean_grads(grad_outputs, num_groups):
    """``[B, P, D] -> [G, (B / G) * P, D]``, divided by the group's size:
    the output gradients of each group's *mean* loss."""
    if num_groups is None:
        return grad_outputs
    return (merge_positions(grad_outputs, num_groups)
            / examples_per_group(grad_outputs, num_groups))


def uses_ghost(positions, d_in, d_out):
    """Whether the ghost norm is the cheaper route: ``P * (D_in + D_out) <
    D_in * D_out`` per group (one position, or an unknown count, too)."""
    return (positions is None or positions == 1
            or positions * (d_in + d_out) < d_in * d_out)


def factored_sq_norms(a, g, num_groups, bias=False):
    """Squared norms of per-group weight (and bias) gradients.

    Args:
        a: ``[B, P, D_in]`` layer inputs per position.
        g: ``[B, P, D_out]`` gradients of the summed loss wrt the outputs.
        num_groups: see :mod:`..groups`; each group's gradient is the mean
            of its examples' gradients.
        bias: include the bias gradient ``sum_p g_p``.

    Returns:
        A :class:`NormResult`: ``[G]`` squared norms, and a function
        ``factors -> [kernel_grad [D_in, D_out], bias_grad [D_out]]`` (no bias
        entry when ``bias`` is False) giving ``sum_m factors[m] * grad_m``.
    """
    d_in, d_out = a.shape[-1], g.shape[-1]
    g = grouped_mean_grads(g, num_groups)
    a = merge_positions(ops.cast(a, g.dtype), num_groups)
    positions = a.shape[1]  # per group; static when B / G is static
    bias_grads = ops.sum(g, axis=1) if bias else None

    if uses_ghost(positions, d_in, d_out):
        if positions == 1:
            norms = (ops.sum(ops.square(a), axis=(1, 2))
                     * ops.sum(ops.square(g), axis=(1, 2)))
        else:
            gram_a = ops.einsum("bpi,bqi->bpq", a, a)
            gram_g = ops.einsum("bpo,bqo->bpq", g, g)
            norms = ops.sum(gram_a * gram_g, axis=(1, 2))

        def kernel_sum(factors):
            factors = ops.cast(factors, g.dtype)[:, None, None]
            # A group of factor 0 adds exactly 0 (0 * inf is NaN).
            scaled = ops.where(factors != 0, g * factors, 0.0)
            return ops.einsum("pi,po->io", ops.reshape(a, (-1, d_in)),
                              ops.reshape(scaled, (-1, d_out)))
    else:
        per_group = ops.einsum("bpi,bpo->bio", a, g)  # [G, D_in, D_out]
        norms = ops.sum(ops.square(per_group), axis=(1, 2))

        def kernel_sum(factors):
            return weighted_sum(factors, per_group)

    if bias:
        norms = norms + ops.sum(ops.square(bias_grads), axis=1)

    def clipped_sum(factors):
        grads = [kernel_sum(factors)]
        if bias:
            grads.append(weighted_sum(factors, bias_grads))
        return grads

    return NormResult(norms, clipped_sum)

"""Embedding: a ghost norm with an equality mask over token ids.

Example m's gradient of the table adds ``g_p`` to row ``id_p`` for each
of its positions p, so ``||grad||^2 = sum_{p,q: id_p == id_q} g_p . g_q``:
rows looked up more than once in a group add up, cross terms included.
"""

from .. import ops
from ..norm_contract import NormResult
from .outer_products import flatten_positions, grouped_mean_grads


def embedding_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """The equality-masked ghost norm; the clipped sum is left to the
    backend's fallback (the weight gradient with re-weighted ``dz``).

    A negative id reads row ``id + V`` on Keras 3 (its ``take`` wraps, as
    NumPy does): the same row, so the same cross terms. Keras 2's lookup
    refuses negative ids in the forward pass already.
    """
    g = grouped_mean_grads(flatten_positions(grad_outputs), num_groups)
    ids = ops.reshape(ops.cast(inputs, "int32"), (ops.shape(g)[0], -1))
    ids = ops.where(ids < 0, ids + layer.input_dim, ids)
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    return NormResult(ops.sum(same * ops.einsum("bpd,bqd->bpq", g, g),
                              axis=(1, 2)))

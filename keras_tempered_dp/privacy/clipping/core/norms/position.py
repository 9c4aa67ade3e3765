"""Exact per-example gradients of :class:`AddPositionEmbedding`.

``z = x + E``: example b's gradient with respect to ``E`` is ``dz_b``
(``[S, D]``), formed outright (``B x S x D``, the size of the layer's
output gradient, which the engine holds anyway).
"""

from .. import ops
from .materialized import materialized_sq_norms


def position_embedding_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call):
    return materialized_sq_norms([ops.cast(grad_outputs, "float32")],
                                 num_groups)

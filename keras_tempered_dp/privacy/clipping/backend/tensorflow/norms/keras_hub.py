"""KerasHub's layers with weights of their own: position embeddings and RMS
norms, plus its reversible embedding (:mod:`.reversible_embedding`).

* ``PositionEmbedding`` returns rows ``0..S-1`` of its ``[L, D]`` table,
  broadcast to the input's shape: example b's gradient is its output
  gradient ``dz_b`` in those rows, zeros below.
* Gemma's ``RMSNormalization`` computes ``xhat (1 + scale)`` and KerasHub's
  own ``xhat * scale``, ``xhat = x / sqrt(mean(x^2) + eps)`` over the last
  axis: example b's scale gradient is ``sum dz_b * xhat_b`` over the other
  axes.

Registered the first time a KerasHub layer is looked up
(:func:`..registry.register_provider`), so importing this package does not
import KerasHub. A ``PositionEmbedding`` called with a ``start_index`` or
``positions`` (decoding with a cache) takes the exact generic route.
"""

import tensorflow as tf

from ....core.norm_contract import NormResult
from .generic import generic_sq_norms
from ....core.norms.materialized import materialized_sq_norms
from .reversible_embedding import reversible_embedding_sq_norms


def position_table_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    args, kwargs = call.arguments
    start = kwargs.get("start_index", 0)
    if args or not isinstance(start, int) or start != 0 \
            or kwargs.get("positions") is not None:
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    # [B, ..., S, D] -> [B, S, D]: the table is broadcast over the middle
    # axes, so an example's gradient sums them (shapes known at run time).
    dz = tf.cast(grad_outputs, tf.float32)
    shape = tf.shape(dz)
    dz = tf.reduce_sum(tf.reshape(dz, tf.concat([shape[:1], [-1],
                                                 shape[-2:]], 0)), axis=1)
    result = materialized_sq_norms([dz], num_groups)
    rows = layer.position_embeddings.shape[0]

    def clipped_sum(factors):
        (grad,) = result.clipped_sum(factors)  # [S, D]
        return [tf.pad(grad, [[0, rows - tf.shape(grad)[0]], [0, 0]])]

    return NormResult(result.sq_norms, clipped_sum)


def rms_norm_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    x = tf.cast(inputs, tf.float32)
    epsilon = getattr(layer, "epsilon", 1e-6)
    xhat = x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), -1, keepdims=True)
                             + epsilon)
    dz = tf.cast(grad_outputs, tf.float32)
    axes = list(range(1, dz.shape.rank - 1))
    return materialized_sq_norms([tf.reduce_sum(dz * xhat, axes)],
                                 num_groups)


def register():
    """Registers the norm functions of KerasHub's layers."""
    import keras_hub
    from keras_hub.src.models.gemma.rms_normalization import (
        RMSNormalization as GemmaRMSNormalization,
    )

    from keras_tempered_dp.privacy.clipping.core.registry import (
        register_norm_fn,
    )

    # TensorFlow code: on JAX these layers take the replay route.
    register_norm_fn(keras_hub.layers.ReversibleEmbedding,
                     reversible_embedding_sq_norms, all_calls=True,
                     backends="tensorflow")
    register_norm_fn(keras_hub.layers.PositionEmbedding,
                     position_table_sq_norms, backends="tensorflow")
    register_norm_fn(GemmaRMSNormalization, rms_norm_sq_norms,
                     backends="tensorflow")
    rms = getattr(keras_hub.layers, "RMSNormalization", None)
    if rms is not None:
        register_norm_fn(rms, rms_norm_sq_norms, backends="tensorflow")


"""The per-example clipping engine (see docs/engine.md).

This is where the package is assembled: the built-in norm functions are
registered here, and only here, one per Keras layer class and backend
(:mod:`.core` holds what both backends share, :mod:`.backend` each
backend's step).
"""

import keras

from keras_tempered_dp.layers.position_embedding import AddPositionEmbedding
from keras_tempered_dp.layers.ws_conv import WSConv2D
from keras_tempered_dp.privacy.config import EngineOptions, QuantileClipping
from .backend.tensorflow.engine import ClippingEngine
from .backend.tensorflow.norms import keras_hub as _keras_hub
from .backend.tensorflow.norms.conv import conv2d_sq_norms
from .backend.tensorflow.norms.generic import generic_sq_norms
from .backend.tensorflow.norms.normalization import group_norm_sq_norms
from .backend.tensorflow.norms.recurrent import recurrent_sq_norms
from .backend.tensorflow.norms.reversible_embedding import (
    reversible_embedding_sq_norms,
)
from .backend.tensorflow.norms.standardized_conv import ws_conv2d_sq_norms
from .core.norm_contract import NormFn, NormResult
from .core.norms.conv_patches import conv2d_patch_sq_norms
from .core.norms.dense import dense_sq_norms
from .core.norms.einsum_dense import einsum_dense_sq_norms
from .core.norms.embedding import embedding_sq_norms
from .core.norms.normalization import layer_norm_sq_norms
from .core.norms.position import position_embedding_sq_norms
from .core.registry import (
    BACKENDS,
    lookup_norm_fn,
    register_norm_fn,
    register_provider,
    registered_classes,
)

# generic_sq_norms: registered for a class, it sends the class to the
# TensorFlow engine's exact generic route.
__all__ = [
    "ClippingEngine", "EngineOptions", "NormFn", "NormResult",
    "QuantileClipping", "generic_sq_norms", "lookup_norm_fn",
    "register_norm_fn", "registered_classes",
]

# Written in keras.ops: the same functions on TensorFlow and on JAX.
_SHARED = {
    keras.layers.Dense: dense_sq_norms,
    keras.layers.EinsumDense: einsum_dense_sq_norms,
    keras.layers.Embedding: embedding_sq_norms,
    keras.layers.LayerNormalization: layer_norm_sq_norms,
    AddPositionEmbedding: position_embedding_sq_norms,
}
# Written in TensorFlow (tf.image patches, the patch-free conv route,
# unrolled recurrences): on JAX these classes take the replay route.
_TENSORFLOW = {
    keras.layers.Conv2D: conv2d_sq_norms,
    keras.layers.GroupNormalization: group_norm_sq_norms,
    WSConv2D: ws_conv2d_sq_norms,
    keras.layers.LSTM: recurrent_sq_norms,
    keras.layers.GRU: recurrent_sq_norms,
    keras.layers.SimpleRNN: recurrent_sq_norms,
    keras.layers.Bidirectional: recurrent_sq_norms,
}
# Their functions return the norms of the trainable weights alone (LoRA).
_FROZEN_WEIGHTS_OK = (keras.layers.Dense, keras.layers.EinsumDense)
for _table, _backends in ((_SHARED, BACKENDS), (_TENSORFLOW, "tensorflow")):
    for _layer_class, _fn in _table.items():
        register_norm_fn(_layer_class, _fn, backends=_backends,
                         frozen_weights=_layer_class in _FROZEN_WEIGHTS_OK)
register_norm_fn(keras.layers.Conv2D, conv2d_patch_sq_norms, backends="jax")
# Keras 3's own reversible embedding; KerasHub's layers on first sight.
if hasattr(keras.layers, "ReversibleEmbedding"):
    register_norm_fn(keras.layers.ReversibleEmbedding,
                     reversible_embedding_sq_norms, all_calls=True,
                     backends="tensorflow")
register_provider("keras_hub", _keras_hub.register)

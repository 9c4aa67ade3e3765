"""AddPositionEmbedding: a learned embedding per sequence position, added.

For inputs ``x`` of shape ``[B, S, D]`` and a table ``E`` of shape
``[S, D]`` the layer computes ``z = x + E`` (ViT's and BERT's learned
positions). One example's gradient with respect to ``E`` is its output
gradient ``dz_b`` itself, so the clipping engine's norm is exact and cheap
(:mod:`keras_tempered_dp.privacy.clipping.backend.tensorflow.norms.position`).
"""

import keras

from keras_tempered_dp.activations import PACKAGE


@keras.utils.register_keras_serializable(package=PACKAGE)
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned ``[sequence_length, features]`` table to its input.

    The sequence length is the input's, fixed when the layer is built.

    Example:

    >>> import numpy as np
    >>> layer = AddPositionEmbedding()
    >>> tuple(layer(np.zeros([2, 5, 3], "float32")).shape)
    (2, 5, 3)
    >>> tuple(layer.embeddings.shape)
    (5, 3)
    """

    def __init__(self, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or None in tuple(input_shape[1:]):
            raise ValueError(
                f"AddPositionEmbedding: input shape {tuple(input_shape)}: "
                "expected [batch, sequence, features] with both fixed.")
        self.embeddings = self.add_weight(
            name="embeddings", shape=tuple(input_shape[1:]),
            initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        return inputs + self.embeddings

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config

"""Transformers for DP-SGD: a small ViT and a token encoder.

Both stack pre-norm encoder blocks (Vaswani et al. 2017, pre-norm as in
ViT, Dosovitskiy et al. 2021)::

    h = h + MultiHeadAttention(LayerNorm(h))
    h = h + Dense(width)(activation(Dense(mlp_dim)(LayerNorm(h))))

with ``activation=`` in the MLP (GELU in ViT; here any registered name, a
callable or ``TemperedSigmoid(s, T, o)``, as in the paper's CNNs), learned
position embeddings (:class:`AddPositionEmbedding`), mean pooling over the
tokens and a Dense head returning logits. No dropout and no BatchNorm, so
every layer treats examples independently and the clipping engine clips
every unit exactly (MultiHeadAttention through its EinsumDense
projections, LayerNormalization and the position table by their norm
functions).
"""

import keras

from keras_tempered_dp.layers import AddPositionEmbedding
from keras_tempered_dp.models.activation import activation_layer
from keras_tempered_dp.validation import check_number

layers = keras.layers


def encoder_block(h, activation, heads, mlp_dim, name):
    """One pre-norm encoder block on ``h`` of shape ``[B, S, width]``."""
    width = h.shape[-1]
    a = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(h)
    a = layers.MultiHeadAttention(heads, width // heads,
                                  name=f"{name}_attention")(a, a)
    h = layers.Add(name=f"{name}_add1")([h, a])
    m = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(h)
    m = layers.Dense(mlp_dim, name=f"{name}_mlp1")(m)
    m = activation_layer(activation, f"{name}_act")(m)
    m = layers.Dense(width, name=f"{name}_mlp2")(m)
    return layers.Add(name=f"{name}_add2")([h, m])


def _encoder_head(h, activation, depth, heads, mlp_dim, num_classes):
    for i in range(1, depth + 1):
        h = encoder_block(h, activation, heads, mlp_dim, f"block{i}")
    h = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(h)
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    return layers.Dense(num_classes, name="logits")(h)


def _check_shape(width, heads, depth, mlp_dim):
    for name, value in (("width", width), ("heads", heads),
                        ("depth", depth), ("mlp_dim", mlp_dim)):
        check_number(name, value, low=1, integer=True)
    if width % heads:
        raise ValueError(f"width={width}, heads={heads}: width must be a "
                         "multiple of heads (each head has width // heads "
                         "features).")


def vit(activation="tempered_sigmoid", input_shape=(28, 28, 1),
        num_classes=10, patch_size=7, width=64, depth=2, heads=4,
        mlp_dim=128, name="vit"):
    """A small Vision Transformer (no class token: mean-pooled tokens).

    Patches of ``patch_size`` pixels are embedded by one strided
    convolution, learned positions are added, then ``depth`` encoder
    blocks. For 28x28 images and the defaults: 16 tokens of width 64,
    2 blocks, 71,946 parameters.

    Example:

    >>> vit("gelu").count_params()
    71946
    """
    _check_shape(width, heads, depth, mlp_dim)
    check_number("patch_size", patch_size, low=1, integer=True)
    rows, cols = input_shape[0] // patch_size, input_shape[1] // patch_size
    if rows < 1 or cols < 1:
        raise ValueError(f"patch_size={patch_size}: larger than the images "
                         f"({tuple(input_shape)}).")
    inputs = keras.Input(input_shape)
    h = layers.Conv2D(width, patch_size, strides=patch_size,
                      name="patch_embedding")(inputs)
    h = layers.Reshape((rows * cols, width), name="tokens")(h)
    h = AddPositionEmbedding(name="positions")(h)
    logits = _encoder_head(h, activation, depth, heads, mlp_dim, num_classes)
    return keras.Model(inputs, logits, name=name)


def transformer_encoder(activation="gelu", sequence_length=64,
                        vocabulary_size=1000, num_classes=2, width=128,
                        depth=4, heads=4, mlp_dim=None,
                        name="transformer_encoder"):
    """A token sequence classifier: embedding, positions, ``depth`` encoder
    blocks (MLP width ``mlp_dim``, default ``2 * width``), mean pooling.

    Example:

    >>> transformer_encoder(depth=1, width=16, heads=2,
    ...                     sequence_length=8).count_params()
    18418
    """
    mlp_dim = 2 * width if mlp_dim is None else mlp_dim
    _check_shape(width, heads, depth, mlp_dim)
    inputs = keras.Input((sequence_length,), dtype="int32")
    h = layers.Embedding(vocabulary_size, width, name="tokens")(inputs)
    h = AddPositionEmbedding(name="positions")(h)
    logits = _encoder_head(h, activation, depth, heads, mlp_dim, num_classes)
    return keras.Model(inputs, logits, name=name)

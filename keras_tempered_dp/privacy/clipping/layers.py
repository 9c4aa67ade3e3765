"""Per-example squared norms for the layers the engine supports natively."""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.factored import (
    factored_sq_norms,
    group,
)
from keras_tempered_dp.privacy.clipping.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.registry import register_norm_fn

layers = tf.keras.layers


def _flatten_positions(tensor):
    """``[B, ..., D] -> [B, P, D]``."""
    return tf.reshape(tensor, [tf.shape(tensor)[0], -1, tensor.shape[-1]])


def _reshaped_to_weights(layer, clipped_sum):
    """Wraps ``clipped_sum`` so its kernel has the layer's kernel shape."""
    def fn(factors):
        grads = clipped_sum(factors)
        grads[0] = tf.reshape(grads[0], layer.kernel.shape)
        return grads
    return fn


def _factored_layer(layer, a, grad_outputs, num_groups):
    if [id(w) for w in layer.trainable_weights] != [
            id(w) for w in [layer.kernel] + ([layer.bias]
                                            if layer.use_bias else [])]:
        return None  # e.g. a frozen kernel with a trainable bias
    norms, clipped_sum = factored_sq_norms(
        a, _flatten_positions(grad_outputs), num_groups, bias=layer.use_bias)
    return norms, _reshaped_to_weights(layer, clipped_sum)


@register_norm_fn(layers.Dense)
def dense_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Dense on ``[B, D_in]`` or ``[B, ..., D_in]`` (a sequence)."""
    a = _flatten_positions(tf.cast(inputs, grad_outputs.dtype))
    return (_factored_layer(layer, a, grad_outputs, num_groups)
            or generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call))


def conv2d_patches(layer, inputs):
    """Input patches ``[B, P, kh * kw * C_in]`` in the kernel's layout."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    patches = tf.image.extract_patches(
        inputs, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
        rates=[1, dh, dw, 1], padding=layer.padding.upper())
    return _flatten_positions(patches)


@register_norm_fn(layers.Conv2D)
def conv2d_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Conv2D, channels_last, groups=1: any strides, padding, dilation.

    Other configurations take the exact generic route.
    """
    if layer.data_format == "channels_last" and layer.groups == 1:
        a = conv2d_patches(layer, tf.cast(inputs, grad_outputs.dtype))
        result = _factored_layer(layer, a, grad_outputs, num_groups)
        if result is not None:
            return result
    return generic_sq_norms(layer, inputs, grad_outputs, num_groups, call)


@register_norm_fn(layers.Embedding)
def embedding_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Embedding: rows looked up more than once in a group add up.

    ``||grad||^2 = sum_{p,q: id_p == id_q} g_p . g_q`` (a ghost norm with an
    equality mask). The clipped sum is left to the generic recomputation.
    """
    g = _flatten_positions(grad_outputs)
    per_group = tf.shape(g)[0] // num_groups
    g = group(g, num_groups) / tf.cast(per_group, g.dtype)
    ids = tf.reshape(tf.cast(inputs, tf.int64), [num_groups, -1])
    same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    norms = tf.reduce_sum(same * tf.matmul(g, g, transpose_b=True),
                          axis=[1, 2])
    return norms, None


# Layers whose weights act per feature: exact through the generic route,
# which is cheap for them (their per-example gradients are small).
for _cls in (layers.LayerNormalization, layers.GroupNormalization):
    register_norm_fn(_cls)(generic_sq_norms)

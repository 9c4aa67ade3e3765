"""Per-example squared norms for the layers the engine supports natively."""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.factored import (
    factored_sq_norms,
    group,
    group_size,
)
from keras_tempered_dp.privacy.clipping.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.registry import register_norm_fn

layers = tf.keras.layers


def _flatten_positions(tensor):
    """``[B, ..., D] -> [B, P, D]``, with P static whenever it is known.

    A static P is what lets the norm code pick the cheaper method when the
    batch size is unknown at tracing time (as in ``fit``).
    """
    inner = tensor.shape[1:-1]
    if inner.is_fully_defined():
        positions = 1
        for size in inner:
            positions *= size
        return tf.reshape(tensor, [-1, positions, tensor.shape[-1]])
    return tf.reshape(tensor, [tf.shape(tensor)[0], -1, tensor.shape[-1]])


@register_norm_fn(layers.Dense)
def dense_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Dense on ``[B, D_in]`` or ``[B, ..., D_in]`` (a sequence)."""
    trainable = [id(w) for w in layer.trainable_weights]
    full = [id(layer.kernel)] + ([id(layer.bias)] if layer.use_bias else [])
    if trainable != full:  # e.g. a frozen kernel with a trainable bias
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    a = _flatten_positions(tf.cast(inputs, grad_outputs.dtype))
    return factored_sq_norms(a, _flatten_positions(grad_outputs), num_groups,
                             bias=layer.use_bias)


# Up to this many values per patch, a convolution with a one-hot kernel
# builds the patches faster than tf.image.extract_patches on CPU (measured
# on the MNIST CNN's first layer, 8x8x1 = 64: 21 ms against 33 ms at batch
# 1024); for wider patches extract_patches is faster. Both are exact.
_ONE_HOT_CONV_MAX = 64


def conv2d_patches(layer, inputs):
    """Input patches ``[B, P, kh * kw * C_in]`` in the kernel's layout."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    size = kh * kw * inputs.shape[-1]
    if size <= _ONE_HOT_CONV_MAX:
        one_hot = tf.reshape(tf.eye(size, dtype=inputs.dtype),
                             [kh, kw, inputs.shape[-1], size])
        patches = tf.nn.conv2d(inputs, one_hot, strides=[1, sh, sw, 1],
                               padding=layer.padding.upper(),
                               dilations=[1, dh, dw, 1])
    else:
        patches = tf.image.extract_patches(
            inputs, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
            rates=[1, dh, dw, 1], padding=layer.padding.upper())
    return _flatten_positions(patches)


@register_norm_fn(layers.Conv2D)
def conv2d_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Conv2D, channels_last: any strides, padding, dilation and groups.

    A grouped convolution is ``groups`` independent convolutions over
    channel slices; its norm is the sum of theirs. channels_first and a
    frozen kernel with a trainable bias take the exact generic route.
    """
    trainable = [id(w) for w in layer.trainable_weights]
    full = [id(layer.kernel)] + ([id(layer.bias)] if layer.use_bias else [])
    if layer.data_format != "channels_last" or trainable != full:
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    x = tf.cast(inputs, grad_outputs.dtype)
    n = layer.groups
    c_in, c_out = x.shape[-1] // n, grad_outputs.shape[-1] // n
    parts = [
        factored_sq_norms(
            conv2d_patches(layer, x[..., i * c_in:(i + 1) * c_in]),
            _flatten_positions(grad_outputs[..., i * c_out:(i + 1) * c_out]),
            num_groups, bias=layer.use_bias)
        for i in range(n)]
    kernel_shape = layer.kernel.shape

    def clipped_sum(factors):
        sums = [part[1](factors) for part in parts]
        kernel = tf.concat(
            [tf.reshape(s[0], list(kernel_shape[:3]) + [c_out])
             for s in sums], axis=-1)
        if layer.use_bias:
            return [kernel, tf.concat([s[1] for s in sums], axis=0)]
        return [kernel]

    return tf.add_n([part[0] for part in parts]), clipped_sum


@register_norm_fn(layers.Embedding)
def embedding_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Embedding: rows looked up more than once in a group add up.

    ``||grad||^2 = sum_{p,q: id_p == id_q} g_p . g_q`` (a ghost norm with an
    equality mask). The clipped sum is left to the generic recomputation.
    """
    g = _flatten_positions(grad_outputs)
    g = group(g, num_groups) / group_size(g, num_groups)
    ids = tf.reshape(tf.cast(inputs, tf.int64), [tf.shape(g)[0], -1])
    same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    norms = tf.reduce_sum(same * tf.matmul(g, g, transpose_b=True),
                          axis=[1, 2])
    return norms, None


"""Conv2D: per-example norms over input patches (outer products)."""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.norm_contract import NormResult
from keras_tempered_dp.privacy.clipping.norms.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.norms.outer_products import (
    factored_sq_norms,
    flatten_positions,
)

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
    return flatten_positions(patches)


def conv2d_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Conv2D, channels_last: any strides, padding, dilation and groups.

    A grouped convolution is ``groups`` independent convolutions over
    channel slices; its norm is the sum of theirs. channels_first takes the
    exact generic route.
    """
    if layer.data_format != "channels_last":
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    x = tf.cast(inputs, grad_outputs.dtype)
    n = layer.groups
    c_in, c_out = x.shape[-1] // n, grad_outputs.shape[-1] // n
    parts = [
        factored_sq_norms(
            conv2d_patches(layer, x[..., i * c_in:(i + 1) * c_in]),
            flatten_positions(grad_outputs[..., i * c_out:(i + 1) * c_out]),
            num_groups, bias=layer.use_bias)
        for i in range(n)]
    kernel_shape = layer.kernel.shape

    def clipped_sum(factors):
        sums = [part.clipped_sum(factors) for part in parts]
        kernel = tf.concat(
            [tf.reshape(s[0], list(kernel_shape[:3]) + [c_out])
             for s in sums], axis=-1)
        if layer.use_bias:
            return [kernel, tf.concat([s[1] for s in sums], axis=0)]
        return [kernel]

    return NormResult(tf.add_n([part.sq_norms for part in parts]),
                      clipped_sum)

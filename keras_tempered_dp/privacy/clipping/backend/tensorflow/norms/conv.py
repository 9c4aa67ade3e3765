"""Conv2D: per-example norms from input patches or from filter gradients.

Two exact routes, chosen per layer by :func:`.conv_cost.route`:

* ``"patches"``: the input patches ``a_p`` (``[B, P, kh * kw * C_in]``) and
  the outer-product norms of :mod:`.outer_products` (materialized per-group
  gradients, or the ghost norm when positions are few);
* ``"filter"``: per-group kernel gradients as one grouped filter gradient,
  no patches (:mod:`.conv_filter`).
"""

import tensorflow as tf

from ....core import conv_cost
from ....core.groups import merge_positions
from ....core.norm_contract import NormResult
from .conv_filter import per_group_kernel_grads, weighted_sums
from .generic import generic_sq_norms
from ....core.norms.materialized import materialized_sq_norms
from ....core.norms.outer_products import (
    factored_sq_norms,
    flatten_positions,
    grouped_mean_grads,
    uses_ghost,
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
    if conv_cost.route(layer, x.shape, grad_outputs.shape) == "filter":
        return _filter_route(layer, x, grad_outputs, num_groups)
    n = layer.groups
    c_in, c_out = x.shape[-1] // n, grad_outputs.shape[-1] // n
    parts = [
        factored_sq_norms(
            conv2d_patches(layer, x[..., i * c_in:(i + 1) * c_in]),
            flatten_positions(grad_outputs[..., i * c_out:(i + 1) * c_out]),
            num_groups, bias=layer.use_bias)
        for i in range(n)]
    sq_norms = tf.add_n([part.sq_norms for part in parts])
    kh, kw = layer.kernel_size
    positions = merge_positions(  # per group, as factored_sq_norms sees it
        flatten_positions(grad_outputs[..., :c_out]), num_groups).shape[1]
    if uses_ghost(positions, kh * kw * c_in, c_out):
        # The ghost norm's own clipped sum would keep every patch alive
        # until all layers' norms are known; one filter gradient of the
        # re-weighted output gradients needs only the layer's input.
        return NormResult(sq_norms, lambda factors: weighted_sums(
            layer, x, grad_outputs, factors, num_groups))
    kernel_shape = layer.kernel.shape

    def clipped_sum(factors):
        sums = [part.clipped_sum(factors) for part in parts]
        kernel = tf.concat(
            [tf.reshape(s[0], list(kernel_shape[:3]) + [c_out])
             for s in sums], axis=-1)
        if layer.use_bias:
            return [kernel, tf.concat([s[1] for s in sums], axis=0)]
        return [kernel]

    return NormResult(sq_norms, clipped_sum)


def _filter_route(layer, x, grad_outputs, num_groups):
    """Materialized per-group gradients from one grouped filter gradient."""
    grads = [per_group_kernel_grads(layer, x, grad_outputs, num_groups)]
    if layer.use_bias:
        g = grouped_mean_grads(flatten_positions(grad_outputs), num_groups)
        grads.append(tf.reduce_sum(g, axis=1))
    return materialized_sq_norms(grads, None)  # already one row per group

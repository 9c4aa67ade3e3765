"""Exact per-example gradient norms of the weight-standardized convolution.

With ``W_hat = standardize(W, gain)`` (:mod:`keras_tempered_dp.layers.ws_conv`;
a function of the weights only), one group's gradient with respect to
``W_hat`` is ``sum_p a_p^T g_p`` over output pixels p (materialized from the
input patches or from one grouped filter gradient, whichever
:mod:`.conv_cost` finds cheaper, as for Conv2D); its
gradients with respect to ``W`` and ``gain`` are the vector-Jacobian product
of the standardization, which is linear in that gradient. Per output
channel, with fan-in n, ``x = (W - mean(W)) s``, ``s = max(n var(W),
eps)^(-1/2)`` and a group's ``d = dL/dW_hat``:

    dL/dgain = sum_i d_i x_i
    dL/dW    = gain s (d - mean(d) - x sum_i d_i x_i)

(the last term only where ``n var(W) >= eps``, where ``s`` depends on W),
the backward pass of a normalization, computed for all groups at once on
``[G, kh, kw, C_in, C_out]`` without copies of the weights.
"""

import tensorflow as tf

from ....core import conv_cost
from ....core.groups import merge_positions
from .conv import conv2d_patches
from .conv_filter import per_group_kernel_grads
from .generic import generic_sq_norms
from ....core.norms.materialized import materialized_sq_norms
from ....core.norms.outer_products import flatten_positions, grouped_mean_grads


def ws_conv2d_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """WSConv2D, channels_last, groups=1; else the exact generic route."""
    if layer.data_format != "channels_last" or layer.groups != 1:
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    x = tf.cast(inputs, grad_outputs.dtype)
    g = grouped_mean_grads(flatten_positions(grad_outputs), num_groups)
    if conv_cost.route(layer, x.shape, grad_outputs.shape) == "filter":
        w_hat_grads = per_group_kernel_grads(layer, x, grad_outputs,
                                             num_groups)
    else:
        a = merge_positions(conv2d_patches(layer, x), num_groups)
        w_hat_grads = tf.matmul(a, g, transpose_a=True)  # [G, K, C_out]
    kernel_grads, gain_grads = standardization_vjp(
        layer.kernel, layer.gain, layer.eps,
        tf.reshape(w_hat_grads, [-1] + layer.kernel.shape.as_list()))
    kernel, gain = layer.kernel, layer.gain
    per_weight = {id(kernel): kernel_grads, id(gain): gain_grads}
    if layer.use_bias:
        per_weight[id(layer.bias)] = tf.reduce_sum(g, axis=1)
    # Already one gradient per group: nothing left to group.
    return materialized_sq_norms(
        [per_weight[id(w)] for w in layer.weights], None)


def standardization_vjp(kernel, gain, eps, d):
    """``(dL/dW, dL/dgain)`` per group from ``d = dL/dW_hat``, ``[G, *W]``.

    The closed form of the module docstring; the tests check it against
    per-example gradients taken through ``standardize`` itself.
    """
    kernel = tf.convert_to_tensor(kernel)
    gain = tf.convert_to_tensor(gain)
    axes = [-4, -3, -2]
    fan_in = kernel.shape[-4] * kernel.shape[-3] * kernel.shape[-2]
    mean, var = tf.nn.moments(kernel, axes=axes, keepdims=True)
    spread = var * fan_in
    scale = tf.math.rsqrt(tf.maximum(spread, eps))
    x = (kernel - mean) * scale
    dot = tf.reduce_sum(d * x, axis=axes, keepdims=True)  # [G, 1, 1, 1, C]
    centred = d - tf.reduce_mean(d, axis=axes, keepdims=True)
    # Where the max picks eps, s is a constant: no term from var(W).
    varying = tf.cast(spread >= eps, d.dtype)
    kernel_grads = gain * scale * (centred - x * dot * varying)
    return kernel_grads, tf.reshape(dot, [tf.shape(d)[0], -1])

"""Exact per-example gradient norms of the weight-standardized convolution.

With ``W_hat = standardize(W, gain)`` (a function of the weights only), one
group's gradient with respect to ``W_hat`` is ``sum_p a_p^T g_p`` over
output pixels p (materialized from the input patches or from one grouped
filter gradient, whichever :mod:`.conv_cost` finds cheaper, as for Conv2D); its
gradients with respect to ``W`` and ``gain`` are the vector-Jacobian product
of the standardization, which is linear in that gradient. All groups'
products come out of one backward pass through the standardization applied
to a batch of copies of the weights.
"""

import tensorflow as tf

from keras_tempered_dp.layers.ws_conv import standardize
from keras_tempered_dp.privacy.clipping.groups import merge_positions
from keras_tempered_dp.privacy.clipping.norms import conv_cost
from keras_tempered_dp.privacy.clipping.norms.conv import conv2d_patches
from keras_tempered_dp.privacy.clipping.norms.conv_filter import (
    per_group_kernel_grads,
)
from keras_tempered_dp.privacy.clipping.norms.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.norms.materialized import (
    materialized_sq_norms,
)
from keras_tempered_dp.privacy.clipping.norms.outer_products import (
    flatten_positions,
    grouped_mean_grads,
)


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
    kernel, gain = layer.kernel, layer.gain
    count = tf.shape(w_hat_grads)[0]
    kernels = tf.broadcast_to(kernel, tf.concat([[count], kernel.shape], 0))
    gains = tf.broadcast_to(gain, tf.concat([[count], gain.shape], 0))
    with tf.GradientTape() as tape:
        tape.watch([kernels, gains])
        w_hat = standardize(kernels, gains, layer.eps)
    kernel_grads, gain_grads = tape.gradient(
        w_hat, [kernels, gains],
        output_gradients=tf.reshape(w_hat_grads, tf.shape(w_hat)))
    per_weight = {id(kernel): kernel_grads, id(gain): gain_grads}
    if layer.use_bias:
        per_weight[id(layer.bias)] = tf.reduce_sum(g, axis=1)
    # Already one gradient per group: nothing left to group.
    return materialized_sq_norms(
        [per_weight[id(w)] for w in layer.weights], None)

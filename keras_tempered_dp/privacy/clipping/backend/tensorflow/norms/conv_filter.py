"""Per-group Conv2D kernel gradients without input patches.

A convolution's kernel gradient is the filter gradient ``dW = sum_b sum_p
x_b[s p + d o]^T g_b[p]`` (o: the kernel offset), which TensorFlow computes
without patches (``Conv2DBackpropFilter``). Summing over the batch loses the
examples; putting the G groups side by side in the *channels* keeps them: a
convolution with ``groups = G * layer.groups`` maps channel block m of the
input only to channel block m of the output, so its filter gradient holds
one kernel gradient per group, ``[kh, kw, C_in / groups, G * C_out]``, and
the examples within a group go in the batch dimension, where the filter
gradient sums them:

    x  [B, H, W, C_in]   -> [n, H, W, G * C_in]     (n = B / G rows a group)
    g  [B, P_h, P_w, C_out] -> [n, P_h, P_w, G * C_out]
    dW = Conv2DBackpropFilter(x, g)  -> [G, kh, kw, C_in / groups, C_out]

Exact (the same sums as the patches route, another order of addition) and
its memory is the output, ``G * |W|``, instead of the patches, ``B * P *
kh * kw * C_in``: 300 MB for the CIFAR-10 CNN's 32x32x32 layer at batch
256. Which route is faster depends on the shapes (:mod:`.conv_cost`).
"""

import tensorflow as tf

from ..batches import rows_per_group


def _groups_in_channels(t, rows):
    """``[B, H, W, C] -> [rows, H, W, (B / rows) * C]``: group m's rows in
    the batch dimension, groups side by side in the channels."""
    h, w, c = t.shape[1], t.shape[2], t.shape[3]
    t = tf.reshape(t, [-1, rows, h, w, c])          # [G, n, H, W, C]
    t = tf.transpose(t, [1, 2, 3, 0, 4])            # [n, H, W, G, C]
    return tf.reshape(t, [rows, h, w, -1])


def per_group_kernel_grads(layer, x, grad_outputs, num_groups):
    """``[G, kh, kw, C_in / groups, C_out]``: each group's kernel gradient of
    its *mean* loss (``grad_outputs``: of the summed loss).

    >>> import keras
    >>> layer = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    >>> x = tf.random.normal([6, 9, 9, 2])
    >>> layer.build(x.shape)
    >>> g = tf.random.normal([6, 5, 5, 4])
    >>> per_group_kernel_grads(layer, x, g, None).shape
    TensorShape([6, 3, 3, 2, 4])
    """
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    c_in = x.shape[-1] // layer.groups
    c_out = grad_outputs.shape[-1]
    batch = tf.shape(x)[0]
    rows = rows_per_group(batch, num_groups)
    count = batch // rows
    filters = tf.compat.v1.nn.conv2d_backprop_filter(
        _groups_in_channels(x, rows),
        tf.stack([kh, kw, c_in, count * c_out]),
        _groups_in_channels(grad_outputs, rows),
        strides=[1, sh, sw, 1], padding=layer.padding.upper(),
        dilations=[1, dh, dw, 1])
    filters = tf.reshape(filters, [kh, kw, c_in, -1, c_out])
    grads = tf.transpose(filters, [3, 0, 1, 2, 4])
    return grads / tf.cast(rows, grads.dtype)


def weighted_sums(layer, x, grad_outputs, factors, num_groups):
    """``sum_m factors[m] * grad_m`` for the kernel (and bias): one ordinary
    filter gradient with each row's output gradient scaled by its group's
    factor over the group's size. Needs no patches, so they can be freed as
    soon as the norms are known."""
    rows = rows_per_group(tf.shape(x)[0], num_groups)
    weights = tf.repeat(factors, rows) / tf.cast(rows, factors.dtype)
    scaled = grad_outputs * tf.cast(weights, grad_outputs.dtype)[
        :, None, None, None]
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    kernel = tf.compat.v1.nn.conv2d_backprop_filter(
        x, layer.kernel.shape, scaled, strides=[1, sh, sw, 1],
        padding=layer.padding.upper(), dilations=[1, dh, dw, 1])
    if not layer.use_bias:
        return [kernel]
    return [kernel, tf.reduce_sum(scaled, axis=[0, 1, 2])]

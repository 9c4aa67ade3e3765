"""Conv2D from its input patches, in :mod:`..ops`: the JAX engine's route.

``z = conv(x, W) + b``: example m's kernel gradient is ``sum_p a_p^T dz_p``
over the output positions p, ``a_p`` the input patch under p (``kh * kw *
C`` values, in the kernel's (row, column, channel) order), so
:func:`.outer_products.factored_sq_norms` gives the norms, ghost or
materialized. The patches are ``kh * kw`` strided slices of the (padded)
input, side by side: copies only, where an identity convolution would cost
``(kh * kw * C)^2`` per position. (The TensorFlow engine has its own
Conv2D function, with a patch-free route and a measured rule choosing it:
:mod:`...backend.tensorflow.norms.conv`.)
"""

from .. import ops
from ..norm_contract import NormResult
from .outer_products import factored_sq_norms, flatten_positions


def _same_padding(size, out, kernel, stride, dilation):
    """TensorFlow's "same" padding of one axis: ``(before, after)``."""
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d_patches(layer, x, out_shape):
    """``[B, H', W', kh * kw * C]``: the input patch under every output
    position, by ``kh * kw`` strided slices."""
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    dh, dw = layer.dilation_rate
    out_h, out_w = out_shape[1], out_shape[2]
    if layer.padding == "same":
        x = ops.pad(x, [(0, 0),
                        _same_padding(x.shape[1], out_h, kh, sh, dh),
                        _same_padding(x.shape[2], out_w, kw, sw, dw),
                        (0, 0)])
    slices = [x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh,
                j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
              for i in range(kh) for j in range(kw)]
    return ops.concatenate(slices, axis=-1)


def conv2d_patch_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Conv2D, channels_last, one convolution group, "same" or "valid"
    padding (None otherwise: the backend's exact fallback)."""
    if (layer.groups != 1 or layer.data_format != "channels_last"
            or layer.padding not in ("same", "valid")):
        return None
    patches = conv2d_patches(
        layer, ops.cast(inputs, grad_outputs.dtype), grad_outputs.shape)
    result = factored_sq_norms(flatten_positions(patches),
                               flatten_positions(grad_outputs), num_groups,
                               bias=layer.use_bias)
    kernel_shape = tuple(layer.kernel.shape)

    def clipped_sum(factors):
        grads = result.clipped_sum(factors)
        return [ops.reshape(grads[0], kernel_shape)] + grads[1:]

    return NormResult(result.sq_norms, clipped_sum)

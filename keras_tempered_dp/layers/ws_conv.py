"""WSConv2D: a convolution with scaled weight standardization.

Brock et al. (2021) and De et al. (2022, for DP-SGD with GroupNorm) use,
per output channel c, with the mean and variance over the kernel's
``kh * kw * C_in`` fan-in::

    W_hat[..., c] = gain[c] * (W[..., c] - mean_c) / sqrt(max(fan_in * var_c, eps))

The layer computes ``conv(x, W_hat) + b``. It treats examples independently,
and the clipping engine computes its per-example gradient norms exactly
(:mod:`keras_tempered_dp.privacy.clipping.norms.standardized_conv`).
"""

import keras
import tensorflow as tf


def standardize(kernel, gain, eps):
    """``W_hat`` for a kernel ``[..., kh, kw, C_in, C_out]`` and gain
    ``[..., C_out]``; leading axes (if any) are batch axes."""
    axes = [-4, -3, -2]
    mean, var = tf.nn.moments(kernel, axes=axes, keepdims=True)
    fan_in = kernel.shape[-4] * kernel.shape[-3] * kernel.shape[-2]
    scale = tf.math.rsqrt(tf.maximum(var * fan_in, eps))
    gain = tf.expand_dims(tf.expand_dims(tf.expand_dims(gain, -2), -2), -2)
    return (kernel - mean) * scale * gain


@keras.utils.register_keras_serializable(package="keras_tempered_dp")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with scaled weight standardization and a learnable gain.

    Takes Conv2D's arguments plus ``eps`` (default 1e-4, as jax_privacy).
    Use it with GroupNormalization instead of BatchNormalization under
    DP-SGD (BatchNorm mixes examples and breaks per-example clipping).

    Example:

    >>> layer = WSConv2D(8, 3, padding="same")
    >>> layer(tf.ones([2, 5, 5, 3])).shape
    TensorShape([2, 5, 5, 8])
    >>> [w.name.split("/")[-1] for w in layer.trainable_weights]
    ['kernel:0', 'bias:0', 'gain:0']
    """

    def __init__(self, *args, eps=1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        if not eps > 0:
            raise ValueError(f"eps={eps!r}: must be > 0.")
        self.eps = float(eps)

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(name="gain", shape=(self.filters,),
                                    initializer="ones", trainable=True,
                                    dtype=self.dtype)

    def standardized_kernel(self):
        return standardize(self.kernel, self.gain, self.eps)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(
            inputs, standardize(kernel, self.gain, self.eps))

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config

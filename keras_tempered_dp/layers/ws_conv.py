"""WSConv2D: a convolution with scaled weight standardization.

Brock et al. (2021) and De et al. (2022, for DP-SGD with GroupNorm) use,
per output channel c, with the mean and variance over the kernel's
``kh * kw * C_in`` fan-in::

    W_hat[..., c] = gain[c] * (W[..., c] - mean_c) / sqrt(max(fan_in * var_c, eps))

The layer computes ``conv(x, W_hat) + b``. It treats examples independently,
and the clipping engine computes its per-example gradient norms exactly
(:mod:`keras_tempered_dp.privacy.clipping.backend.tensorflow.norms.standardized_conv`).
"""

import keras

from keras_tempered_dp import stack
from keras_tempered_dp.activations import PACKAGE, ops


def standardize(kernel, gain, eps):
    """``W_hat`` for a kernel ``[..., kh, kw, C_in, C_out]`` and gain
    ``[..., C_out]``; leading axes (if any) are batch axes.

    Backend-neutral (``keras.ops``); the clipping engine also calls it on
    TensorFlow tensors with a batch of copies of the weights.
    """
    # Variables become tensors first: JAX's moments takes no Keras variable.
    kernel, gain = ops.convert_to_tensor(kernel), ops.convert_to_tensor(gain)
    axes = [-4, -3, -2]
    mean, var = ops.moments(kernel, axes=axes, keepdims=True)
    fan_in = kernel.shape[-4] * kernel.shape[-3] * kernel.shape[-2]
    scale = ops.rsqrt(ops.maximum(var * fan_in, eps))
    gain = ops.expand_dims(ops.expand_dims(ops.expand_dims(gain, -2), -2), -2)
    return (kernel - mean) * scale * gain


@keras.utils.register_keras_serializable(package=PACKAGE)
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with scaled weight standardization and a learnable gain.

    Takes Conv2D's arguments plus ``eps`` (default 1e-4, as jax_privacy).
    Use it with GroupNormalization instead of BatchNormalization under
    DP-SGD (BatchNorm mixes examples and breaks per-example clipping).

    Example:

    >>> import numpy as np
    >>> layer = WSConv2D(8, 3, padding="same")
    >>> tuple(layer(np.ones([2, 5, 5, 3], "float32")).shape)
    (2, 5, 5, 8)
    >>> [w.name.split("/")[-1].split(":")[0]  # "gain:0" on Keras 2
    ...  for w in layer.trainable_weights]
    ['kernel', 'bias', 'gain']
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

    def save_own_variables(self, store):
        # Keras 3's convolutions save a fixed list, kernel and bias (so
        # that LoRA weights stay out of files); the gain goes after it.
        # Keras 2 saves every weight of the layer, the gain included.
        super().save_own_variables(store)
        if stack.KERAS_3 and self.built:
            store[str(self._gain_slot())] = self.gain

    def load_own_variables(self, store):
        # Keras 3 checks the count against all three weights, then loads
        # kernel and bias; the gain is ours to load.
        super().load_own_variables(store)
        if stack.KERAS_3 and self.built:
            self.gain.assign(store[str(self._gain_slot())])

    def _gain_slot(self):
        return 2 if self.use_bias else 1

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config

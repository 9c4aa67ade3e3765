"""The tempered sigmoid as a Keras layer: a thin wrapper over the math in
:mod:`keras_tempered_dp.activations`, so it runs on any Keras 3 backend."""

import keras

from keras_tempered_dp.activations import (
    PACKAGE,
    check_tempered_sigmoid_parameters,
    tempered_sigmoid,
)


@keras.utils.register_keras_serializable(package=PACKAGE)
class TemperedSigmoid(keras.layers.Layer):
    """Tempered sigmoid activation ``s * sigmoid(T * x) - o`` as a layer.

    Papernot et al., "Tempered Sigmoid Activations for Deep Learning with
    Differential Privacy", AAAI 2021. Bounded activations lose less of each
    gradient to DP-SGD's clipping and noise than ReLU; ``(s, T, o) = (2, 2, 1)``
    is tanh, the setting the paper recommends.

    Dtypes: like every Keras layer, it computes in its *compute dtype* (the
    ``dtype`` argument or policy; float32 by default) and Keras casts float
    inputs to it first. So ``TemperedSigmoid(dtype="float64")`` returns
    float64, ``dtype="mixed_float16"`` (or ``"bfloat16"``) half precision,
    and the default layer returns float32 also for float16 or float64
    inputs; for the input's own dtype call :func:`tempered_sigmoid`
    directly. Integer and boolean inputs, which Keras does not cast, raise
    a TypeError asking for a float dtype.

    Args:
        s: output scale, > 0. The output lies in ``(-o, s - o)``.
        T: inverse temperature, > 0. The slope is at most ``s * T / 4``.
        o: offset.
        **kwargs: forwarded to ``keras.layers.Layer`` (name, dtype, ...).

    Raises:
        ValueError: if ``s <= 0``, ``T <= 0`` or an argument is not finite.
        TypeError: when called on an integer or boolean tensor.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)),
    ...                           keras.layers.Dense(3),
    ...                           TemperedSigmoid(s=2, T=2, o=1)])
    >>> tuple(model(np.zeros((1, 4), "float32")).shape)
    (1, 3)
    >>> layer = TemperedSigmoid(dtype="float64")
    >>> layer(np.zeros(2, "float16")).dtype == np.float64
    True
    """

    def __init__(self, s=2.0, T=2.0, o=1.0, **kwargs):
        super().__init__(**kwargs)
        self.s, self.T, self.o = check_tempered_sigmoid_parameters(s, T, o)
        self.supports_masking = True

    def call(self, inputs):
        return tempered_sigmoid(inputs, self.s, self.T, self.o)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"s": self.s, "T": self.T, "o": self.o})
        return config

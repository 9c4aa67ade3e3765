"""A recurrent classifier: an image read row by row (sequential MNIST).

``sequence_lstm`` reads a ``[rows, cols, 1]`` image as ``rows`` time steps
of ``cols`` pixels (28 steps of 28 for MNIST and Fashion-MNIST, the
classic sequential-MNIST task), one LSTM layer of ``width`` units whose
candidate and output activation is ``activation`` (Keras' ``activation=``;
the gates stay sigmoids), then a Dense head returning logits. The
clipping engine clips the LSTM as one unit (exact generic route).
"""

import keras

from keras_tempered_dp.activations import get_activation
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.validation import check_number

layers = keras.layers


def _function(activation):
    """The activation as a function the LSTM can hold and save: a
    registered name, or ``TemperedSigmoid`` at its registered default
    (2, 2, 1), which is the name ``"tempered_sigmoid"``."""
    if isinstance(activation, TemperedSigmoid):
        if (activation.s, activation.T, activation.o) != (2.0, 2.0, 1.0):
            raise ValueError(
                f"sequence_lstm: TemperedSigmoid(s={activation.s}, "
                f"T={activation.T}, o={activation.o}): an LSTM saves its "
                "activation by name; register these parameters with "
                "keras_tempered_dp.register_activation(name, "
                "make_tempered_sigmoid(s, T, o, name)) and pass the name.")
        return "tempered_sigmoid"
    if isinstance(activation, str):
        get_activation(activation)  # unknown names fail here, listing known
        return activation
    return get_activation(activation)


def sequence_lstm(activation="tanh", input_shape=(28, 28, 1),
                  num_classes=10, width=128, name="sequence_lstm"):
    """An image's rows as a sequence, one LSTM, a Dense head.

    Example:

    >>> sequence_lstm("tanh").count_params()
    81674
    """
    check_number("width", width, low=1, integer=True)
    inputs = keras.Input(input_shape)
    rows = input_shape[0]
    h = layers.Reshape((rows, -1), name="rows")(inputs)
    h = layers.LSTM(width, activation=_function(activation), name="lstm")(h)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(h),
                       name=name)

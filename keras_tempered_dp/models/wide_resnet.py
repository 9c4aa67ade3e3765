"""Wide ResNets as De et al. (2022) train them with DP-SGD.

WRN-d-k (Zagoruyko & Komodakis 2016) with the changes De et al. make for
DP-SGD: GroupNormalization (16 groups) instead of BatchNorm, scaled
weight-standardized convolutions (:class:`~keras_tempered_dp.layers.WSConv2D`)
and no dropout. Pre-activation blocks::

    h = act(GN(x));  y = conv3x3(act(GN(conv3x3(h, stride))))
    x = y + (x if the shape is kept else conv1x1(h, stride))

with (d - 4) / 6 blocks in each of three stages of width 16k, 32k, 64k
(strides 1, 2, 2), after a 16-filter stem, and GN, activation, global
average pooling and a dense layer on top. The activation is configurable,
tempered sigmoids included.
"""

import keras

from keras_tempered_dp.layers.ws_conv import WSConv2D
from keras_tempered_dp.models.activation import activation_layer
from keras_tempered_dp.validation import check_number

layers = keras.layers


def wide_resnet(depth=16, width=4, activation="relu",
                input_shape=(32, 32, 3), num_classes=10, groups=16,
                name=None):
    """A WRN-``depth``-``width`` for DP-SGD (no BatchNorm, no dropout).

    ``keras_tempered_dp.models.wrn16_4`` is De et al.'s WRN-16-4 (about
    79.5% on CIFAR-10 at epsilon 8 in their JAX implementation); the count
    below includes the convolutions' gains and GroupNorm's weights.

    Example:

    >>> wide_resnet(16, 4).count_params()
    2753402
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth={depth!r}: must be 6n + 4 with n >= 1 "
                         "(10, 16, 22, 28, 40, ...).")
    width = check_number(
        "width", width, low=1, integer=True,
        hint="It multiplies every block's channels (WRN-16-4: width=4).")
    blocks = (depth - 4) // 6
    counter = {"act": 0, "gn": 0}

    def act(x):
        counter["act"] += 1
        return activation_layer(activation, f"act{counter['act']}")(x)

    def norm(x):
        counter["gn"] += 1
        return layers.GroupNormalization(
            min(groups, x.shape[-1]), name=f"gn{counter['gn']}")(x)

    inputs = keras.Input(input_shape)
    x = WSConv2D(16, 3, padding="same", name="stem")(inputs)
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            prefix = f"stage{stage + 1}_block{block + 1}"
            h = act(norm(x))
            if stride != 1 or x.shape[-1] != filters:
                shortcut = WSConv2D(filters, 1, strides=stride,
                                    name=f"{prefix}_shortcut")(h)
            else:
                shortcut = x
            y = WSConv2D(filters, 3, strides=stride, padding="same",
                         name=f"{prefix}_conv1")(h)
            y = act(norm(y))
            y = WSConv2D(filters, 3, padding="same",
                         name=f"{prefix}_conv2")(y)
            x = layers.Add(name=f"{prefix}_add")([shortcut, y])
    x = act(norm(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs,
                          name=name or f"wrn_{depth}_{width}")



def wrn16_4(activation="relu", input_shape=(32, 32, 3), num_classes=10,
            name="wrn_16_4"):
    """De et al.'s WRN-16-4 (:func:`wide_resnet` with depth 16, width 4)."""
    return wide_resnet(16, 4, activation=activation, input_shape=input_shape,
                       num_classes=num_classes, name=name)

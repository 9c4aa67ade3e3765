"""The networks of the tempered-sigmoid paper (Papernot et al., AAAI 2021).

Both take ``activation=``: a registered name (``"tempered_sigmoid"``,
``"tanh"``, ``"relu"``, ...), a callable, or a layer such as
``TemperedSigmoid(s=2, T=2, o=1)`` (copied for every position). The activation
follows every convolution and the hidden dense layer, as its own layer; the
last layer returns logits. No normalization layers and no dropout, as in the
paper, so per-example clipping bounds each example's influence.
"""

import keras

from keras_tempered_dp.models.activation import activation_layer

layers = keras.layers


def mnist_cnn(activation="tempered_sigmoid", input_shape=(28, 28, 1),
              num_classes=10, name="mnist_cnn"):
    """The paper's MNIST / Fashion-MNIST CNN: 26,010 parameters for 10 classes.

    Conv 16@8x8 stride 2 same -> max-pool 2 stride 1 -> conv 32@4x4 stride 2
    valid -> max-pool 2 stride 1 -> dense 32 -> dense ``num_classes`` logits.

    Example:

    >>> mnist_cnn("tanh").count_params()
    26010
    """
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(16, 8, strides=2, padding="same", name="conv1"),
            activation_layer(activation, "act1"),
            layers.MaxPool2D(2, strides=1, name="pool1"),
            layers.Conv2D(32, 4, strides=2, padding="valid", name="conv2"),
            activation_layer(activation, "act2"),
            layers.MaxPool2D(2, strides=1, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(32, name="dense1"),
            activation_layer(activation, "act3"),
            layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def cifar10_cnn(activation="tempered_sigmoid", input_shape=(32, 32, 3),
                num_classes=10, name="cifar10_cnn"):
    """The paper's CIFAR-10 CNN: 550,570 parameters for 10 classes.

    Three blocks of two 3x3 same convolutions (32, 64, 128 filters) each
    followed by a 2x2 stride-2 max-pool, then dense 128 and dense logits.

    Example:

    >>> cifar10_cnn("tanh").count_params()
    550570
    """
    stack = [keras.Input(input_shape)]
    index = 0
    for block, filters in enumerate((32, 64, 128), start=1):
        for _ in range(2):
            index += 1
            stack.append(layers.Conv2D(filters, 3, padding="same",
                                       name=f"conv{index}"))
            stack.append(activation_layer(activation, f"act{index}"))
        stack.append(layers.MaxPool2D(2, strides=2, name=f"pool{block}"))
    stack += [
        layers.Flatten(name="flatten"),
        layers.Dense(128, name="dense1"),
        activation_layer(activation, f"act{index + 1}"),
        layers.Dense(num_classes, name="logits"),
    ]
    return keras.Sequential(stack, name=name)


def digits_cnn(activation="tempered_sigmoid", input_shape=(8, 8, 1),
               num_classes=10, name="digits_cnn"):
    """A small CNN for scikit-learn's 8x8 digits (not from the paper).

    The paper's MNIST CNN needs 28x28 inputs; this keeps its pattern (two
    convolutions, a hidden dense layer, logits) at the embedded data's size:
    conv 16@3x3 same -> max-pool 2 -> conv 32@3x3 same -> max-pool 2 ->
    dense 32 -> dense logits. 9,258 parameters for 10 classes.

    Example:

    >>> digits_cnn("tanh").count_params()
    9258
    """
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(16, 3, padding="same", name="conv1"),
            activation_layer(activation, "act1"),
            layers.MaxPool2D(2, name="pool1"),
            layers.Conv2D(32, 3, padding="same", name="conv2"),
            activation_layer(activation, "act2"),
            layers.MaxPool2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(32, name="dense1"),
            activation_layer(activation, "act3"),
            layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )

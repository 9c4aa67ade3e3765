"""Tramer and Boneh's ScatterNet models (ICLR 2021): fixed features, DP head.

A :class:`~keras_tempered_dp.layers.Scattering2D` front end (J=2, L=8: 81
maps per image channel on a grid 4 times coarser) and a group normalization
of its channels, then a small trained head:

* ``scatternet_linear``: one dense layer on the flattened features (39,700
  parameters on Fashion-MNIST);
* ``scatternet_cnn``: their CNN on scattering features, activation after each
  convolution and hidden dense layer. Grey images (one channel): conv
  16@3x3 stride 2 -> conv 32@3x3 -> dense 32 -> logits (33,066 parameters
  on 28x28); colour (any other channel count): conv 64@3x3 -> max-pool 2 ->
  conv 64@3x3 -> logits.

Normalization costs no privacy: each example is normalized by its own
statistics (``GroupNormalization`` over ``groups`` groups of channels and the
whole grid, no learned scale or offset, epsilon 1e-5 as PyTorch's), the
"GroupNorm" option of their code, with 27 groups for Fashion-MNIST. The
front end has no weights, so the clipping engine sees only the head, and
:func:`~keras_tempered_dp.training.train` computes the features once
(:func:`split_fixed_front`).
"""

import keras

from keras_tempered_dp.layers import Scattering2D
from keras_tempered_dp.models.activation import activation_layer
from keras_tempered_dp.validation import check_number

layers = keras.layers

DEFAULT_GROUPS = 27


def scattering_front(input_shape, J=2, L=8, groups=DEFAULT_GROUPS):
    """The fixed layers: scattering, then per-example group normalization.

    Raises:
        ValueError: when ``groups`` does not divide the feature channels.
    """
    scattering = Scattering2D(J=J, L=L, name="scattering")
    channels = scattering.compute_output_shape((None,) + tuple(
        input_shape))[-1]
    divides = (f"the {channels} scattering channels (J={J}, L={L}, "
               f"{input_shape[-1]} image channel(s))")
    groups = check_number("groups", groups, low=1, integer=True,
                          hint=f"It must divide {divides}.")
    if channels % groups:
        raise ValueError(f"groups={groups!r}: must divide {divides}.")
    return [scattering,
            layers.GroupNormalization(groups, epsilon=1e-5, center=False,
                                      scale=False, name="feature_norm")]


def scatternet_linear(activation="tanh", input_shape=(28, 28, 1),
                      num_classes=10, name="scatternet_linear", J=2, L=8,
                      groups=DEFAULT_GROUPS):
    """ScatterNet + linear: logits = W vec(GN(S x)) + b.

    ``activation`` is accepted for the registry's sake and unused: a linear
    head has none.

    Example:

    >>> scatternet_linear().count_params()
    39700
    """
    del activation  # a linear model has no activation
    return keras.Sequential(
        [keras.Input(input_shape)]
        + scattering_front(input_shape, J, L, groups)
        + [layers.Flatten(name="flatten"),
           layers.Dense(num_classes, name="logits")],
        name=name)


def scatternet_cnn(activation="tanh", input_shape=(28, 28, 1),
                   num_classes=10, name="scatternet_cnn", J=2, L=8,
                   groups=DEFAULT_GROUPS):
    """ScatterNet + CNN (Tramer and Boneh's MNIST / CIFAR-10 heads).

    Example:

    >>> scatternet_cnn("tanh").count_params()
    33066
    """
    if input_shape[-1] == 1:
        head = [layers.Conv2D(16, 3, strides=2, padding="same",
                              name="conv1"),
                activation_layer(activation, "act1"),
                layers.Conv2D(32, 3, padding="same", name="conv2"),
                activation_layer(activation, "act2"),
                layers.Flatten(name="flatten"),
                layers.Dense(32, name="dense1"),
                activation_layer(activation, "act3")]
    else:
        head = [layers.Conv2D(64, 3, padding="same", name="conv1"),
                activation_layer(activation, "act1"),
                layers.MaxPool2D(2, name="pool1"),
                layers.Conv2D(64, 3, padding="same", name="conv2"),
                activation_layer(activation, "act2"),
                layers.Flatten(name="flatten")]
    return keras.Sequential(
        [keras.Input(input_shape)]
        + scattering_front(input_shape, J, L, groups)
        + head + [layers.Dense(num_classes, name="logits")],
        name=name)


def split_fixed_front(model):
    """``(front, head)`` of a Sequential model whose first layers have no
    weights (a :class:`Scattering2D` and the layers after it up to the
    first with weights); ``(None, model)`` when it starts otherwise.

    The front depends on one example at a time and on nothing learned, so
    ``head(front(x)) == model(x)`` and ``front(x)`` can be computed once.

    >>> front, head = split_fixed_front(scatternet_linear())
    >>> [layer.name for layer in front.layers], head.input_shape[1:]
    (['scattering', 'feature_norm', 'flatten'], (3969,))
    """
    stack = list(model.layers)
    if not isinstance(model, keras.Sequential) or not stack or \
            not isinstance(stack[0], Scattering2D):
        return None, model
    cut = 0
    while cut < len(stack) and not stack[cut].weights:
        cut += 1
    front = keras.Sequential([keras.Input(model.input_shape[1:])]
                             + stack[:cut], name=f"{model.name}_front")
    head = keras.Sequential([keras.Input(front.output_shape[1:])]
                            + stack[cut:], name=f"{model.name}_head")
    return front, head


def join_front(front, head):
    """The model on images again: ``front``'s layers, then ``head``'s
    (shared, so the head's trained weights are the joined model's).

    >>> front, head = split_fixed_front(scatternet_linear())
    >>> join_front(front, head).count_params()
    39700
    """
    return keras.Sequential([keras.Input(front.input_shape[1:])]
                            + front.layers + head.layers,
                            name=front.name[:-len("_front")])

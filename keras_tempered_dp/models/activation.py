"""One resolver from what a user names as an activation to a Keras layer."""

import keras

from keras_tempered_dp.activations import get_activation
from keras_tempered_dp.layers import TemperedSigmoid

layers = keras.layers


def activation_layer(activation, name=None, s=None, T=None, o=None):
    """Returns a fresh Keras layer applying ``activation``.

    Args:
        activation: a registered name (``"tempered_sigmoid"``, ``"tanh"``,
            ...), a callable, or a Keras layer (a new layer with the same
            config is made, so each position owns one).
        name: the new layer's name.
        s, T, o: with ``activation="tempered_sigmoid"``, the tempered
            sigmoid's parameters (a :class:`TemperedSigmoid` layer); None
            keeps the registered default (2, 2, 1). Refused with any other
            activation, where they would be ignored.

    Raises:
        ValueError: for an unknown name (listing the known ones), or s, T,
            o given with another activation.

    Example:

    >>> layer = activation_layer("tempered_sigmoid", "act", s=3, T=1, o=1.5)
    >>> layer.s, layer.T, layer.o
    (3.0, 1.0, 1.5)
    >>> activation_layer("tanh", "act").activation.__name__
    'tanh'
    """
    params = {k: v for k, v in dict(s=s, T=T, o=o).items() if v is not None}
    if params:
        if activation != "tempered_sigmoid":
            raise ValueError(
                f"activation={activation!r} with {sorted(params)}: s, T and o "
                "are the tempered sigmoid's parameters; use "
                "activation='tempered_sigmoid' or leave them out.")
        return TemperedSigmoid(**params, name=name)
    if isinstance(activation, layers.Layer):
        config = dict(activation.get_config(), name=name)
        return activation.__class__.from_config(config)
    if isinstance(activation, str):
        get_activation(activation)  # unknown names fail here, listing known
        return layers.Activation(activation, name=name)
    return layers.Activation(get_activation(activation), name=name)

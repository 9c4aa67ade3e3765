"""Taps: record each trainable layer's input and pre-activation output.

During the engine's forward pass every layer that owns trainable weights
has its ``call`` replaced by one that computes the layer without its
activation (``z``), records ``(inputs, z)`` and applies the activation to
``z``. The gradient of the summed loss with respect to each ``z`` then holds
every example's gradient signal for that layer; the layer's norm function
turns it into per-example gradient norms.
"""

import collections
import contextlib
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from keras_tempered_dp.privacy.checks import iter_layers
from keras_tempered_dp.privacy.clipping.variables import variable_name

_LINEAR = keras.activations.linear


class TapRecord(NamedTuple):
    """One recorded call of a tapped layer."""

    inputs: tf.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: tf.Tensor  # before the activation: z


def _leaf_layers_with_weights(model):
    for layer in iter_layers(model):
        sublayers = list(layer._flatten_layers(include_self=False,
                                               recursive=False))
        if layer.trainable_weights and not sublayers:
            yield layer


class Tap:
    """Wraps one layer's ``call`` while recording."""

    def __init__(self, layer):
        self.layer = layer
        self.records = []
        self._call = None

    def linear_call(self, inputs, *args, **kwargs):
        """The layer's own call with its activation switched off."""
        call = self._call or self.layer.call
        activation = getattr(self.layer, "activation", None)
        if activation is None or activation is _LINEAR:
            return call(inputs, *args, **kwargs)
        self.layer.activation = _LINEAR
        try:
            return call(inputs, *args, **kwargs)
        finally:
            self.layer.activation = activation

    @tf.autograph.experimental.do_not_convert
    def recording_call(self, inputs, *args, **kwargs):
        z = self.linear_call(inputs, *args, **kwargs)
        self.records.append(TapRecord(inputs, args, kwargs, z))
        activation = getattr(self.layer, "activation", None)
        return z if activation is None else activation(z)

    def only_record(self):
        """The one record of the last pass; raises if the layer was called
        another number of times."""
        if len(self.records) != 1:
            raise ValueError(
                f"Layer {self.layer.name!r} was called {len(self.records)} "
                "times in one forward pass. The clipping engine needs each "
                "layer with trainable weights to be called exactly once "
                "(shared weights make one example's gradient a sum over "
                "calls). Use compile_dp(..., optimizer='dp_keras_sgd') for "
                "such models.")
        return self.records[0]

    @contextlib.contextmanager
    def installed(self):
        self.records = []
        self._call = self.layer.call
        self.layer.call = self.recording_call
        try:
            yield self
        finally:
            del self.layer.call  # back to the class's method
            self._call = None


def _refuse_shared_variables(model):
    """Raises if two layers list the same trainable variable (tied weights).

    The engine computes each layer's per-example gradient from that layer's
    own inputs and outputs; a variable used by two layers would get one
    layer's gradient only, and its norm would miss the cross term.
    """
    users = collections.defaultdict(list)
    for layer in iter_layers(model):
        if hasattr(layer, "layers"):  # a nested model: its layers count
            continue
        for w in layer.trainable_weights:
            users[id(w)].append((w, layer.name))
    for uses in users.values():
        if len(uses) > 1:
            names = ", ".join(repr(name) for _, name in uses)
            raise ValueError(
                "The trainable variable "
                f"{variable_name(uses[0][0])!r} is shared by the layers "
                f"{names} (tied weights). The clipping engine "
                "computes per-example gradients layer by layer and cannot "
                "add up one variable's gradients across layers, so its "
                "update would be wrong. Untie the weights, or use "
                "compile_dp(..., optimizer='dp_keras_sgd').")


def find_taps(model):
    """Taps for every layer holding trainable weights.

    Raises:
        ValueError: if some trainable variable belongs to no leaf layer (a
            custom layer that owns weights and sublayers at once), or to
            two layers (tied weights), naming it.
    """
    _refuse_shared_variables(model)
    taps = [Tap(layer) for layer in _leaf_layers_with_weights(model)]
    covered = {id(w) for tap in taps for w in tap.layer.trainable_weights}
    missing = [variable_name(w) for w in model.trainable_weights
               if id(w) not in covered]
    if missing:
        raise ValueError(
            "The clipping engine cannot see which layer uses these trainable "
            f"variables: {missing}. It computes per-example gradients layer "
            "by layer and needs every trainable weight to belong to a layer "
            "without sublayers. Move such weights into a layer of their own, "
            "or use compile_dp(..., optimizer='dp_keras_sgd').")
    return taps

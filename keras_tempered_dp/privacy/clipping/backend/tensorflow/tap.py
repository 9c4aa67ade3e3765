"""Taps: record each clip unit's inputs and outputs, at every call.

During the engine's forward pass every clip unit (:mod:`..traversal`) has
its ``call`` replaced by one that computes the unit, records ``(inputs,
z)`` and returns its output. A unit that keeps its activation as an
attribute (Dense, Conv2D, EinsumDense) is computed without it: ``z`` is the
pre-activation and the activation is applied to it after recording. The
gradient of the summed loss with respect to each recorded ``z`` then holds
every example's gradient signal for that call; the unit's norm function
turns it into per-example gradient norms. A unit called k times in one pass
(shared weights, tied embeddings) has k records, and its per-example
gradient is the sum over its calls (:mod:`.clipped_sum`).
"""

import collections
import contextlib
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from keras_tempered_dp.privacy.traversal import clip_units
from .variables import variable_name

_LINEAR = keras.activations.linear


class TapRecord(NamedTuple):
    """One recorded call of a tapped unit; ``args`` and ``kwargs`` are
    the call's other arguments (masks, ``training``), for recomputation."""

    inputs: tf.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: tf.Tensor  # before the activation: z


class Tap:
    """Wraps one layer's ``call`` while recording."""

    def __init__(self, layer):
        self.layer = layer
        self.records = []
        self._call = None

    @property
    def strips_activation(self):
        """Whether the unit keeps its activation as its own attribute
        (Dense, Conv2D, EinsumDense): then ``z`` is recorded before it. An
        ``activation`` that is a property (LSTM's is its cell's) is part of
        the unit's computation."""
        return "activation" in vars(self.layer)

    def linear_call(self, inputs, *args, **kwargs):
        """The unit's own call, with its activation switched off where
        :attr:`strips_activation`."""
        call = self._call or self.layer.call
        activation = self.layer.activation if self.strips_activation else None
        if activation is None or activation is _LINEAR:
            return call(inputs, *args, **kwargs)
        self.layer.activation = _LINEAR
        try:
            return call(inputs, *args, **kwargs)
        finally:
            self.layer.activation = activation

    def refuse_several_outputs(self, one_tensor):
        """Raises unless the call returned ``one_tensor``."""
        if not one_tensor:
            raise ValueError(
                f"Layer {self.layer.name!r} ({type(self.layer).__name__}) "
                "returns several tensors (e.g. return_state=True). The "
                "clipping engine records one output tensor per call of a "
                "layer it clips: use the layer with one output (for a "
                "recurrent layer, return_state=False).")

    @tf.autograph.experimental.do_not_convert
    def recording_call(self, inputs, *args, **kwargs):
        z = self.linear_call(inputs, *args, **kwargs)
        self.refuse_several_outputs(tf.is_tensor(z))
        self.records.append(TapRecord(inputs, args, kwargs, z))
        activation = self.layer.activation if self.strips_activation else None
        return z if activation is None else activation(z)

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


def _refuse_shared_variables(units):
    """Raises if two clip units list the same trainable variable (tied
    weights across layers).

    The engine computes each unit's per-example gradient from that unit's
    own inputs and outputs; a variable used by two units would get one
    unit's gradient only, and its norm would miss the cross term. One layer
    called twice (keras_hub's ReversibleEmbedding, a shared Dense) is fine.
    """
    users = collections.defaultdict(list)
    for unit in units:
        for w in unit.trainable_weights:
            users[id(w)].append((w, unit.name))
    for uses in users.values():
        if len(uses) > 1:
            names = ", ".join(repr(name) for _, name in uses)
            raise ValueError(
                "The trainable variable "
                f"{variable_name(uses[0][0])!r} is used by the layers "
                f"{names} (tied weights across layers). The clipping engine "
                "computes each layer's per-example gradient from its own "
                "calls and cannot add one variable's gradients across "
                "layers, so its update would be wrong. Make one layer own "
                "every use of the weight and call it wherever it is needed "
                "(as keras_hub.layers.ReversibleEmbedding does for tied "
                "input and output embeddings), or untie the weights.")


def find_taps(model):
    """Taps for every clip unit of ``model`` (:func:`..traversal.clip_units`).

    Raises:
        ValueError: if some trainable variable belongs to no unit the
            traversal reaches, or to two units (tied weights), naming it.
    """
    units = list(clip_units(model))
    _refuse_shared_variables(units)
    taps = [Tap(unit) for unit in units]
    covered = {id(w) for tap in taps for w in tap.layer.trainable_weights}
    missing = [variable_name(w) for w in model.trainable_weights
               if id(w) not in covered]
    if missing:
        raise ValueError(
            "The clipping engine cannot see which layer uses these trainable "
            f"variables: {missing}. It computes per-example gradients layer "
            "by layer and needs every trainable weight to be held by a "
            "layer of the model (or by a layer nested in one). Create such "
            "weights with add_weight in a layer that uses them, not on the "
            "model itself.")
    return taps

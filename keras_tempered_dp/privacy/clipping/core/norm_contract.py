"""The contract between the engine and a layer's norm function."""

from collections.abc import Callable
from typing import NamedTuple, Protocol

import keras
import tensorflow as tf

from .groups import Groups

# ``factors [G] -> grads``: for each trainable weight of the layer, in
# order, ``sum_m factors[m] * grad_m`` over the groups m.
ClippedSumFn = Callable[[tf.Tensor], list[tf.Tensor]]


class NormResult(NamedTuple):
    """What a norm function returns.

    Attributes:
        sq_norms: ``[G]``: for each group, the squared L2 norm of the
            gradient of the group's *mean* loss with respect to all of the
            layer's trainable weights.
        clipped_sum: None, or a :data:`ClippedSumFn`; None makes the engine
            recompute the layer with re-weighted ``grad_outputs``.
    """

    sq_norms: tf.Tensor
    clipped_sum: ClippedSumFn | None = None


class NormFn(Protocol):
    """The signature of a registered norm function.

    Args:
        layer: the layer, all of whose weights are trainable.
        inputs: what the layer's ``call`` received.
        grad_outputs: the gradient of the summed per-example loss with
            respect to the layer's output before its activation.
        num_groups: which rows are clipped together (:data:`.groups.Groups`:
            None per example, an int G for microbatches, ``GroupsOf(K)``
            for augmented copies); :func:`.groups.regroup` handles all
            three.
        call: ``call(x)`` computes the layer without its activation, for
            functions that recompute.
    """

    def __call__(self, layer: keras.layers.Layer, inputs: tf.Tensor,
                 grad_outputs: tf.Tensor, num_groups: Groups,
                 call: Callable[[tf.Tensor], tf.Tensor]) -> NormResult:
        ...

"""Recomputing a layer: the call the norm functions get, and its check.

Layers without a specialised norm function (the generic route) are called
again, once per group for the norms and once more for the clipped sum. The
clip factor computed from one call is then applied to the gradient of
another, which is sound only if both calls compute the same function: a
layer that draws random numbers in ``call`` (dropout inside a custom layer)
would give each call its own draw, and one example's clipped contribution
could exceed the clip norm C. So every recomputation is compared with the
outputs the forward pass recorded and the step fails, before any update,
when they differ by more than float32 round-off.
"""

import tensorflow as tf

# Recomputed outputs may differ from the recorded ones by round-off only:
# the same operations, batched differently. Relative to the layer's largest
# output; a dropout mask or added noise moves outputs by far more.
_RELATIVE_TOLERANCE = 1e-4


class Recompute:
    """``call(x)``: the layer without its activation, with the forward
    pass's other arguments; ``recorded``: the ``[B, ...]`` pre-activation
    outputs that pass recorded, to check recomputations against."""

    def __init__(self, tap, record):
        self._tap = tap
        self._record = record
        self.recorded = record.outputs

    def __call__(self, x):
        return self._tap.linear_call(x, *self._record.args,
                                     **self._record.kwargs)


def deviation(recomputed, recorded):
    """``max |recomputed - recorded|`` (a scalar; per group under
    ``tf.vectorized_map``)."""
    return tf.reduce_max(tf.abs(tf.cast(recomputed, tf.float32)
                                - tf.cast(recorded, tf.float32)))


def check_same_outputs(layer, max_deviation, recorded):
    """An op raising ``InvalidArgumentError`` when a recomputation of
    ``layer`` moved its outputs by more than round-off."""
    scale = tf.reduce_max(tf.abs(tf.cast(recorded, tf.float32)))
    return tf.debugging.assert_less_equal(
        max_deviation, _RELATIVE_TOLERANCE * scale + 1e-6,
        message=(
            f"Layer {layer.name!r} gave different outputs when the clipping "
            "engine called it again: its call draws random numbers or "
            "depends on state it changes. The engine recomputes layers "
            "that have no registered norm function and needs their call to "
            "be a deterministic function of inputs and weights; otherwise "
            "an example's gradient could escape the clip. Move the "
            "randomness into a layer of its own (e.g. keras.layers.Dropout "
            "before it), or register a norm function for the layer "
            "(keras_tempered_dp.privacy.clipping.register_norm_fn). Maximum "
            "difference (then the allowed one):"))

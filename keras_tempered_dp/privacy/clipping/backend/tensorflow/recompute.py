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
    """``call(x)``: the unit without its activation, with the forward
    pass's other arguments; ``recorded``: the ``[B, ...]`` outputs that pass
    recorded, to check recomputations against.

    Other arguments that carry the batch axis (a mask, a second input of
    attention) must follow ``x`` when a group's rows are recomputed on
    their own: :meth:`batched_args` lists them, and ``call(x_g, batched)``
    takes the group's rows of each in their place.
    """

    def __init__(self, tap, record):
        self._tap = tap
        self._record = record
        self.recorded = record.outputs

    @property
    def arguments(self):
        """``(args, kwargs)``: what the call received besides its inputs
        (``reverse=True`` for a reversed embedding)."""
        return self._record.args, self._record.kwargs

    def batched_args(self):
        """The other arguments' tensors that have the batch axis first."""
        return batched_args(self._record)

    def __call__(self, x, batched=None):
        record = self._record
        if batched:
            replacements = iter(batched)  # in batched_args' order
            record = map_batched_args(lambda _: next(replacements), record)
        return self._tap.linear_call(x, *record.args, **record.kwargs)


def batched_positions(record):
    """Where, among the flattened ``(args, kwargs)`` of ``record``, the
    tensors that carry the batch axis are."""
    rows = _leading_dim(record.inputs)
    return [i for i, leaf in enumerate(tf.nest.flatten((record.args,
                                                         record.kwargs)))
            if _carries_batch(leaf, rows)]


def batched_args(record):
    """The tensors among ``record``'s other arguments that carry the batch
    axis, in order."""
    leaves = tf.nest.flatten((record.args, record.kwargs))
    return [leaves[i] for i in batched_positions(record)]


def map_batched_args(fn, record):
    """``record`` with ``fn`` applied to each other argument that carries
    the batch axis."""
    structure = (record.args, record.kwargs)
    leaves = tf.nest.flatten(structure)
    for i in batched_positions(record):
        leaves[i] = fn(leaves[i])
    args, kwargs = tf.nest.pack_sequence_as(structure, leaves)
    return record._replace(args=tuple(args), kwargs=kwargs)


def _leading_dim(inputs):
    """The static leading dimension of ``inputs``' first tensor."""
    tensors = [t for t in tf.nest.flatten(inputs) if tf.is_tensor(t)]
    return tensors[0].shape[0] if tensors else None


def _carries_batch(leaf, rows):
    """Whether ``leaf`` is a tensor whose leading axis is the batch's: its
    static leading dimension is the inputs' (both unknown included)."""
    return (tf.is_tensor(leaf) and not isinstance(leaf, tf.Variable)
            and leaf.shape.rank is not None and leaf.shape.rank >= 1
            and leaf.shape[0] == rows)


def deviation(recomputed, recorded):
    """``max |recomputed - recorded|`` (a scalar; per group under
    ``tf.vectorized_map``)."""
    return tf.reduce_max(tf.abs(tf.cast(recomputed, tf.float32)
                                - tf.cast(recorded, tf.float32)))


def check_same_outputs(layer, max_deviation, recorded,
                       tolerance=_RELATIVE_TOLERANCE, message=None):
    """An op raising ``InvalidArgumentError`` when a recomputation of
    ``layer`` moved its outputs by more than ``tolerance`` times their
    largest magnitude (default: round-off)."""
    scale = tf.reduce_max(tf.abs(tf.cast(recorded, tf.float32)))
    return tf.debugging.assert_less_equal(
        max_deviation, tolerance * scale + 1e-6,
        message=message or (
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

"""Gradient accumulation: a logical batch in chunks of physical size.

The chunks' clipped sums (and quantile counts) add up to the logical
batch's; the engine adds the noise once, to the total, so the update equals
the one-batch update.
"""

import tensorflow as tf

from keras_tempered_dp.privacy.clipping.clipped_sum import ClippedSum
from keras_tempered_dp.privacy.clipping.groups import Batch


def _chunk(tensor, i, size):
    return None if tensor is None else tensor[i * size:(i + 1) * size]


def accumulated(chunk_sum, batch, size, model):
    """The :class:`ClippedSum` of ``batch``, computed ``size`` rows at a time.

    Args:
        chunk_sum: ``Batch -> ClippedSum`` for one chunk (augmenting it).
        batch: the logical batch (:class:`.groups.Batch`).
        size: the physical batch size.
        model: the model, for its variables and output shape.
    """
    chunks = (tf.shape(batch.x)[0] + size - 1) // size

    def body(i, sums, below, counted, preds):
        part = chunk_sum(Batch(*(_chunk(t, i, size) for t in batch)))
        return (i + 1, [a + tf.cast(b, a.dtype)
                        for a, b in zip(sums, part.sums)],
                below + part.below, counted + part.counted,
                preds.write(i, part.y_pred))

    outputs = getattr(model, "outputs", None)
    _, sums, below, counted, preds = tf.while_loop(
        lambda i, *_: i < chunks, body,
        (tf.constant(0),
         [tf.zeros_like(v) for v in model.trainable_variables],
         tf.constant(0.0), tf.constant(0.0),
         tf.TensorArray(outputs[0].dtype if outputs else tf.float32,
                        size=chunks, infer_shape=False)))
    y_pred = preds.concat()
    y_pred.set_shape([None] + list(model.output_shape[1:]))
    return ClippedSum(sums, y_pred, below, counted)

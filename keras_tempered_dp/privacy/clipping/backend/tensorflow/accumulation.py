"""Gradient accumulation: a logical batch in chunks of physical size.

The chunks' clipped sums (and quantile and non-finite counts) add up to
the logical batch's; the engine adds the noise once, to the total, so the
update equals the one-batch update.
"""

import tensorflow as tf

from .batches import Batch
from .clipped_sum import ClippedSum


def _chunk(tensor, i, size):
    return None if tensor is None else tf.nest.map_structure(
        lambda t: t[i * size:(i + 1) * size], tensor)


def accumulated(chunk_sum, batch, size, model):
    """The :class:`ClippedSum` of ``batch``, computed ``size`` rows at a time.

    Args:
        chunk_sum: ``Batch -> ClippedSum`` for one chunk (augmenting it).
        batch: the logical batch (:class:`.groups.Batch`).
        size: the physical batch size.
        model: the model, for its variables.
    """
    chunks = (batch.rows() + size - 1) // size

    def body(i, sums, below, counted, nonfinite, preds):
        part = chunk_sum(Batch(*(_chunk(t, i, size) for t in batch)))
        return (i + 1, [a + tf.cast(b, a.dtype)
                        for a, b in zip(sums, part.sums)],
                below + part.below, counted + part.counted,
                nonfinite + part.nonfinite, preds.write(i, part.y_pred))

    # The first chunk outside the loop: its outputs' dtype and static shape
    # are the TensorArray's, for any model (a subclassed one has no
    # output_shape). A batch holds at least one chunk.
    first = chunk_sum(Batch(*(_chunk(t, 0, size) for t in batch)))
    element = first.y_pred
    _, sums, below, counted, nonfinite, preds = tf.while_loop(
        lambda i, *_: i < chunks, body,
        (tf.constant(1),
         [tf.cast(g, v.dtype) for g, v in zip(first.sums,
                                              model.trainable_variables)],
         first.below, first.counted, first.nonfinite,
         tf.TensorArray(element.dtype, size=chunks, infer_shape=False,
                        element_shape=tf.TensorShape(
                            [None]).concatenate(element.shape[1:]))
         .write(0, element)))
    y_pred = preds.concat()
    y_pred.set_shape([None] + element.shape[1:].as_list())
    return ClippedSum(sums, y_pred, below, counted, nonfinite)

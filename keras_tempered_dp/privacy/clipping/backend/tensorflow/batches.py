"""A step's rows: the batch as the loss sees it, augmented copies, and the
checks and counts the TensorFlow step makes per group."""

from typing import NamedTuple

import tensorflow as tf

from ...core.groups import GroupsOf


class Batch(NamedTuple):
    """The rows of one step (or one chunk of it), as the loss sees them."""

    x: tf.Tensor  # or a dict / list of tensors (KerasHub's inputs)
    y: tf.Tensor
    sample_weight: tf.Tensor | None = None

    def rows(self):
        """The number of rows (examples, or their augmented copies)."""
        return tf.shape(tf.nest.flatten(self.x)[0])[0]


def repeat_rows(tensor, k):
    """Each row repeated ``k`` times, copies side by side (None stays)."""
    if tensor is None or k == 1:
        return tensor
    return tf.nest.map_structure(lambda t: tf.repeat(t, k, axis=0), tensor)


def augmented_copies(batch, k, augment, generator):
    """The batch with each example replaced by ``k`` augmented copies, side
    by side (they form the example's group, ``GroupsOf(k)``).

    Without ``augment`` nothing changes; with ``k == 1`` each example is
    augmented once.
    """
    if augment is None:
        return batch
    x, y, sample_weight = (repeat_rows(t, k) for t in batch)
    return Batch(augment(x, generator), y, sample_weight)


def checked_microbatches(losses, records, grad_outputs, num_microbatches):
    """Raises unless ``num_microbatches`` divides the batch's rows (those of
    the per-example ``losses``).

    The check runs before anything is reshaped by groups: ``records`` and
    ``grad_outputs`` come back made to wait for it when the batch size is
    only known at run time.
    """
    message = (f"num_microbatches={num_microbatches} does not divide this "
               "batch's size; drop the remainder (drop_remainder=True) or "
               "see keras_tempered_dp.privacy.check_microbatches")
    static = losses.shape[0]
    if static is not None and static % num_microbatches:
        raise ValueError(f"{message} ({static}).")
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(losses)[0] % num_microbatches, 0, message=message)]):
        grad_outputs = [tf.identity(g) for g in grad_outputs]
        records = [record._replace(inputs=tf.nest.map_structure(
            tf.identity, record.inputs)) for record in records]
    return records, grad_outputs


def rows_per_group(rows, num_groups):
    """How many rows each group holds, as an int32 scalar tensor."""
    if isinstance(num_groups, GroupsOf):
        return tf.constant(num_groups.size)
    if num_groups:
        return rows // num_groups
    return tf.constant(1)

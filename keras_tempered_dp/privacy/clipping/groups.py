"""Which examples are clipped together: one group per example, G groups, or
groups of K copies.

Norm functions receive ``num_groups``, one of:

* ``None``: one group per example (per-example clipping);
* an integer G dividing the batch: TF Privacy's microbatches, G groups of
  ``B / G`` consecutive examples;
* :class:`GroupsOf` ``(K)``: groups of ``K`` consecutive rows, however many
  rows there are. Augmentation multiplicity uses it: the ``K`` augmented
  copies of one example sit side by side and form its group, so the clipped
  quantity is the mean gradient over the copies.

In every case a group's gradient is the gradient of its *mean* loss.
:func:`regroup` and :func:`examples_per_group` handle all three.
"""

from typing import NamedTuple, Union

import tensorflow as tf


class GroupsOf:
    """Groups of ``size`` consecutive rows of the batch.

    >>> regroup(tf.zeros([6, 5]), GroupsOf(3)).shape
    TensorShape([2, 3, 5])
    """

    def __init__(self, size):
        self.size = int(size)
        if self.size < 1:
            raise ValueError(f"size={size!r}: must be a positive integer.")

    def __repr__(self):
        return f"GroupsOf({self.size})"


# What norm functions receive as ``num_groups``.
Groups = Union[None, int, GroupsOf]


def regroup(tensor, num_groups):
    """``[B, *rest] -> [G, B / G, *rest]``; None: ``[B, 1, *rest]``.

    >>> regroup(tf.zeros([6, 5]), 2).shape.as_list()
    [2, 3, 5]
    """
    rest = tf.shape(tensor)[1:]
    if num_groups is None:
        return tf.expand_dims(tensor, 1)
    if isinstance(num_groups, GroupsOf):
        shape = tf.concat([[-1, num_groups.size], rest], axis=0)
        out = tf.reshape(tensor, shape)
        out.set_shape([None, num_groups.size] + tensor.shape[1:].as_list())
        return out
    out = tf.reshape(tensor, tf.concat([[num_groups, -1], rest], axis=0))
    out.set_shape([num_groups if isinstance(num_groups, int) else None,
                   None] + tensor.shape[1:].as_list())
    return out


def merge_positions(tensor, num_groups):
    """``[B, P, D] -> [G, (B / G) * P, D]``, keeping P static when it is.

    ``num_groups=None`` returns the tensor unchanged.
    """
    if num_groups is None:
        return tensor
    positions, depth = tensor.shape[1], tensor.shape[-1]
    if isinstance(num_groups, GroupsOf):
        if positions is not None:
            return tf.reshape(tensor, [-1, num_groups.size * positions,
                                       depth])
        return tf.reshape(tensor, [tf.shape(tensor)[0] // num_groups.size,
                                   -1, depth])
    return tf.reshape(tensor, [num_groups, -1, depth])


def examples_per_group(tensor, num_groups):
    """``B / G`` as a scalar of ``tensor``'s dtype (B: ``tensor``'s rows)."""
    if num_groups is None:
        return tf.ones([], tensor.dtype)
    if isinstance(num_groups, GroupsOf):
        return tf.constant(num_groups.size, tensor.dtype)
    return tf.cast(tf.shape(tensor)[0] // num_groups, tensor.dtype)


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


def groups_with_weight(sample_weight, rows, num_groups):
    """``[G]`` float32: 1 for a group holding a row of weight > 0, else 0.

    A row of weight 0 (the placeholder of an empty Poisson draw) is no
    example: it must not count in the quantile estimate.
    """
    if sample_weight is None:
        counted = tf.ones([rows], tf.bool)
    else:
        counted = tf.reduce_any(
            tf.reshape(sample_weight, [rows, -1]) > 0, axis=1)
    grouped = regroup(counted, num_groups)
    return tf.cast(tf.reduce_any(grouped, axis=1), tf.float32)

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

from typing import Union

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

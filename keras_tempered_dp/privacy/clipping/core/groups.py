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
:func:`regroup` and :func:`examples_per_group` handle all three, in
:mod:`.ops` (both backends; the batch size may be unknown while
TensorFlow traces).
"""

from typing import Union

from . import ops


class GroupsOf:
    """Groups of ``size`` consecutive rows of the batch.

    >>> import numpy as np
    >>> tuple(regroup(np.zeros([6, 5], "float32"), GroupsOf(3)).shape)
    (2, 3, 5)
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

    >>> import numpy as np
    >>> tuple(regroup(np.zeros([6, 5], "float32"), 2).shape)
    (2, 3, 5)
    """
    if num_groups is None:
        return ops.expand_dims(tensor, 1)
    rest = tuple(ops.shape(tensor)[1:])
    if isinstance(num_groups, GroupsOf):
        return ops.reshape(tensor, (-1, num_groups.size) + rest)
    return ops.reshape(tensor, (num_groups, -1) + rest)


def merge_positions(tensor, num_groups):
    """``[B, P, D] -> [G, (B / G) * P, D]``, keeping P static when it is.

    ``num_groups=None`` returns the tensor unchanged.
    """
    if num_groups is None:
        return tensor
    positions, depth = tensor.shape[1], tensor.shape[-1]
    if isinstance(num_groups, GroupsOf):
        if positions is not None:
            return ops.reshape(tensor, (-1, num_groups.size * positions,
                                        depth))
        return ops.reshape(tensor, (ops.shape(tensor)[0] // num_groups.size,
                                    -1, depth))
    return ops.reshape(tensor, (num_groups, -1, depth))


def examples_per_group(tensor, num_groups):
    """``B / G`` as a scalar of ``tensor``'s dtype (B: ``tensor``'s rows)."""
    if num_groups is None:
        return ops.cast(1, tensor.dtype)
    if isinstance(num_groups, GroupsOf):
        return ops.cast(num_groups.size, tensor.dtype)
    return ops.cast(ops.shape(tensor)[0] // num_groups, tensor.dtype)


def rows_with_weight(sample_weight, rows):
    """``[B]`` bool: the rows of weight > 0 (every row without weights).

    A row of weight 0 (the placeholder of an empty Poisson draw, the JAX
    engine's padding) is no example: it is not counted.
    """
    if sample_weight is None:
        return ops.ones((rows,), "bool")
    return ops.any(ops.reshape(sample_weight, (rows, -1)) > 0, axis=1)


def groups_with_weight(sample_weight, rows, num_groups):
    """``[G]`` float32: 1 for a group holding a row of weight > 0, else 0
    (a group of none must not count, in the quantile estimate or among
    the non-finite groups)."""
    grouped = regroup(rows_with_weight(sample_weight, rows), num_groups)
    return ops.cast(ops.any(grouped, axis=1), "float32")

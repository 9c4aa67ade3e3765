"""Per-example losses: DP-SGD clips each example's own gradient.

Sparse (integer-label) losses also refuse labels that are not whole
numbers: Keras casts a label of 3.7 to class 3 and trains without a word,
at accuracy 0. How the refusal reaches the user depends on how the step
runs:

* eagerly (``run_eagerly=True``): a ValueError at the first batch;
* in a graph (Keras 2's default, Keras 3's on CPU): a
  ``tf.errors.InvalidArgumentError`` from an assert at the first step,
  before any update;
* under XLA (Keras 3's default where a GPU is present, or
  ``jit_compile=True``) and on the JAX backend, asserts are dropped and
  nothing can raise inside the step, so the loss of such a row is NaN
  instead: the clipping engine
  leaves every example with a non-finite loss out of the clipped sum and
  counts it (``ClippedSum.nonfinite``), and no wrong class is learned.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp import stack

# "none" on both stacks (Keras 2 spells it Reduction.NONE, Keras 3 has no enum).
NONE = "none"


def _is_sparse(loss):
    """Whether ``loss`` takes integer class labels (Keras' sparse
    losses: ``SparseCategoricalCrossentropy`` and its function)."""
    fn = getattr(loss, "fn", None)  # a LossFunctionWrapper, or ours
    names = [type(loss).__name__, getattr(loss, "__name__", ""),
             getattr(fn, "__name__", "")]
    return any(name.lower().startswith("sparse") for name in names)


def _whole_number_rows(y_true):
    """``[B]`` bool: every label of the row is a whole, finite number."""
    y = tf.convert_to_tensor(y_true)
    if not y.dtype.is_floating:
        return None
    whole = tf.logical_and(tf.math.is_finite(y), tf.equal(y, tf.floor(y)))
    return tf.reduce_all(tf.reshape(whole, [tf.shape(y)[0], -1]), axis=1)


def _refusal(name, labels):
    return (f"loss {name!r} takes integer class labels, but y contains "
            f"labels that are not whole numbers (e.g. {labels}); Keras "
            "would truncate them to a class and train on the wrong one. "
            "Pass the class index of each example as an integer (e.g. "
            "y.astype('int32')), or use a loss for float targets.")


def _nan_where_fractional(y_true, losses):
    """``losses`` with NaN on the rows whose labels are not whole numbers,
    in ``keras.ops`` (the JAX backend, where the step is always traced:
    the engine then leaves those rows out, as under XLA)."""
    ops = keras.ops
    y = ops.convert_to_tensor(y_true)
    if "float" not in str(y.dtype):
        return losses
    rows = ops.reshape(ops.logical_and(ops.isfinite(y),
                                       ops.equal(y, ops.floor(y))),
                       (ops.shape(y)[0], -1))
    whole = ops.all(rows, axis=1)
    whole = ops.reshape(whole, (-1,) + (1,) * (len(losses.shape) - 1))
    return ops.where(whole, losses, float("nan"))


def _checked_labels(name, call):
    """``call`` (a loss's ``call(y_true, y_pred)``) refusing non-integral
    labels, eagerly, in a graph, and under XLA or on JAX by a NaN loss
    (see the module docstring)."""
    def checked_call(y_true, y_pred):
        losses = call(y_true, y_pred)
        if stack.backend() != "tensorflow":
            return _nan_where_fractional(y_true, losses)
        whole = _whole_number_rows(y_true)
        if whole is None:
            return losses
        if tf.executing_eagerly():
            if not bool(tf.reduce_all(whole)):
                bad = np.asarray(y_true)[~np.asarray(whole)]
                raise ValueError(_refusal(name, bad.ravel()[:5].tolist()))
            return losses
        # Dropped under XLA, where the NaN below does the refusing.
        checked = tf.debugging.Assert(
            tf.reduce_all(whole),
            [_refusal(name, "see below"), "labels:", y_true], summarize=10)
        nan = tf.constant(float("nan"), losses.dtype)
        rows = tf.reshape(whole, [-1] + [1] * (losses.shape.rank - 1))
        with tf.control_dependencies([checked]):
            return tf.where(rows, losses, nan)
    return checked_call


class _FunctionLoss(keras.losses.Loss):
    """A loss function ``(y_true, y_pred) -> per-example loss`` as a Loss."""

    def __init__(self, fn, name):
        super().__init__(reduction=NONE, name=name)
        self.fn = fn

    def call(self, y_true, y_pred):
        losses = self.fn(y_true, y_pred)
        shape = getattr(losses, "shape", None)
        # TensorFlow's shapes have a rank (None when unknown), JAX's are
        # tuples.
        rank = None if shape is None else (
            shape.rank if hasattr(shape, "rank") else len(shape))
        if rank == 0:
            raise ValueError(
                f"loss {self.name!r} returns one number for the whole batch. "
                "DP-SGD clips each example's gradient, so the loss must "
                "return one value per example (shape [batch]): drop the "
                "final mean or sum (e.g. return "
                "keras.losses.sparse_categorical_crossentropy(y_true, "
                "y_pred, from_logits=True), not its tf.reduce_mean).")
        return losses


def per_example_loss(loss=None):
    """Returns a Keras loss with ``reduction=NONE`` (one value per example).

    Args:
        loss: None (sparse categorical cross-entropy on logits, what the
            package's models need), a Keras loss name, a ``keras.losses.Loss``
            instance (copied with reduction NONE) or a function
            ``(y_true, y_pred) -> per-example loss``.

    A sparse loss (integer class labels) refuses labels that are not whole
    numbers (see the module docstring).

    Example:

    >>> per_example_loss("mse").reduction
    'none'
    """
    if loss is None:
        return _with_label_check(keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=NONE))
    if isinstance(loss, str):
        resolved = keras.losses.get(loss)
    else:
        resolved = loss
    if isinstance(resolved, keras.losses.Loss):
        config = dict(resolved.get_config(), reduction=NONE)
        return _with_label_check(resolved.__class__.from_config(config))
    if callable(resolved):
        name = getattr(resolved, "__name__", "loss")
        return _with_label_check(_FunctionLoss(resolved, name=name))
    raise ValueError(
        f"loss={loss!r}: expected None, a Keras loss name, a "
        "keras.losses.Loss or a function (y_true, y_pred) -> loss."
    )


def _with_label_check(loss):
    """A sparse ``loss`` whose ``call`` refuses non-integral labels.

    The check is set on the instance only: the class, its config and so
    what a saved model records are Keras' own. The labels are checked in
    ``call``, after Keras 3 has converted them to the loss's float dtype:
    their values, not their dtype, are what can be checked.
    """
    if _is_sparse(loss):
        loss.call = _checked_labels(loss.name, loss.call)
    return loss

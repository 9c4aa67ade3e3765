"""Per-example losses: DP-SGD clips each example's own gradient."""

import keras

# "none" on both stacks (Keras 2 spells it Reduction.NONE, Keras 3 has no enum).
NONE = "none"


class _FunctionLoss(keras.losses.Loss):
    """A loss function ``(y_true, y_pred) -> per-example loss`` as a Loss."""

    def __init__(self, fn, name):
        super().__init__(reduction=NONE, name=name)
        self.fn = fn

    def call(self, y_true, y_pred):
        losses = self.fn(y_true, y_pred)
        if getattr(losses, "shape", None) is not None and \
                losses.shape.rank == 0:
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

    Example:

    >>> per_example_loss("mse").reduction
    'none'
    """
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=NONE)
    if isinstance(loss, str):
        resolved = keras.losses.get(loss)
    else:
        resolved = loss
    if isinstance(resolved, keras.losses.Loss):
        config = dict(resolved.get_config(), reduction=NONE)
        return resolved.__class__.from_config(config)
    if callable(resolved):
        name = getattr(resolved, "__name__", "loss")
        return _FunctionLoss(resolved, name=name)
    raise ValueError(
        f"loss={loss!r}: expected None, a Keras loss name, a "
        "keras.losses.Loss or a function (y_true, y_pred) -> loss."
    )

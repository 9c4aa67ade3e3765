"""Checks that stop a run early and say where, instead of training on NaN.

One NaN pixel turns every weight into NaN after the first step it reaches;
the run would still finish and report epsilon. :func:`check_data` looks at
the data before any step, :class:`StopOnNonFiniteLoss` at every step's loss.
"""

import math

import keras
import numpy as np


class NonFiniteError(FloatingPointError):
    """Training met NaN or infinity; the message says where."""


class TrainingDivergedError(NonFiniteError):
    """The loss stopped being finite during training (the data was
    finite: the steps diverged)."""


def check_data(x, y, name, num_classes=None):
    """Raises if ``x`` has a non-finite value or ``y`` is not class labels.

    Args:
        x, y: NumPy arrays, examples on the first axis.
        name: "training" or "test", for the message.
        num_classes: labels must lie in ``[0, num_classes)``; None: only
            non-negative integers.

    Example:

    >>> check_data(np.zeros((2, 3)), np.array([0, 1]), "training")
    >>> check_data(np.array([[0.0, np.nan]]), np.array([0]), "training")
    Traceback (most recent call last):
    ...
    keras_tempered_dp.training.guards.NonFiniteError: The training data has 1 non-finite value (NaN or inf), first in example 0. Remove or repair those examples before training: one NaN turns every weight into NaN.
    """
    if len(x) != len(y):
        raise ValueError(f"The {name} data has {len(x)} examples but "
                         f"{len(y)} labels.")
    bad = ~np.isfinite(np.asarray(x, dtype=np.float64))
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise NonFiniteError(
            f"The {name} data has {int(bad.sum())} non-finite value"
            f"{'s' if bad.sum() > 1 else ''} (NaN or inf), first in example "
            f"{int(rows[0])}. Remove or repair those examples before "
            "training: one NaN turns every weight into NaN.")
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(
                labels)):
            raise ValueError(f"The {name} labels must be integer class "
                             "indices (0, 1, ...).")
    if labels.size and labels.min() < 0:
        raise ValueError(f"The {name} labels hold {labels.min()}: class "
                         "indices must be >= 0.")
    if num_classes is not None and labels.size and \
            labels.max() >= num_classes:
        first = int(np.flatnonzero(labels.reshape(len(labels), -1).max(
            axis=1) >= num_classes)[0])
        raise ValueError(
            f"The {name} labels hold {int(labels.max())} (first at index "
            f"{first}), but the dataset declares {num_classes} classes (0 to "
            f"{num_classes - 1}). Relabel the data, or declare more classes "
            "(num_classes=, --num_classes): the number of classes is never "
            "read off the labels, since an architecture chosen from private "
            "data would itself be a release.")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops ``fit`` with an error at the first step whose loss is not
    finite, naming the epoch, the step and the loss.

    Unlike Keras' TerminateOnNaN it raises: a run that diverged must not
    go on to write results as if it had finished.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"The training loss became {float(loss)} at epoch "
                f"{self.epoch + 1}, step {batch + 1}; the weights are no "
                "longer usable and no results were written. The data was "
                "checked and is finite, so the step diverged: lower "
                "--learning_rate or --l2_norm_clip, or use a bounded "
                "activation such as the tempered sigmoid.")

"""Installing an engine on a model: checks and the replaced train_step."""

import keras
import tensorflow as tf

from keras_tempered_dp import stack
from keras_tempered_dp.privacy.checks import check_dp_trainable
from . import strategies


def is_compiled(model):
    """Whether ``model.compile`` ran: Keras 2 sets ``optimizer`` to None at
    construction, Keras 3 sets no ``optimizer`` before ``compile``."""
    return getattr(model, "optimizer", None) is not None


def check_installable(model):
    """Raises unless the engine can train ``model`` privately."""
    if not is_compiled(model):
        raise ValueError("Compile the model before installing the "
                         "clipping engine (or use compile_dp).")
    check_dp_trainable(model)


def refuse_regularization_losses(model, losses=None):
    """Raises if the model has losses that are not per-example losses
    (``losses``: those a stateless call returned, on JAX)."""
    if model.losses if losses is None else losses:
        raise ValueError(
            "The model has regularization losses (kernel_regularizer, "
            "activity_regularizer or add_loss). Their gradients are not "
            "per-example losses and the engine does not clip them. Use "
            "the optimizer's weight_decay= instead of kernel "
            "regularizers, and remove activity regularizers.")


def build(model, x):
    """Creates an unbuilt model's weights for inputs like ``x``, adding no
    operation to the step being traced.

    Keras 3's ``fit`` builds the model before its first step, Keras 2's
    during it; ``compute_gradients`` called by hand may meet either.
    """
    if model.built:
        return
    if stack.KERAS_3:
        # A symbolic call: builds every layer, computes nothing.
        model(tf.nest.map_structure(
            lambda t: keras.KerasTensor(t.shape, dtype=t.dtype), x))
    else:
        model.build(tf.nest.map_structure(lambda t: t.shape, x))


def without_xla(model):
    """Compiles the step without XLA.

    Gradient accumulation loops over chunks whose number and size are only
    known at run time, which XLA cannot compile. Keras 3 compiles with XLA
    by default (``jit_compile="auto"``) wherever a GPU is present; Keras 2
    only when asked.
    """
    if getattr(model, "jit_compile", False):
        model.jit_compile = False


def replace_train_step(model, step):
    """Makes ``model.fit`` (and ``train_on_batch``) run ``step(data)``.

    Only the instance's ``train_step`` is replaced: the model saves and
    loads as an ordinary Keras model.
    """
    def train_step(data):
        try:
            return strategies.reducible(step(data))
        except Exception:
            # A step that failed while being traced leaves a half-built
            # tf.function behind; drop it so the next fit starts clean.
            model.train_function = None
            raise

    model.train_step = train_step
    model.train_function = None  # rebuild with the new step
    strategies.prepare_fit(model)


def track_loss(model, x, y, y_pred, sample_weight):
    """Updates the "loss" that ``fit`` logs: the compiled (batch-mean) loss
    of the rows seen, not what the DP step differentiated.

    Keras 2's ``compute_loss`` updates the loss metric itself; Keras 3's
    train_step updates its loss tracker after ``compute_loss``, as here.
    """
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred,
                              sample_weight=sample_weight)
    if stack.KERAS_3:
        # Under a strategy Keras 3 divides compute_loss by the replica
        # count (for its own gradient sum); the logged loss is unscaled.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        model._loss_tracker.update_state(loss * replicas,
                                         sample_weight=tf.shape(y_pred)[0])

"""Installing an engine on a model: checks and the replaced train_step."""

import keras
import tensorflow as tf

from keras_tempered_dp import stack
from keras_tempered_dp.privacy.checks import check_dp_trainable
from keras_tempered_dp.privacy.sampling import GLOBAL_DRAW


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


def refuse_regularization_losses(model):
    """Raises if the model has losses that are not per-example losses."""
    if model.losses:
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
            return _reducible(step(data))
        except Exception:
            # A step that failed while being traced leaves a half-built
            # tf.function behind; drop it so the next fit starts clean.
            model.train_function = None
            raise

    model.train_step = train_step
    model.train_function = None  # rebuild with the new step
    _refuse_global_draws(model)
    if stack.KERAS_3:
        _build_from_one_replica(model)
        if not getattr(model.test_step, "_reducible", False):
            test_step = model.test_step
            model.test_step = lambda data: _reducible(test_step(data))
            model.test_step._reducible = True
            model.test_function = None


def _reducible(logs):
    """The step's logs as Keras 3 can reduce them across workers.

    Under MultiWorkerMirroredStrategy with several workers Keras 3 (3.15)
    averages each log over ``axis=0``, which a scalar lacks (its own steps
    fail the same way): scalars become shape ``[1]`` there, and the average
    is the same number.
    """
    if not stack.KERAS_3:
        return logs
    if not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {k: tf.reshape(v, [1]) if getattr(v, "shape", None) == () else v
            for k, v in logs.items()}


def in_multi_worker_mode(strategy):
    """True under a strategy spanning several worker processes."""
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def _refuse_global_draws(model):
    """Makes ``model.fit`` refuse whole-dataset draws across workers.

    ``poisson_batches`` and ``shuffled_batches`` draw global batches; under
    several workers every worker draws its own, and Keras hands each a slice
    of a *different* draw, so one example can join a step twice (a
    sensitivity of 2C the accountant does not know). Such datasets carry a
    mark (:data:`~keras_tempered_dp.privacy.sampling.GLOBAL_DRAW`); a
    dataset transformed afterwards loses it, and the documentation warns.
    """
    fit = model.fit
    if getattr(fit, "_refuses_global_draws", False):
        return

    def checked_fit(*args, **kwargs):
        data = args[0] if args else kwargs.get("x")
        if getattr(data, GLOBAL_DRAW, False) and in_multi_worker_mode(
                model.distribute_strategy):
            raise ValueError(
                "fit(x=poisson_batches(...) or shuffled_batches(...)) under "
                "a multi-worker strategy: each worker would draw its own "
                "batches and train a slice of a different draw, so an "
                "example could join a step twice. Use "
                "distributed_poisson_batches(strategy, x, y, batch_size) "
                "(each replica samples its own shard).")
        return fit(*args, **kwargs)

    checked_fit._refuses_global_draws = True
    model.fit = checked_fit


def _build_from_one_replica(model):
    """Lets Keras 3 build a model under tf.distribute from uneven batches.

    Before training under a strategy, Keras 3 (3.15) takes one batch and
    averages it *elementwise* across replicas to build the model from; with
    Poisson sampling the replicas' batches differ in size and that average
    fails. The build only needs shapes: this takes the first local
    replica's batch instead. (The batch taken is one Poisson draw left
    unused; draws are independent, and only steps run are accounted.)
    """
    original = getattr(model, "_maybe_symbolic_build", None)
    if original is None or getattr(original, "_one_replica", False):
        return

    def maybe_symbolic_build(iterator=None, data_batch=None):
        strategy = getattr(model, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v, next(batches))
                break
            iterator = None
        return original(iterator=iterator, data_batch=data_batch)

    maybe_symbolic_build._one_replica = True
    model._maybe_symbolic_build = maybe_symbolic_build


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

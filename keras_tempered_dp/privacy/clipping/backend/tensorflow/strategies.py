"""What ``fit`` needs from the engine under a tf.distribute strategy.

The step's arithmetic across replicas is :mod:`.replicas`; this module
holds the rest, installed with the engine's ``train_step``:

* the strategies the engine was built for (MirroredStrategy,
  MultiWorkerMirroredStrategy, one device); others are refused;
* ``fit`` refuses whole-dataset draws (``poisson_batches``,
  ``shuffled_batches``) across workers, where an example could join a step
  twice;
* two work-arounds for Keras 3 (3.15) under a strategy: building the model
  from one replica's batch (Poisson batches differ in size per replica),
  and logs of shape ``[1]`` across workers (Keras reduces them over an
  axis a scalar lacks).

All act on the model instance only, like the replaced ``train_step``.
"""

import tensorflow as tf

from keras_tempered_dp import stack
from keras_tempered_dp.privacy.sampling import GLOBAL_DRAW


def prepare_fit(model):
    """Installs the guard and, on Keras 3, the work-arounds on ``model``."""
    _refuse_global_draws(model)
    if not stack.KERAS_3:
        return
    _build_from_one_replica(model)
    if not getattr(model.test_step, "_reducible", False):
        test_step = model.test_step
        model.test_step = lambda data: reducible(test_step(data))
        model.test_step._reducible = True
        model.test_function = None


def _untested_strategies():
    names = ("TPUStrategy", "experimental.TPUStrategy",
             "experimental.CentralStorageStrategy",
             "experimental.ParameterServerStrategy")
    found = []
    for name in names:
        owner = tf.distribute
        for part in name.split("."):
            owner = getattr(owner, part, None)
        if owner is not None:
            found.append(owner)
    return tuple(found)


def refuse_untested(strategy):
    """Only MirroredStrategy and MultiWorkerMirroredStrategy (and one
    device) are built for and tested: others place variables and reduce
    gradients differently, and the noise shares assume one summing
    all-reduce."""
    if isinstance(strategy, _untested_strategies()):
        raise ValueError(
            f"{type(strategy).__name__}: the clipping engine runs under "
            "MirroredStrategy and MultiWorkerMirroredStrategy only (its "
            "noise shares assume one summing all-reduce of the gradients); "
            "see docs/distributed.md for what TPUStrategy would need.")


def reducible(logs):
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

"""Where a run trains: one device, or several through ``tf.distribute``.

* ``none``: TensorFlow's default (one device);
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU, or
  over ``cpu_devices`` logical CPUs (to try it on a machine without GPUs);
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the
  cluster that the ``TF_CONFIG`` environment variable describes; every
  worker runs the same command.

The DP step is the same in all three (noise once per global step, see
:mod:`keras_tempered_dp.privacy.clipping.backend.tensorflow.replicas`), and so is epsilon: the
global batch is what the accountant sees. Only the chief writes the run's
folder; the other workers write to a temporary folder removed at the end.
"""

import contextlib
import json
import os

import tensorflow as tf

from keras_tempered_dp import stack


def make_strategy(settings):
    """The strategy of a :class:`~.config.DistributeConfig`; None for
    ``strategy="none"``.

    Must run before TensorFlow runs anything: logical devices and the
    multi-worker runtime are set up when TensorFlow starts.

    Raises:
        ValueError: bad or missing ``TF_CONFIG``; ``cpu_devices`` asked
            after TensorFlow started with another device count.
    """
    if settings.strategy == "none":
        return None
    if stack.backend() != "tensorflow":
        raise ValueError(
            f"strategy={settings.strategy!r} is a tf.distribute strategy, "
            f"which runs on the TensorFlow backend; Keras runs on "
            f"{stack.backend()!r}. Set KERAS_BACKEND=tensorflow, or on JAX "
            "train with strategy='none' (several JAX devices: "
            "keras.distribution.DataParallel around compile_dp and fit, "
            "docs/engine.md).")
    if settings.strategy == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if settings.cpu_devices is None:
        return tf.distribute.MirroredStrategy()
    split_cpu(settings.cpu_devices)
    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(settings.cpu_devices)])


def split_cpu(count):
    """Makes TensorFlow see ``count`` logical CPU devices.

    Raises:
        ValueError: if TensorFlow already started with another count.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # devices already initialized
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise ValueError(
                f"cpu_devices={count}: TensorFlow already started in this "
                f"process with {have} logical CPU device(s). Split the CPU "
                "before anything else runs (the command line does), or "
                "leave cpu_devices out.") from error


def _check_tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "strategy='multi_worker' needs the TF_CONFIG environment "
            "variable: the cluster's workers and this worker's index, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
            "(see docs/distributed.md).")
    try:
        parsed = json.loads(text)
        workers = parsed["cluster"]["worker"]
        task = parsed["task"]
        ok = (isinstance(workers, list) and workers
              and task["type"] in ("worker", "chief")
              and isinstance(task["index"], int))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ValueError(
            f"TF_CONFIG={text!r}: expected JSON with cluster.worker (a list "
            'of "host:port") and task.type ("worker") and task.index (an '
            "integer); see docs/distributed.md.")


def is_chief(strategy):
    """True on the worker that writes the run's outputs (the only one
    outside multi-worker training)."""
    if strategy is None:
        return True
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())



def scope(strategy):
    """``strategy.scope()``, or a scope that does nothing for None."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()

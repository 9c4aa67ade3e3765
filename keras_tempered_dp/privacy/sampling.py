"""Batch sampling for DP-SGD: Poisson subsampling, as the RDP analysis assumes.

With Poisson subsampling every example joins each step's batch
independently with probability ``q = batch_size / num_examples``; batch sizes
vary around ``batch_size``. The epsilon that :mod:`.accounting` reports for
``sampling="poisson"`` is proven for exactly this. Train such batches with
``compile_dp(..., expected_batch_size=batch_size)``, so every step divides the
noised sum by the expected batch size (dividing by the actual size would make
the update depend on the batch size, which itself reveals membership).

The selection must stay secret: the generator is seeded from the operating
system unless a seed is given (a seed is for tests and reproductions).
"""

import dataclasses
import itertools
import secrets

import numpy as np
import tensorflow as tf

# The package's one step-count rule lives with the accounting that counts
# the steps; re-exported here for the samplers' users.
from keras_tempered_dp.privacy.accounting import steps_per_epoch  # noqa: F401
from keras_tempered_dp.validation import check_number

__all__ = [
    "SamplingMark", "distributed_poisson_batches", "mark_sampling",
    "poisson_batches", "sampling_mark", "shuffled_batches", "steps_per_epoch",
]

# The attribute a sampler's dataset carries; read only by sampling_mark.
_MARK = "_keras_tempered_dp_sampling"


@dataclasses.dataclass(frozen=True)
class SamplingMark:
    """How a dataset draws its batches, as the accountant must be told.

    Attributes:
        sampling: "poisson" (each example joins each batch with probability
            q) or "shuffle" (fixed-size batches of a reshuffled order).
        num_examples: N, the examples it samples from.
        batch_size: B, the (expected) batch size; q = B / N.
    """

    sampling: str
    num_examples: int
    batch_size: int


def mark_sampling(dataset, sampling, num_examples, batch_size):
    """Marks ``dataset`` as drawing its batches by ``sampling`` from
    ``num_examples`` examples (returns it). The package's samplers mark
    theirs; mark your own Poisson sampler this way so that ``fit`` and the
    epsilon callback accept it as one.

    >>> import tensorflow as tf
    >>> data = mark_sampling(tf.data.Dataset.range(3), "poisson", 100, 10)
    >>> sampling_mark(data).batch_size
    10
    """
    if sampling not in ("poisson", "shuffle"):
        raise ValueError(f"sampling={sampling!r}: must be 'poisson' or "
                         "'shuffle'.")
    mark = SamplingMark(sampling, int(num_examples), int(batch_size))
    # object.__setattr__: tf.data's tracking must not see the attribute.
    object.__setattr__(dataset, _MARK, mark)
    return dataset


def sampling_mark(data):
    """The :class:`SamplingMark` of ``data``, or None (arrays, a dataset
    no sampler of this package made or marked)."""
    return getattr(data, _MARK, None)


def poisson_batches(x, y, batch_size, *, seed=None):
    """An endless ``tf.data.Dataset`` of Poisson-sampled batches.

    Each element is ``(x_batch, y_batch, sample_weight)``. A step whose draw
    selects no example yields one example with sample weight 0: its gradient
    is exactly zero, so the step is the noise-only update that an empty
    batch means, and every step still runs (and is accounted).

    Args:
        x, y: NumPy arrays with the examples on the first axis.
        batch_size: the expected batch size; ``q = batch_size / len(x)``.
        seed: None (default) seeds from the operating system.

    Returns:
        A dataset to pass to ``model.fit`` with
        ``steps_per_epoch=steps_per_epoch(len(x), batch_size, "poisson")``.

    Example:

    >>> import numpy as np
    >>> data = poisson_batches(np.zeros((1000, 2)), np.zeros(1000), 100,
    ...                        seed=0)
    >>> xb, yb, wb = next(iter(data))
    >>> 60 < len(xb) < 140
    True
    """
    x, y = _examples(x, y)
    _check_batch_size(batch_size, len(x))
    return mark_sampling(
        _global_draw(_poisson_dataset(x, y, batch_size / len(x),
                                      _fresh_each_iteration(seed))),
        "poisson", len(x), batch_size)


def distributed_poisson_batches(strategy, x, y, batch_size, *, seed=None):
    """Poisson-sampled batches for a ``tf.distribute`` strategy.

    Example ``i`` belongs to shard ``i mod R`` (R replicas in sync, on all
    workers together); each replica draws its batch from its own shard,
    every example independently with probability ``q = batch_size /
    len(x)``. Together the replicas' batches form one Poisson sample of the
    whole dataset with rate ``q``, each example in it at most once: the
    sampling the accountant assumes, with the same ``q`` (and so the same
    epsilon) as on one device. Train with
    ``compile_dp(..., expected_batch_size=batch_size)`` (the global one).

    Why not split one global draw: under ``MultiWorkerMirroredStrategy``
    each worker draws its own batches, and Keras' sharding of a dataset of
    batches would take slices of different draws, where one example could
    be in the step twice. Here no two replicas ever hold the same example.

    Args:
        strategy: the ``tf.distribute.Strategy`` the model trains under.
        x, y, batch_size: as :func:`poisson_batches` (batch_size global).
        seed: None (default) seeds every shard from the operating system;
            an integer seeds shard ``r`` with ``(seed, r)``.

    Returns:
        A ``tf.distribute.DistributedDataset`` to pass to ``model.fit``
        with ``steps_per_epoch=steps_per_epoch(len(x), batch_size,
        "poisson")``; each element holds every replica's
        ``(x, y, sample_weight)``, a weight-0 placeholder row for a replica
        whose draw is empty.

    Example:

    >>> import numpy as np
    >>> data = distributed_poisson_batches(tf.distribute.get_strategy(),
    ...     np.zeros((1000, 2)), np.zeros(1000), 100, seed=0)
    >>> xb, yb, wb = next(iter(data))
    >>> 60 < len(xb) < 140
    True
    """
    x, y = _examples(x, y)
    _check_batch_size(batch_size, len(x))
    replicas = strategy.num_replicas_in_sync
    if replicas > len(x):
        raise ValueError(f"{len(x)} examples for {replicas} replicas: every "
                         "replica needs a shard of at least one example.")
    per_worker = _replica_shards(x, y, batch_size / len(x), replicas, seed)
    return mark_sampling(
        strategy.distribute_datasets_from_function(per_worker), "poisson",
        len(x), batch_size)


def _replica_shards(x, y, q, replicas, seed):
    """The ``dataset_fn`` of ``distribute_datasets_from_function``: for an
    input pipeline, the Poisson draws (rate ``q``) of its replicas' shards,
    replica ``r`` drawing from ``x[r::replicas]``, one batch per element."""

    def shard(r):
        return _poisson_dataset(x[r::replicas], y[r::replicas], q,
                                _fresh_each_iteration(seed, r))

    def per_worker(context):
        # This input pipeline feeds ``local`` consecutive replicas; the
        # strategy hands them consecutive elements, one batch each.
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        shards = tuple(shard(r) for r in range(first, first + local))

        def one_per_replica(*batches):
            out = tf.data.Dataset.from_tensors(batches[0])
            for batch in batches[1:]:
                out = out.concatenate(tf.data.Dataset.from_tensors(batch))
            return out

        return tf.data.Dataset.zip(shards).flat_map(
            one_per_replica).prefetch(2)

    return per_worker


def _examples(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}.")
    return x, y


def _check_batch_size(batch_size, n):
    check_number("batch_size", batch_size, low=1, high=n, integer=True,
                 hint="It is the expected batch size, at most the "
                      "number of examples; q = batch_size / len(x).")


def _fresh_each_iteration(seed, *key):
    """``make_rng`` for :func:`_poisson_dataset`: each new iterator over the
    dataset (each ``fit``) gets draws no earlier iterator had.

    Restarting a seeded stream would replay the same batches in a second
    ``fit``: two releases on one subsample cost more than the accountant
    counts for two steps. With a seed the first iterator draws from
    ``(seed, *key)`` and the k-th after it from ``(seed, *key, k)``;
    without one, every iterator from the operating system.
    """
    count = itertools.count()

    def make_rng():
        if seed is None:
            return np.random.default_rng()
        k = next(count)
        entropy = [seed, *key] + ([k] if k else [])
        return np.random.default_rng(entropy if len(entropy) > 1 else seed)

    return make_rng


# Datasets of whole-dataset draws are marked: under several workers each
# worker draws its own, and Keras would give each a slice of a different
# draw (an example could join a step twice). The engine refuses them there
# (clipping/strategies.py).
GLOBAL_DRAW = "_keras_tempered_dp_global_draw"


def _global_draw(dataset):
    dataset = dataset.prefetch(2)
    setattr(dataset, GLOBAL_DRAW, True)
    return dataset


def _poisson_dataset(x, y, q, make_rng):
    """Endless Poisson draws of rate ``q`` from ``(x, y)``, each iteration
    with a new ``make_rng()``; an empty draw yields one row of sample
    weight 0."""
    n = len(x)

    def generate():
        rng = make_rng()
        while True:
            index = np.flatnonzero(rng.random(n) < q)
            if index.size:
                yield x[index], y[index], np.ones(index.size, "float32")
            else:
                yield x[:1], y[:1], np.zeros(1, "float32")

    signature = (
        tf.TensorSpec((None,) + x.shape[1:], tf.as_dtype(x.dtype)),
        tf.TensorSpec((None,) + y.shape[1:], tf.as_dtype(y.dtype)),
        tf.TensorSpec((None,), tf.float32),
    )
    return tf.data.Dataset.from_generator(generate,
                                          output_signature=signature)


def shuffled_batches(x, y, batch_size, *, seed=None):
    """Keras' usual scheme: reshuffle every epoch, fixed-size batches.

    The last batch of an epoch is dropped so all batches have ``batch_size``
    examples. Epsilon for this scheme is the Poisson number by convention,
    or the "without_replacement" accounting; see
    :mod:`keras_tempered_dp.privacy.accounting`.

    The order must stay secret, like the Poisson draw: ``seed=None`` draws
    the shuffle's seed from the operating system. (Passing None on to
    tf.data would not do: under ``keras.utils.set_random_seed`` its
    order follows the public global seed.) With a seed, every new
    iterator starts the same order again: a second ``fit`` on the same
    dataset replays the first one's batches; make a dataset (with another
    seed) per ``fit``.
    """
    if seed is None:
        seed = secrets.randbits(63)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return mark_sampling(
        _global_draw(data.batch(batch_size, drop_remainder=True).repeat()),
        "shuffle", len(x), batch_size)

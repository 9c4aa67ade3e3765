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

import secrets

import numpy as np
import tensorflow as tf

# The package's one step-count rule lives with the accounting that counts
# the steps; re-exported here for the samplers' users.
from keras_tempered_dp.privacy.accounting import steps_per_epoch  # noqa: F401


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
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}.")
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size \
            <= n:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer in "
                         f"[1, {n}].")
    q = batch_size / n
    x = np.asarray(x)
    y = np.asarray(y)

    def generate():
        rng = np.random.default_rng(seed)
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
    return tf.data.Dataset.from_generator(
        generate, output_signature=signature).prefetch(2)


def shuffled_batches(x, y, batch_size, *, seed=None):
    """Keras' usual scheme: reshuffle every epoch, fixed-size batches.

    The last batch of an epoch is dropped so all batches have ``batch_size``
    examples. Epsilon for this scheme is the Poisson number by convention,
    or the "without_replacement" accounting; see
    :mod:`keras_tempered_dp.privacy.accounting`.

    The order must stay secret, like the Poisson draw: ``seed=None`` draws
    the shuffle's seed from the operating system. (Passing None on to
    tf.data would not do: under ``keras.utils.set_random_seed`` its
    order follows the public global seed.)
    """
    if seed is None:
        seed = secrets.randbits(63)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size, drop_remainder=True).repeat().prefetch(2)

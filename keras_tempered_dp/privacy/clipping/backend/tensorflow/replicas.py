"""One DP-SGD step across replicas (tf.distribute): noise once per global step.

Under a ``tf.distribute`` strategy Keras runs ``train_step`` on every
replica, each with its own part of the global batch, and the optimizer sums
the replicas' gradients (an all-reduce) before the one update. Replica
``r`` of ``R`` contributes

    (S_r + Z_r) / D,        Z_r ~ N(0, sigma^2 C^2 / R),

``S_r`` the clipped sum over its own examples and ``D`` the *global*
denominator (the global batch size, its expectation under Poisson sampling,
or the number of microbatches). The update therefore holds

    (sum_r S_r + sum_r Z_r) / D,    sum_r Z_r ~ N(0, sigma^2 C^2)

when the shares are independent: exactly the single-device step, with the
noise of one Gaussian mechanism added once. Independence needs every
replica to draw from its own stream; the engine's generator is created in
the strategy's scope, where TensorFlow folds the (global) replica id into
each replica's draws (tested: no two replicas draw the same noise).

Why shares and not one replica adding all of it: every replica runs the
same program (no branch on the replica id), and each share's std is
rounded *up*, so the sum's variance is never below ``sigma^2 C^2``. The
shares are not a secrecy measure: every worker holds the generator state
and could compute them all; the workers are trusted, as one device is.

Counts the quantile clip needs (examples below the clip, examples seen) are
summed across replicas the same way, their noise also drawn as shares
before the sum, so every replica computes the same new clip.
"""

import tensorflow as tf

from .noise import round_up_float32_tensor


def count():
    """R, the replicas in sync (1 outside any strategy, or in
    cross-replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def total(value):
    """``value`` summed over the replicas (itself with one replica)."""
    if count() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, value)


def share_stddev(stddev, replicas):
    """The std of one replica's share: ``stddev / sqrt(R)``, in float64 with
    a 1e-12 relative margin and rounded up to float32, so that R shares
    never add up to less variance than ``stddev^2``.

    >>> float(share_stddev(tf.constant(2.0), 4)) >= 1.0
    True
    """
    if replicas == 1:
        return stddev
    exact = (tf.cast(stddev, tf.float64) / tf.sqrt(tf.constant(
        float(replicas), tf.float64))) * (1 + 1e-12)
    return round_up_float32_tensor(exact)


def local_groups(num_microbatches, replicas):
    """Each replica's share of the microbatches: ``G / R``.

    Raises:
        ValueError: unless R divides G.
    """
    if num_microbatches is None or replicas == 1:
        return num_microbatches
    if num_microbatches % replicas:
        raise ValueError(
            f"num_microbatches={num_microbatches} is not divisible by the "
            f"{replicas} replicas in sync: each replica clips its own "
            "microbatches. Use a multiple of the replica count, or "
            "per-example clipping (num_microbatches=None).")
    return num_microbatches // replicas

"""Adaptive quantile clipping (Andrew et al. 2021), all in one place.

Each step releases the noised count ``sum_i (1[||g_i|| <= C] - 1/2) +
N(0, s_b^2)`` (sensitivity 1/2) over the examples of the batch and sets
``C <- C * exp(-eta * (fraction - target_quantile))``, as TF Privacy's
``QuantileAdaptiveClipSumQuery``. The gradient noise is raised to
``sigma_g = (sigma^-2 - (2 s_b)^-2)^(-1/2)`` so that the two Gaussian
releases together cost exactly one Gaussian mechanism with noise multiplier
``sigma``: the accounting is unchanged. The clip is never set from raw
norms.

Rows of sample weight 0 (the placeholder of an empty Poisson draw) are no
examples: they count neither below the clip nor in the number of examples.
Counting them would shift the centred count by 1/2 per placeholder, so two
neighbouring datasets could differ by 1 in the count, twice the sensitivity
the noise split assumes.
"""

import tensorflow as tf

from . import replicas
from ...core.noise_std import round_up_to_float32


def check_noise_split(noise_multiplier, count_stddev):
    """Raises unless the count's noise leaves the gradient a share of sigma.

    Needs ``2 * count_stddev > noise_multiplier`` (or sigma = 0).
    """
    if noise_multiplier > 0 and not 2 * count_stddev > noise_multiplier:
        raise ValueError(
            f"noise_multiplier={noise_multiplier} with count_stddev="
            f"{count_stddev}: the count's noise must be larger "
            "(2 * count_stddev > noise_multiplier, and much larger to "
            "leave the gradient most of the privacy budget).")


def gradient_noise_multiplier(sigma, count_stddev):
    """sigma_g, the gradient's share of sigma: ``(sigma^-2 -
    (2 s_b)^-2)^(-1/2)`` as a float64 tensor; 0 when sigma is 0.

    Computed in float64 (the subtraction cancels when sigma is close to
    2 s_b; in float32 that lowered sigma_g by up to 6e-8 relative) with a
    1e-12 relative margin; the caller rounds the noise scale up to float32.
    """
    sigma = tf.cast(sigma, tf.float64)
    count_share = (2.0 * count_stddev) ** -2 if count_stddev else 0.0
    return tf.where(
        sigma > 0,
        tf.math.rsqrt(tf.maximum(sigma ** -2.0 - count_share, 1e-300))
        * (1 + 1e-12), tf.constant(0.0, tf.float64))


def count_below(norms, clip, counted):
    """``(below, examples)``: how many counted groups have a norm <= clip,
    and how many groups are counted (``counted``: 1 or 0 per group)."""
    below = tf.reduce_sum(counted * tf.cast(norms <= clip, tf.float32))
    return below, tf.reduce_sum(counted)


def adapt_clip(clip, below, examples, settings, count_stddev,
               expected_batch_size, generator):
    """Andrew et al.'s private geometric update of the ``clip`` variable.

    Args:
        settings: the :class:`~keras_tempered_dp.privacy.config.
            QuantileClipping` (target quantile, learning rate).
        count_stddev: s_b, resolved from the settings.
        expected_batch_size: the count's denominator; None: ``examples``.

    Under a tf.distribute strategy ``below`` and ``examples`` are this
    replica's; the noised count is summed across replicas, each adding a
    share of its noise (:mod:`.replicas`), so every replica sets the same
    clip.
    """
    # s_b rounded up to float32: the count's noise is never below it.
    share = replicas.share_stddev(
        tf.constant(round_up_to_float32(count_stddev)), replicas.count())
    noised = replicas.total(below - 0.5 * examples
                            + generator.normal([]) * share)
    examples = replicas.total(examples)
    expected = (tf.constant(float(expected_batch_size))
                if expected_batch_size is not None
                else tf.maximum(examples, 1.0))
    fraction = noised / expected + 0.5
    return clip.assign(clip * tf.exp(
        -settings.clip_learning_rate
        * (fraction - settings.target_quantile)))

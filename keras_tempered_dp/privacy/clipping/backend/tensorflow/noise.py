"""The step's Gaussian noise: its multiplier and the draw.

The multiplier lives in a float32 variable (a noise schedule changes it
between steps without retracing); the variable holds sigma rounded *up*, so
the noise drawn is never below what the accountant is told.
"""

import numpy as np
import tensorflow as tf

from ...core.noise_std import round_up_to_float32


def round_up_float32_tensor(exact):
    """A float64 tensor as the smallest float32 tensor >= it, elementwise.

    Products and quotients of float32 numbers round to the nearest float32,
    which may be below the exact value; noise scales go through here.
    """
    nearest = tf.cast(exact, tf.float32)
    return tf.where(tf.cast(nearest, tf.float64) < exact,
                    tf.math.nextafter(nearest, tf.constant(np.inf,
                                                           tf.float32)),
                    nearest)


def noise_stddev(sigma, clip):
    """``sigma * C`` computed in float64 and rounded *up* to float32: the
    noise's standard deviation is never below what the accountant assumes.

    >>> float(noise_stddev(tf.constant(1.1), tf.constant(0.1))) >= 1.1 * 0.1
    True
    """
    return round_up_float32_tensor(tf.cast(sigma, tf.float64)
                                   * tf.cast(clip, tf.float64))


class NoiseMultiplier:
    """sigma: the Python number the accountant reads, and the variable the
    traced step reads (rounded up)."""

    def __init__(self, value):
        self.variable = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                    name="noise_multiplier")
        self.value = None
        # float32 as stored -> the smallest exact value assigned that rounds
        # up to it: what the ledger records for steps run at that float32
        # (the smaller value only raises epsilon).
        self.nominal = {}
        self.assign(value)

    def nominal_value(self, stored):
        """The exact sigma behind the float32 ``stored`` a step used: the
        smallest value assigned that is stored so, else ``stored`` itself
        (a write that bypassed :meth:`assign`)."""
        return self.nominal.get(float(stored), float(stored))

    def assign(self, value):
        """Sets sigma, a number >= 0 checked by the engine (its
        configuration, or its ``noise_multiplier`` setter)."""
        value = float(value)
        stored = round_up_to_float32(value)
        self.variable.assign(stored)
        self.value = value
        key = float(stored)
        self.nominal[key] = min(value, self.nominal.get(key, value))


def noised_sums(sums, stddev, generator):
    """``sum + N(0, stddev^2)`` for every gradient, one fresh draw per step
    from ``generator``."""
    return [g + tf.cast(generator.normal(tf.shape(g)) * stddev, g.dtype)
            for g in sums]

"""The noise's standard deviation on the host, for numbers: always rounded
*up* to float32, so the noise drawn is never below what the accountant is
told."""

import numpy as np


def round_up_to_float32(value):
    """The smallest float32 >= ``value``.

    >>> float(round_up_to_float32(1 / 3)) >= 1 / 3
    True
    """
    stored = np.float32(value)
    if float(stored) < value:
        stored = np.nextafter(stored, np.float32(np.inf))
    return stored


def host_noise_stddev(sigma, clip):
    """:func:`noise_stddev` on the host, for numbers: ``sigma * C`` in
    float64, rounded up to float32 (the JAX engine's).

    >>> float(host_noise_stddev(1.1, 0.1)) >= 1.1 * 0.1
    True
    """
    return round_up_to_float32(float(np.float64(sigma) * np.float64(clip)))

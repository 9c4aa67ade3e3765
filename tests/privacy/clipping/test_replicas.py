"""The arithmetic of the noise shares (clipping/replicas.py), on one device.

R shares of std ``s_R`` must never add up to less variance than the
accountant's ``s^2``: ``R * s_R^2 >= s^2``, checked exactly in float64 over
many values. The distributed behaviour itself is tested in tests/distributed.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.clipping.backend.tensorflow import replicas


def test_shares_never_add_up_to_less_variance():
    rng = np.random.default_rng(0)
    stddevs = np.concatenate([rng.uniform(1e-4, 10, 2000),
                              [1.1 * 0.1, 1.0, 3.0, 1e-30]]).astype("float32")
    for count in (2, 3, 4, 7, 8, 16, 64, 1000):
        shares = replicas.share_stddev(tf.constant(stddevs), count).numpy()
        assert shares.dtype == np.float32
        exact = stddevs.astype(np.float64) ** 2
        assert np.all(count * shares.astype(np.float64) ** 2 >= exact)
        # ... and not much more: rounding up costs at most a float32 ulp.
        assert np.all(shares <= np.nextafter(
            (stddevs / np.sqrt(count)).astype(np.float32), np.inf) * (1 + 1e-6))


def test_one_replica_keeps_the_stddev():
    s = tf.constant(0.11)
    assert replicas.share_stddev(s, 1) is s


def test_outside_a_strategy_there_is_one_replica():
    assert replicas.count() == 1
    value = tf.constant([1.0, 2.0])
    assert replicas.total(value) is value


def test_microbatches_split_over_replicas():
    assert replicas.local_groups(None, 4) is None
    assert replicas.local_groups(8, 1) == 8
    assert replicas.local_groups(8, 4) == 2
    with pytest.raises(ValueError, match="num_microbatches=6 .* 4 replicas"):
        replicas.local_groups(6, 4)

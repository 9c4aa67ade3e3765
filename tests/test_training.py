"""Behaviour: DP training with tempered sigmoids learns real data."""

import numpy as np
import tensorflow as tf

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.privacy.compile import compile_dp


def test_dp_fit_on_digits_beats_chance_clearly(digits):
    (x, y), (xt, yt) = digits
    x, y = x[:1400], y[:1400]
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)),
                                 tf.keras.layers.Flatten()])
    model.add(tf.keras.layers.Dense(64))
    model.add(TemperedSigmoid(s=2, T=2, o=1))
    model.add(tf.keras.layers.Dense(10))
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.5, momentum=0.9, batch_size=56,
               num_examples=len(x))
    history = model.fit(x, y, batch_size=56, epochs=8, verbose=0,
                        callbacks=[EpsilonCallback(len(x), 56, delta=1e-4)])
    _, accuracy = model.evaluate(xt, yt, verbose=0)
    epsilon = history.history["epsilon"][-1]
    assert np.isfinite(epsilon) and epsilon < 10
    assert accuracy > 0.6, accuracy  # chance is 0.1

"""DP-SGD with a tempered sigmoid on scikit-learn's bundled digits.

Runs offline in well under a minute on 2 CPU cores:

    python examples/train_digits.py

Prints the test accuracy and the (epsilon, delta) the run spent.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from keras_tempered_dp import (
    EpsilonCallback,
    TemperedSigmoid,
    compile_dp,
    privacy_statement,
)
from keras_tempered_dp.data import load_digits


def run(*, epochs=15, batch_size=56, l2_norm_clip=1.0, noise_multiplier=1.0,
        learning_rate=0.5, momentum=0.9, delta=1e-4, seed=0):
    """Trains a small MLP with DP-SGD; returns (test accuracy, epsilon)."""
    keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = load_digits(seed=seed)
    x, y = x[:1400], y[:1400]  # 25 full batches of 56

    model = keras.Sequential([keras.Input((8, 8, 1)),
                                 keras.layers.Flatten()])
    model.add(keras.layers.Dense(64))
    model.add(TemperedSigmoid(s=2, T=2, o=1))
    model.add(keras.layers.Dense(10))
    compile_dp(model, l2_norm_clip=l2_norm_clip,
               noise_multiplier=noise_multiplier, learning_rate=learning_rate,
               momentum=momentum, batch_size=batch_size, num_examples=len(x))
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=2,
        callbacks=[EpsilonCallback(len(x), batch_size, delta=delta)])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy {accuracy:.3f}")
    print(privacy_statement(len(x), batch_size, noise_multiplier,
                            epochs=epochs, delta=delta))
    return accuracy, history.history["epsilon"][-1]


if __name__ == "__main__":
    run()

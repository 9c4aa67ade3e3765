"""Our epsilon against TF Privacy's own privacy statement (legacy stack).

TF Privacy 0.9.0's ``compute_dp_sgd_privacy_statement`` prints, for
add-or-remove-one adjacency with its RDP accountant, two epsilons: "with each
example occurring once per epoch" (no subsampling amplification: the bound
for shuffled batches) and "assuming Poisson sampling" (``ceil(epochs / q)``
subsampled Gaussian steps at ``q = batch_size / N``). The package reports the
Poisson number (for Keras' shuffled batches by the usual convention, see
``keras_tempered_dp.privacy.accounting``), on a finer grid of Renyi orders
than dp_accounting's default: ours is never above TF Privacy's and at most a
little below it at these settings. ``used_microbatching`` is False for
per-example clipping; microbatches of several examples double the
sensitivity, which both account by halving sigma.
"""

import re

import keras
import numpy as np
import pytest

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.privacy.accounting import compute_epsilon
from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.stack import tf_privacy_available

pytestmark = pytest.mark.skipif(
    not tf_privacy_available(),
    reason="TF Privacy is not installed: it runs only on the legacy stack "
           "(TensorFlow 2.15, Keras 2)")

# The statement prints epsilon with 3 decimals.
PRINTED = 5e-4
# At these settings (epsilon between 0.5 and 15) the finer order grid lowers
# epsilon by at most 0.2% (measured: below 0.16%).
FINER_GRID = 2e-3


def statement(n, batch_size, epochs, noise, delta, microbatching=False):
    """TF Privacy's (once-per-epoch, Poisson) epsilons for the run."""
    from tensorflow_privacy.privacy.analysis import (
        compute_dp_sgd_privacy_lib as lib,
    )
    text = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=n, batch_size=batch_size, num_epochs=epochs,
        noise_multiplier=noise, delta=delta,
        used_microbatching=microbatching,
        accountant_type=lib.AccountantType.RDP)
    assert "computed with RDP accounting" in " ".join(text.split())
    once = re.search(r"once per epoch:\s+([0-9.]+)", text)
    poisson = re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", text)
    return float(once.group(1)), float(poisson.group(1))


def assert_agrees(ours, theirs):
    """Never above TF Privacy's; below it only by the finer grid."""
    assert ours <= theirs + PRINTED, (ours, theirs)
    assert ours >= theirs * (1 - FINER_GRID) - PRINTED, (ours, theirs)


def _model():
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(3)])


def _data(n=1000):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 6)).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def test_poisson_run_logs_tf_privacys_poisson_epsilon():
    from keras_tempered_dp.privacy.sampling import poisson_batches
    x, y = _data()
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1,
               expected_batch_size=50)
    history = model.fit(
        poisson_batches(x, y, 50, seed=1), steps_per_epoch=20, epochs=3,
        verbose=0, callbacks=[EpsilonCallback(1000, 50, steps_per_epoch=20)])
    for epoch, logged in enumerate(history.history["epsilon"], start=1):
        _, poisson = statement(1000, 50, epoch, 1.1, 1e-5)
        assert_agrees(logged, poisson)
        assert logged == pytest.approx(
            compute_epsilon(1000, 50, 1.1, epochs=epoch), rel=1e-12)


def test_shuffled_run_logs_the_poisson_number_below_the_shuffle_bound():
    """fit over arrays (Keras' shuffled batches): the logged epsilon is
    TF Privacy's Poisson line, far below its once-per-epoch bound."""
    x, y = _data()
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1)
    history = model.fit(x, y, batch_size=50, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(1000, 50)])
    for epoch, logged in enumerate(history.history["epsilon"], start=1):
        once, poisson = statement(1000, 50, epoch, 1.1, 1e-5)
        assert_agrees(logged, poisson)
        assert logged < once


def test_microbatched_run_matches_tf_privacys_microbatching_line():
    x, y = _data()
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               num_microbatches=10)
    history = model.fit(x, y, batch_size=50, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(1000, 50)])
    for epoch, logged in enumerate(history.history["epsilon"], start=1):
        _, poisson = statement(1000, 50, epoch, 2.0, 1e-5,
                               microbatching=True)
        assert_agrees(logged, poisson)


def test_users_tf_privacy_optimizer_run_matches_its_statement():
    from tensorflow_privacy import DPKerasSGDOptimizer
    x, y = _data()
    model = _model()
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=1.0, noise_multiplier=1.3, num_microbatches=None,
        learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    history = model.fit(x, y, batch_size=50, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(1000, 50)])
    _, poisson = statement(1000, 50, 1, 1.3, 1e-5)
    assert_agrees(history.history["epsilon"][0], poisson)


@pytest.mark.parametrize("n, batch_size, noise, epochs, delta", [
    (60000, 256, 1.1, 60, 1e-5),   # the paper's MNIST setting
    (60000, 256, 1.1, 15, 1e-5),
    (60000, 2048, 3.0, 40, 1e-5),
    (50000, 4096, 3.0, 100, 1e-5),  # De et al.'s CIFAR-10 scale
    (1280, 64, 1.0, 5, 1e-5),      # the digits CLI run
    (1000, 10, 0.6, 2, 1e-4),
])
def test_compute_epsilon_never_above_tf_privacy(n, batch_size, noise,
                                                epochs, delta):
    _, poisson = statement(n, batch_size, epochs, noise, delta)
    # TF Privacy composes ceil(epochs / q) steps.
    steps = -(-epochs * n // batch_size)
    assert_agrees(compute_epsilon(n, batch_size, noise, steps=steps,
                                  delta=delta), poisson)


@pytest.mark.parametrize("n, batch_size, epochs, noise", [
    (60000, 256, 60, 1.1), (60000, 2048, 40, 2.0), (1000, 50, 3, 1.1)])
def test_pld_epsilon_matches_tf_privacys_pld_statement(n, batch_size, epochs,
                                                       noise):
    """TF Privacy's statement with its PLD accountant: the Poisson line
    composes ``ceil(epochs / q)`` steps, as we do here (same dp_accounting
    PLD, same grid), so the two agree to the printed digits."""
    import math

    from tensorflow_privacy.privacy.analysis import (
        compute_dp_sgd_privacy_lib as lib,
    )
    text = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=n, batch_size=batch_size, num_epochs=epochs,
        noise_multiplier=noise, delta=1e-5, used_microbatching=False,
        accountant_type=lib.AccountantType.PLD)
    assert "computed with PLD accounting" in " ".join(text.split())
    theirs = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)",
                             text).group(1))
    steps = math.ceil(epochs / (batch_size / n))
    ours = compute_epsilon(n, batch_size, noise, steps=steps, delta=1e-5,
                           accountant="pld")
    assert abs(ours - theirs) <= PRINTED, (ours, theirs)

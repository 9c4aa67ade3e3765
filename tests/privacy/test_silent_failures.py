"""Settings and data that used to train silently into garbage.

* a compiled learning rate that is NaN, infinite, zero or negative;
* float labels that are not whole numbers with a sparse loss;
* a non-finite example (a NaN pixel, an infinite loss): it must contribute
  exactly nothing, checked against a loop over the other examples.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.clipping.backend.tensorflow.accumulation import (
    accumulated,
)
from keras_tempered_dp.privacy.clipping.backend.tensorflow.clipped_sum import (
    clipped_sum,
)
from keras_tempered_dp.privacy.clipping.backend.tensorflow.batches import Batch
from keras_tempered_dp.privacy.clipping.backend.tensorflow.tap import find_taps
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.config import EngineOptions
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state

L = keras.layers
BAD_RATES = [float("nan"), float("inf"), 0.0, -0.1]
# How the step runs: eagerly, as compiled by default, and under XLA.
RUN_MODES = {"eager": dict(run_eagerly=True), "default": {},
             "xla": dict(jit_compile=True)}


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- 1. the learning rate ----------------------------------------------------

def _dense(classes=3):
    return keras.Sequential([keras.Input((4,)), L.Dense(classes)])


@pytest.mark.parametrize("rate", BAD_RATES)
def test_make_private_refuses_a_bad_compiled_learning_rate(rate):
    model = _dense()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=rate),
                  loss=_sce())
    with pytest.raises(ValueError, match=f"learning_rate={rate!r}"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -0.1])
def test_make_private_refuses_a_schedule_bad_at_step_zero(rate):
    model = _dense()
    schedule = keras.optimizers.schedules.ExponentialDecay(rate, 10, 0.9)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=_sce())
    with pytest.raises(ValueError, match="learning_rate=.*step 0"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


def test_make_private_accepts_good_rates_and_a_warm_up_from_zero():
    for rate in (1e-3, keras.optimizers.schedules.PolynomialDecay(
            0.0, 10, end_learning_rate=0.1)):
        model = _dense()
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=rate),
                      loss=_sce())
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("rate", BAD_RATES)
def test_compile_dp_refuses_a_bad_learning_rate(rate):
    with pytest.raises(ValueError, match=f"learning_rate={rate!r}"):
        compile_dp(_dense(), l2_norm_clip=1.0, noise_multiplier=1.0,
                   learning_rate=rate)


# -- 2. labels that are not class indices -------------------------------------

def test_per_example_loss_refuses_non_integral_labels_eagerly():
    logits = tf.zeros([2, 4])
    for loss in (None, "sparse_categorical_crossentropy", _sce()):
        with pytest.raises(ValueError, match=r"not whole numbers.*3\.7"):
            per_example_loss(loss)(tf.constant([1.0, 3.7]), logits)
        assert per_example_loss(loss)(
            tf.constant([1.0, 3.0]), logits).shape == (2,)
    # Float targets of other losses are no labels.
    assert per_example_loss("mse")(tf.constant([[0.5]]),
                                   tf.zeros([1, 1])).shape == (1,)


def _fit_labels(mode, labels):
    """One full-batch DP step (noise 0) on labels ``labels``; the weights
    before and after."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(4)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.0,
               learning_rate=0.5, **RUN_MODES[mode])
    before = [w.numpy() for w in model.weights]
    x = np.random.default_rng(0).normal(size=(len(labels), 4))
    try:
        model.fit(x.astype("float32"), np.asarray(labels, "float32"),
                  batch_size=len(labels), verbose=0)
    finally:
        after = [w.numpy() for w in model.weights]
    return model, before, after


@pytest.mark.parametrize("mode", ["eager", "default"])
def test_fit_refuses_non_integral_labels_before_any_update(mode):
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match="not whole numbers"):
        _, before, after = _fit_labels(mode, [0.0, 3.7, 1.0, 2.0])
    _, before, after = _fit_labels(mode, [0.0, 3.0, 1.0, 2.0])
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))


def test_fit_under_xla_learns_nothing_from_non_integral_labels():
    # Under XLA nothing can raise inside the step: the rows' loss is NaN,
    # so they contribute nothing (and are counted as non-finite).
    model, before, after = _fit_labels("xla", [3.7, 0.5, 1.2, 2.9])
    assert model.jit_compile
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    _, before, after = _fit_labels("xla", [0.0, 3.0, 1.0, 2.0])
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))


# -- 3. non-finite examples ----------------------------------------------------

def _cnn():
    return keras.Sequential([
        keras.Input((6, 6, 1)), L.Conv2D(3, 3, activation="tanh"),
        L.LayerNormalization(), L.Flatten(), L.Dense(3)])


def _generic():
    """Conv1D has no norm function: the exact generic route."""
    return keras.Sequential([keras.Input((6, 2)), L.Conv1D(3, 3),
                             L.Flatten(), L.Dense(3)])


MODELS = {"cnn": (_cnn, (6, 6, 1)), "generic": (_generic, (6, 2))}


def _reference_sum(model, x, y, clip, keep):
    """sum over the kept examples of each one's clipped gradient: a loop
    over single examples with its own tape, clipped by hand."""
    loss_fn = _sce()
    total = [np.zeros(v.shape, "float64") for v in model.trainable_variables]
    for i in keep:
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i:i + 1], model(x[i:i + 1], training=True))
        grads = [np.asarray(g, "float64") for g in
                 tape.gradient(loss, model.trainable_variables)]
        norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
        factor = min(1.0, clip / norm)
        total = [t + factor * g for t, g in zip(total, grads)]
    return total


def _batch(shape, bad, kind, n=5):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n,) + shape).astype("float32")
    if kind == "nan_pixel":
        x[bad].flat[3] = np.nan
    else:  # "inf_loss": finite inputs, logits beyond float32's range
        x[bad] = np.sign(x[bad]) * 3e38
    return x, (np.arange(n) % 3).astype("int32")


def _assert_close(got, want, scale):
    for g, w in zip(got, want):
        g = np.asarray(g, "float64")
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g / scale, w / scale, rtol=0, atol=1e-5)


# The CNN's tanh and LayerNormalization tame huge inputs: its inf loss
# would need inf weights.
@pytest.mark.parametrize("name, kind", [
    ("cnn", "nan_pixel"), ("generic", "nan_pixel"), ("generic", "inf_loss")])
def test_a_non_finite_example_contributes_nothing_and_is_counted(name, kind):
    build, shape = MODELS[name]
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_sce())
    x, y = _batch(shape, bad=2, kind=kind)
    if kind == "inf_loss":  # the premise: finite inputs, non-finite loss
        assert np.all(np.isfinite(x))
        assert not np.isfinite(per_example_loss(_sce())(
            y[2:3], model(x[2:3])).numpy()).all()
    clip = 0.5
    keep = [0, 1, 3, 4]
    want = _reference_sum(model, x, y, clip, keep)
    scale = max(float(np.abs(w).max()) for w in want)
    loss_fn = per_example_loss(model.loss)

    def chunk_sum(batch):
        return clipped_sum(model, find_taps(model), loss_fn, batch, None,
                           tf.constant(clip), EngineOptions())

    whole = chunk_sum(Batch(tf.constant(x), tf.constant(y)))
    _assert_close(whole.sums, want, scale)
    assert float(whole.nonfinite) == 1.0
    assert float(whole.counted) == 5.0
    # In chunks (gradient accumulation), and as one traced step.
    chunks = tf.function(lambda x, y: accumulated(
        chunk_sum, Batch(x, y), 2, model))(tf.constant(x), tf.constant(y))
    _assert_close(chunks.sums, want, scale)
    assert float(chunks.nonfinite) == 1.0


@pytest.mark.parametrize("mode", sorted(RUN_MODES))
def test_fit_on_a_nan_pixel_equals_the_step_without_that_example(mode):
    model = _cnn()
    compile_dp(model, l2_norm_clip=0.5, noise_multiplier=0.0,
               learning_rate=0.5, **RUN_MODES[mode])
    if mode == "xla":
        assert model.jit_compile
    x, y = _batch((6, 6, 1), bad=2, kind="nan_pixel")
    # SGD without momentum: w <- w - lr * (sum over the others) / B.
    want = [w.numpy() - 0.5 * s / len(y) for w, s in zip(
        model.trainable_variables,
        _reference_sum(model, x, y, 0.5, [0, 1, 3, 4]))]
    model.fit(x, y, batch_size=len(y), verbose=0)
    engine = get_dp_state(model).engine
    assert int(engine.steps_taken) == 1
    for got, w in zip(model.trainable_variables, want):
        assert np.all(np.isfinite(got.numpy()))
        np.testing.assert_allclose(got.numpy(), w, rtol=0, atol=1e-6)


def test_quantile_counts_a_non_finite_example_above_the_clip():
    model = _cnn()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_sce())
    x, y = _batch((6, 6, 1), bad=2, kind="nan_pixel")
    total = clipped_sum(model, find_taps(model), per_example_loss(model.loss),
                        Batch(tf.constant(x), tf.constant(y)), None,
                        tf.constant(1e6), EngineOptions())
    assert float(total.below) == 4.0 and float(total.counted) == 5.0


def test_a_nan_pixel_in_fit_warns_keeps_the_weights_finite_and_accounts():
    from keras_tempered_dp import EpsilonCallback, compute_epsilon
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, 64)
    x[7, 2] = np.nan
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.1)
    with pytest.warns(RuntimeWarning, match="1 examples had a non-finite"):
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                            callbacks=[EpsilonCallback(64, 16, delta=1e-3)])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert history.history["epsilon"][0] == pytest.approx(
        compute_epsilon(64, 16, 1.0, steps=4, delta=1e-3), rel=1e-12)
    assert int(get_dp_state(model).engine.nonfinite_examples) == 1


def test_compiling_another_loss_after_compile_dp_trains_that_loss():
    # compile_dp, then model.compile(loss=...): the DP step used to keep
    # differentiating the old loss while the logs showed the new one.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    compile_dp(model, l2_norm_clip=1e6, noise_multiplier=0.0,
               learning_rate=0.1, loss=keras.losses.MeanSquaredError(
                   reduction="none" if hasattr(keras, "ops") else
                   keras.losses.Reduction.NONE))
    start = [w.copy() for w in model.get_weights()]
    mae = keras.losses.MeanAbsoluteError(
        reduction="none" if hasattr(keras, "ops") else
        keras.losses.Reduction.NONE)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=mae)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    # The reference: one plain SGD step on the mean absolute error.
    w, b = [tf.Variable(v) for v in start]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.reduce_mean(tf.abs(x @ w + b - y), -1))
    gw, gb = tape.gradient(loss, [w, b])
    np.testing.assert_allclose(model.get_weights()[0], start[0] - 0.1 * gw,
                               atol=1e-5)
    np.testing.assert_allclose(model.get_weights()[1], start[1] - 0.1 * gb,
                               atol=1e-5)


class _ShiftThenScale(keras.layers.Layer):
    """A unit with a second batched argument: ``(x + shift) * w``."""

    def build(self, shape):
        self.w = self.add_weight(name="w", shape=(shape[-1],),
                                 initializer="ones")

    def call(self, x, shift):
        return (x + shift) * self.w


def test_a_non_finite_second_argument_is_left_out_not_spread():
    """The NaN is in a unit's other argument (as a mask or attention's key
    would be): the example is left out, and the recomputations of the
    generic route see its rows zeroed too, so ``0 * NaN`` never reaches
    the sum (before, the whole update was NaN)."""
    x_in, s_in = keras.Input((4,)), keras.Input((4,))
    h = _ShiftThenScale()(x_in, s_in)
    model = keras.Model([x_in, s_in], keras.layers.Dense(3)(h))
    model.compile(optimizer="sgd", loss=_sce())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype("float32")
    shift = rng.normal(size=(5, 4)).astype("float32")
    shift[2, 1] = np.nan
    y = (np.arange(5) % 3).astype("int32")
    clip, keep = 0.5, [0, 1, 3, 4]
    want = [np.zeros(v.shape, "float64") for v in model.trainable_variables]
    for i in keep:  # the reference: one tape per kept example
        with tf.GradientTape() as tape:
            loss = _sce()(y[i:i + 1], model([x[i:i + 1], shift[i:i + 1]]))
        grads = [np.asarray(g, "float64") for g in
                 tape.gradient(loss, model.trainable_variables)]
        factor = min(1.0, clip / np.sqrt(sum(np.sum(g ** 2) for g in grads)))
        want = [t + factor * g for t, g in zip(want, grads)]
    total = clipped_sum(model, find_taps(model), per_example_loss(model.loss),
                        Batch([tf.constant(x), tf.constant(shift)],
                              tf.constant(y)),
                        None, tf.constant(clip), EngineOptions())
    _assert_close(total.sums, want, max(float(np.abs(w).max())
                                        for w in want))
    assert float(total.nonfinite) == 1.0

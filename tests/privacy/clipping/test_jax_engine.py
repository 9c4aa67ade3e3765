"""The engine on Keras 3's JAX backend: noise, counters, ledger, refusals.

These run only in a process with ``KERAS_BACKEND=jax``
(tests/test_jax_backend.py starts it); the reference tests shared with
TensorFlow are marked ``jax_backend`` in test_norms.py and
test_any_model.py. Every figure is checked against an independent
computation: the noise's standard deviation against ``sigma * C / B``, the
epsilon against the accountant called by hand, the clipped mean against a
per-example loop of ``jax.grad``.
"""

import json
import subprocess

import keras
import numpy as np
import pytest

from keras_tempered_dp.callbacks import EpsilonCallback, NoiseScheduler
from keras_tempered_dp.privacy import saving
from keras_tempered_dp.privacy.accounting import (
    Segment,
    compose_epsilon,
    compute_epsilon,
    steps_per_epoch,
)
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.recording import privacy_ledger
from keras_tempered_dp.privacy.sampling import mark_sampling
from keras_tempered_dp.privacy.state import get_dp_state
from tests.conftest import console_script
from tests.privacy.clipping.support import _compile
from tests.privacy.reference import clipped_mean

pytestmark = [
    pytest.mark.jax_backend,
    pytest.mark.skipif(keras.backend.backend() != "jax",
                       reason="the JAX engine; tests/test_jax_backend.py "
                              "runs it with KERAS_BACKEND=jax"),
]

L = keras.layers


def _model():
    return keras.Sequential([keras.Input((6,)), L.Dense(5, activation="tanh"),
                             L.Dense(3)])


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6)).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def test_compile_dp_builds_the_jax_engine_and_fit_logs_epsilon():
    x, y = _data(100)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5,
               learning_rate=0.1)
    engine = get_dp_state(model).engine
    assert type(engine).__name__ == "JaxClippingEngine"
    # The class users construct builds the JAX engine too.
    from keras_tempered_dp.privacy.clipping import ClippingEngine
    assert type(ClippingEngine(1.0, 1.1, seed=3)) is type(engine)
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0,
                        callbacks=[EpsilonCallback(num_examples=100,
                                                   batch_size=20,
                                                   delta=1e-3)])
    expected = [compute_epsilon(100, 20, 1.5, steps=5 * e, delta=1e-3)
                for e in (1, 2, 3)]
    np.testing.assert_allclose(history.history["epsilon"], expected)
    assert int(engine.steps_taken) == 15
    assert int(engine.examples_seen) == 300
    assert np.isfinite(history.history["loss"]).all()


def test_noise_has_std_sigma_c_over_b_and_is_fresh_every_step():
    """Rows of sample weight 0 add nothing: the gradient is the noise
    alone, ``N(0, (sigma C / B)^2)`` per coordinate."""
    model = keras.Sequential([keras.Input((50,)), L.Dense(200)])
    _compile(model)
    make_private(model, l2_norm_clip=2.0, noise_multiplier=1.5)
    engine = get_dp_state(model).engine
    x = np.ones((4, 50), "float32")
    y = np.zeros(4, "int32")
    zero = np.zeros(4, "float32")
    first, _ = engine.compute_gradients(x, y, zero)
    second, _ = engine.compute_gradients(x, y, zero)
    kernel = np.asarray(first[0])
    assert kernel.size == 10000
    np.testing.assert_allclose(kernel.std(), 1.5 * 2.0 / 4, rtol=0.03)
    assert abs(kernel.mean()) < 4 * 0.75 / 100
    # A fresh draw each time: independent, not repeated.
    other = np.asarray(second[0])
    assert abs(np.corrcoef(kernel.ravel(), other.ravel())[0, 1]) < 0.05


def test_seeded_noise_repeats_and_os_seeded_noise_differs():
    def draw(seed):
        model = _model()
        _compile(model)
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                     noise_seed=seed)
        x, y = _data(4)
        return np.asarray(get_dp_state(model).engine.compute_gradients(
            x, y, np.zeros(4, "float32"))[0][0])

    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.allclose(draw(None), draw(None))
    # Seeds that differ above their 32 low bits draw different noise.
    assert not np.allclose(draw(2 ** 40), draw(2 ** 41))


def test_os_seeded_keys_carry_64_bits():
    """Both words of the OS-seeded key vary (jax.random.PRNGKey would keep
    32 bits of a large seed without 64-bit mode)."""
    from keras_tempered_dp.privacy.clipping.backend.jax.engine import noise_key
    keys = np.array([np.asarray(noise_key()) for _ in range(16)])
    assert keys.dtype == np.uint32
    assert len(set(keys[:, 0])) > 8 and len(set(keys[:, 1])) > 8


@pytest.mark.parametrize("clipping", ["clip", "normalize"])
def test_clipping_modes_match_per_example_reference(clipping):
    x, y = _data(8)
    model = _model()
    loss_fn = _compile(model)
    make_private(model, l2_norm_clip=0.05, noise_multiplier=0.0,
                 clipping=clipping)
    grads, _ = get_dp_state(model).engine.compute_gradients(x, y)
    if clipping == "clip":
        expected, _ = clipped_mean(model, loss_fn, x, y, 0.05)
    else:  # C / (||g|| + gamma), written out here
        from tests.privacy.reference import global_norm, per_group_gradients
        groups = per_group_gradients(model, loss_fn, x, y)
        expected = [sum(0.05 / (global_norm(g) + 0.01) * g[i]
                        for g in groups) / 8 for i in range(len(groups[0]))]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_nonfinite_examples_add_nothing_and_are_counted():
    x, y = _data(6)
    x[2, 0] = np.nan
    model = _model()
    loss_fn = _compile(model)
    make_private(model, l2_norm_clip=0.1, noise_multiplier=0.0)
    engine = get_dp_state(model).engine
    grads, _ = engine.compute_gradients(x, y)
    keep = np.arange(6) != 2
    expected, _ = clipped_mean(model, loss_fn, x[keep], y[keep], 0.1)
    for got, want in zip(grads, expected):
        # the mean is over the 6 rows of the batch
        np.testing.assert_allclose(np.asarray(got), want * 5 / 6, atol=1e-6)
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    assert int(engine.nonfinite_examples) == 1


@pytest.mark.parametrize("options, name", [
    (dict(clipping="quantile"), "clipping='quantile'"),
    (dict(physical_batch_size=2), "physical_batch_size"),
    (dict(augmentation_multiplicity=2), "augmentation_multiplicity"),
])
def test_options_without_a_jax_step_are_refused_by_name(options, name):
    model = _model()
    with pytest.raises(ValueError, match=name + ".*JAX backend"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   learning_rate=0.1, **options)


class _AddsLoss(L.Layer):
    """A layer whose call adds a loss: no example's, so never clipped."""

    def call(self, x):
        self.add_loss(keras.ops.sum(x))
        return x


def test_losses_added_in_call_are_refused_before_a_step():
    x, y = _data(8)
    model = keras.Sequential([keras.Input((6,)), L.Dense(4), _AddsLoss(),
                              L.Dense(3)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.1)
    before = [np.asarray(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match="regularization losses"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(get_dp_state(model).engine.steps_taken) == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_gradient_canaries_are_refused_by_name():
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.1)
    engine = get_dp_state(model).engine
    with pytest.raises(ValueError, match="canaries.*TensorFlow"):
        engine.canaries = object()
    assert engine.canaries is None


def test_microbatches_that_do_not_divide_the_batch_are_refused():
    x, y = _data(10)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.1, num_microbatches=4)
    before = [np.asarray(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match="num_microbatches=4 does not "
                                         "divide"):
        model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert int(get_dp_state(model).engine.steps_taken) == 0
    # The refused fit leaves the model as it was (Keras' JAX fit had taken
    # the values out of the variables).
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_poisson_batches_are_padded_and_counted_exactly():
    """Poisson batches vary in size; padded with weight-0 rows they compile
    a few shapes, and only the real rows count as examples. The batches
    here are drawn once, by hand, so that the count is known."""
    import tensorflow as tf

    x, y = _data(200)
    rng = np.random.default_rng(1)
    batches = [np.flatnonzero(rng.random(200) < 0.1) for _ in range(10)]
    data = mark_sampling(tf.data.Dataset.from_generator(
        lambda: ((x[i], y[i], np.ones(len(i), "float32")) for i in batches),
        output_signature=(tf.TensorSpec((None, 6), tf.float32),
                          tf.TensorSpec((None,), tf.int32),
                          tf.TensorSpec((None,), tf.float32))),
        "poisson", 200, 20)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.2,
               learning_rate=0.1, expected_batch_size=20)
    history = model.fit(data, steps_per_epoch=10, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(num_examples=200,
                                                   batch_size=20,
                                                   delta=1e-4)])
    engine = get_dp_state(model).engine
    assert len({len(i) for i in batches}) > 3  # sizes vary
    assert int(engine.steps_taken) == 10
    assert int(engine.examples_seen) == sum(len(i) for i in batches)
    assert sum(s.steps for s in privacy_ledger(model).segments) == 10
    np.testing.assert_allclose(history.history["epsilon"], [
        compute_epsilon(200, 20, 1.2, steps=10, delta=1e-4)])


def _poisson_data(x, y, batches, dataset_size, expected):
    import tensorflow as tf

    return mark_sampling(tf.data.Dataset.from_generator(
        lambda: ((x[i], y[i], np.ones(len(i), "float32")) for i in batches),
        output_signature=(tf.TensorSpec((None, 6), tf.float32),
                          tf.TensorSpec((None,), tf.int32),
                          tf.TensorSpec((None,), tf.float32))),
        "poisson", dataset_size, expected)


def test_poisson_batches_compile_one_shape():
    """Sizes within ``expected + 3 sqrt(expected)`` share one padded
    shape: one compilation for the run, not one per new size."""
    from keras_tempered_dp.privacy.clipping.backend.jax import engine

    x, y = _data(200)
    sizes = [12, 20, 27, 15, 33, 20, 9]  # expected 20: all <= 33.4
    batches = [np.arange(n) for n in sizes]
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.2,
               learning_rate=0.1, expected_batch_size=20)
    traced = []
    step = get_dp_state(model).engine._step

    def counting(*args):
        traced.append(engine._rows(args[3]))
        return step(*args)

    get_dp_state(model).engine._step = counting
    model.fit(_poisson_data(x, y, batches, 200, 20), epochs=1, verbose=0,
              steps_per_epoch=len(sizes))
    assert traced == [40]  # 20 + 3 * sqrt(20) = 33.4, rounded up to 8
    # Above it: steps of a quarter of the expected size, at least 8.
    assert [engine._bucket(n, 20) for n in (1, 40, 41, 48, 49)] == [
        40, 40, 48, 48, 56]


def test_logged_loss_and_accuracy_of_a_padded_batch_are_the_drawn_ones():
    """The padding's rows (weight 0) must not dilute the logged loss (the
    compiled loss divides by the batch's rows) nor count in the accuracy
    (Keras updates compiled metrics without weights); over an epoch the
    loss weighs each batch by its drawn rows."""
    x, y = _data(200)
    batches = [np.arange(7), np.arange(7, 20)]
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.0,
               learning_rate=1e-9, expected_batch_size=20)
    rows = np.concatenate(batches)
    logits = model(x[rows])
    losses = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None)(y[rows], logits)
    accuracy = np.mean(np.argmax(logits, axis=1) == y[rows])
    history = model.fit(_poisson_data(x, y, batches, 200, 20), epochs=1,
                        steps_per_epoch=2, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0],
                               float(np.mean(losses)), rtol=1e-4)
    np.testing.assert_allclose(history.history["accuracy"][0], accuracy,
                               rtol=1e-6)


def test_noise_schedule_is_accounted_step_by_step(tmp_path):
    x, y = _data(60)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               learning_rate=0.1)
    history = model.fit(
        x, y, batch_size=20, epochs=2, verbose=0,
        callbacks=[NoiseScheduler(lambda epoch: 2.0 if epoch == 0 else 1.0),
                   EpsilonCallback(num_examples=60, batch_size=20,
                                   delta=1e-3)])
    expected = compose_epsilon(
        [Segment(num_examples=60, batch_size=20, steps=3,
                 noise_multiplier=sigma) for sigma in (2.0, 1.0)],
        delta=1e-3)
    np.testing.assert_allclose(history.history["epsilon"][-1], expected)
    # The ledger travels with the saved model.
    path = str(tmp_path / "m.keras")
    saving.save_model(model, path)
    ledger = saving.read_ledger(path)
    assert ledger is not None
    loaded = saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)


def test_train_cli_on_jax_reports_epsilon_every_epoch(tmp_path):
    """``KERAS_BACKEND=jax keras-tempered-dp train``: the digits job."""
    out = tmp_path / "run"
    result = subprocess.run(
        [console_script(), "train", "--epochs=2", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "(jax backend)" in results["stack"]
    config = results["config"]
    steps = sum(row["steps"] for row in results["ledger"])
    assert config["sampling"] == "poisson"
    assert steps == 2 * steps_per_epoch(config["num_examples"],
                                        config["batch_size"], "poisson")
    expected = [compute_epsilon(config["num_examples"], config["batch_size"],
                                config["noise_multiplier"],
                                steps=steps * e // 2, delta=config["delta"])
                for e in (1, 2)]
    np.testing.assert_allclose([e["epsilon"] for e in results["epochs"]],
                               expected)
    assert results["epsilon"] == pytest.approx(expected[-1])


@pytest.fixture
def data_parallel():
    """``keras.distribution.DataParallel`` over two JAX devices (the CPU
    split by ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, as
    tests/test_jax_backend.py starts this process); unset afterwards."""
    import jax
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 JAX devices: XLA_FLAGS="
                    "--xla_force_host_platform_device_count=2")
    distribution = keras.distribution.DataParallel(devices=jax.devices()[:2])
    yield distribution
    keras.distribution.set_distribution(None)


def _noise_free_fit(distribution, x, y):
    """Two full-batch steps without noise, under ``distribution``."""
    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(distribution)
    model = _model()
    compile_dp(model, l2_norm_clip=0.1, noise_multiplier=0.0,
               learning_rate=1.0)
    history = model.fit(x, y, batch_size=len(x), epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(num_examples=len(x),
                                                   batch_size=len(x),
                                                   delta=1e-3)])
    keras.distribution.set_distribution(None)
    return model, history


def test_data_parallel_update_equals_one_device(data_parallel):
    """Noise-free: the same clipped mean whether the batch is split over
    two devices or not (each device's rows, one global sum)."""
    x, y = _data(8)
    one, one_history = _noise_free_fit(None, x, y)
    two, two_history = _noise_free_fit(data_parallel, x, y)
    sharding = two.trainable_variables[0].value.sharding
    assert len(sharding.device_set) == 2  # really on both devices
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    assert int(get_dp_state(two).engine.steps_taken) == 2
    assert two_history.history["epsilon"] == one_history.history["epsilon"]


def test_data_parallel_adds_the_noise_once_per_global_step(data_parallel):
    """Rows of weight 0: one SGD step at learning rate 1 moves each weight
    by the noise alone, ``N(0, (sigma C / B)^2)``: the std of one draw for
    the global batch, not of one per device."""
    x = np.ones((8, 6), "float32")
    y = np.zeros(8, "int32")
    model = keras.Sequential([keras.Input((6,)), L.Dense(2000)])
    keras.distribution.set_distribution(data_parallel)
    compile_dp(model, l2_norm_clip=2.0, noise_multiplier=1.5,
               learning_rate=1.0)
    before = np.asarray(model.get_weights()[0])
    model.fit(x, y, sample_weight=np.zeros(8, "float32"), batch_size=8,
              epochs=1, verbose=0)
    keras.distribution.set_distribution(None)
    step = np.asarray(model.get_weights()[0]) - before
    np.testing.assert_allclose(step.std(), 1.5 * 2.0 / 8, rtol=0.03)


@pytest.mark.parametrize("num_groups", [None, 3])
def test_transformer_encoder_matches_per_example_reference(num_groups):
    """The package's encoder: token embedding, learned positions, attention
    (EinsumDense), LayerNormalization and the Dense MLP, each by its own
    norm function on JAX."""
    from keras_tempered_dp import models
    from tests.privacy.clipping.support import _assert_matches_reference

    keras.utils.set_random_seed(0)
    model = models.transformer_encoder(sequence_length=5, vocabulary_size=7,
                                       num_classes=3, width=8, depth=1,
                                       heads=2)
    ids = np.random.default_rng(0).integers(0, 7, (6, 5)).astype("int32")
    _assert_matches_reference(model, ids, (np.arange(6) % 3).astype("int32"),
                              num_groups, floor=1e-2)


@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker"])
def test_tf_distribute_strategies_are_refused_on_jax(strategy):
    """``train --strategy=...`` names the backend instead of failing inside
    TensorFlow's runtime."""
    from keras_tempered_dp.training.config import DistributeConfig
    from keras_tempered_dp.training.distribute import make_strategy
    with pytest.raises(ValueError, match="tf.distribute strategy.*"
                                         "KERAS_BACKEND=tensorflow"):
        make_strategy(DistributeConfig(strategy=strategy, cpu_devices=2))


class _GatedDropout(L.Layer):
    """A unit with a weight of its own and a Dropout inside it."""

    def build(self, shape):
        self.gate = self.add_weight(name="gate", shape=shape[-1:],
                                    initializer="ones")
        self.drop = L.Dropout(0.5)

    def call(self, x, training=None):
        return self.drop(x * self.gate, training=training)


class _DrawsNoise(L.Layer):
    """A unit drawing from its own SeedGenerator: no known random layer,
    so only the replay check can see it."""

    def build(self, shape):
        self.w = self.add_weight(name="w", shape=shape[-1:],
                                 initializer="ones")
        self.seed = keras.random.SeedGenerator(1)

    def call(self, x):
        return x * self.w + keras.random.normal(keras.ops.shape(x),
                                                seed=self.seed)


@pytest.mark.parametrize("body, name", [
    (lambda: L.LSTM(3, dropout=0.2), "dropout=0.2"),
    (lambda: L.GRU(3, recurrent_dropout=0.1), "recurrent_dropout=0.1"),
    (lambda: _GatedDropout(), "Dropout"),
])
def test_units_that_draw_random_numbers_are_refused(body, name):
    """Such a unit's replays per group cannot reproduce its draws: refused
    by name before any step (a Dropout layer between units is fine)."""
    inputs = keras.Input((5, 6))
    h = body()(inputs)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(L.Dropout(0.3)(h))))
    with pytest.raises(ValueError, match=f"draws random numbers.*{name}"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   learning_rate=0.1)


def test_a_replay_that_differs_releases_only_noise_and_stops():
    x, y = _data(6)
    model = keras.Sequential([keras.Input((6,)), _DrawsNoise(), L.Dense(3)])
    _compile(model)
    make_private(model, l2_norm_clip=1.0, noise_multiplier=0.0)
    engine = get_dp_state(model).engine
    with pytest.raises(RuntimeError, match="gave different outputs"):
        engine.compute_gradients(x, y)
    # Noise 0: what that release held was exactly nothing.
    grads = engine._gradients(
        ([v.value for v in model.trainable_variables],
         [v.value for v in model.non_trainable_variables]),
        engine._state, engine._settings(), (x, y, None))[0]
    assert all(not np.asarray(g).any() for g in grads)
    # The release that raised is in the record, to be accounted.
    with pytest.warns(RuntimeWarning, match="did not reproduce"):
        assert engine.drain_record().steps == 1


def test_negative_embedding_ids_match_per_example_reference():
    """JAX's take reads id - V for a negative id: the same row, so the
    same cross term in the ghost norm."""
    from tests.privacy.clipping.support import _assert_matches_reference
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
                              L.Embedding(7, 4), L.Flatten(), L.Dense(3)])
    ids = np.array([[1, -6, 1, 0, -7], [3, -4, 3, 3, 3], [0, 1, 2, 3, 4],
                    [6, -1, 6, 5, -1], [2, 2, 0, 0, 1], [4, -3, 4, 1, 1]],
                   "int32")
    _assert_matches_reference(model, ids, (np.arange(6) % 3).astype("int32"))


@pytest.mark.parametrize("name, shape", [
    ("digits_cnn", (8, 8, 1)), ("mnist_cnn", (28, 28, 1)),
    ("cifar10_cnn", (32, 32, 3)), ("vit", (28, 28, 1)),
    ("sequence_lstm", (28, 28, 1))])
def test_package_models_match_per_example_reference(name, shape):
    """The paper's models (and the ViT and LSTM of the Fashion-MNIST
    runs), each clipped on JAX as the reference clips it."""
    from keras_tempered_dp import models
    from tests.privacy.clipping.support import _assert_matches_reference

    keras.utils.set_random_seed(0)
    model = models.MODELS[name]()
    x = np.random.default_rng(0).uniform(size=(6,) + shape).astype(
        "float32")
    # attention's key bias has gradient 0 exactly: on the others' scale
    _assert_matches_reference(model, x, (np.arange(6) % 3).astype("int32"),
                              floor=1e-2 if name == "vit" else 0.0)

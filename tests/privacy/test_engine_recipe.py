"""Augmentation multiplicity, accumulation, normalization and a variable
noise multiplier, against independent references (reference.py style)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.models import mnist_cnn
from keras_tempered_dp.privacy.clipping import ClippingEngine
from keras_tempered_dp.privacy.clipping.core.noise_std import (
    round_up_to_float32,
)
from keras_tempered_dp.privacy.clipping.core import conv_cost
from keras_tempered_dp.privacy.compile import make_private
from keras_tempered_dp.privacy.config import EngineOptions
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state
from tests.privacy.reference import global_norm, per_group_gradients
from tests.privacy.stacks import compiled

L = keras.layers
K = 3


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        L.Conv2D(4, 3, activation="tanh", input_shape=(6, 6, 1)),
        L.GroupNormalization(2), L.Flatten(), L.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    return model


def _loss_fn(model):
    return per_example_loss(model.loss)


def _install(model, clip=1.0, noise=0.0, **kwargs):
    """An engine built through the public entry point, make_private."""
    if not compiled(model):
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True), metrics=["accuracy"])
    make_private(model, l2_norm_clip=clip, noise_multiplier=noise, **kwargs)
    return get_dp_state(model).engine


def _scale_copies(x, generator):
    """Deterministic 'augmentation': copy j of each example scaled by 1+j/4."""
    copy = tf.range(tf.shape(x)[0]) % K
    return x * (1.0 + 0.25 * tf.cast(copy, x.dtype))[:, None, None, None]


def _data(n=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 6, 6, 1)).astype(
        "float32")
    y = (np.arange(n) % 3).astype("int32")
    return x, y


def _example_grads(model, loss_fn, x, y, copies=1):
    """One reference gradient per example: the mean over its copies."""
    out = []
    for i in range(len(y)):
        xs = np.stack([x[i] * (1.0 + 0.25 * j) for j in range(copies)])
        ys = np.repeat(y[i:i + 1], copies)
        per_copy = per_group_gradients(model, loss_fn, xs, ys)
        out.append([np.mean(parts, axis=0) for parts in zip(*per_copy)])
    return out


def _assert_close(got, want):
    for g, w in zip(got, want):
        scale = np.abs(w).max() + 1e-12
        np.testing.assert_allclose(np.asarray(g) / scale, w / scale,
                                   rtol=0, atol=1e-5)


def _reference_update(grads, factor_fn):
    total = [np.zeros_like(g) for g in grads[0]]
    for example in grads:
        f = factor_fn(global_norm(example))
        total = [t + f * g for t, g in zip(total, example)]
    return [t / len(grads) for t in total]


@pytest.mark.parametrize("conv_route", ["patches", "filter"])
def test_augmentation_multiplicity_averages_copies_before_clipping(
        conv_route, monkeypatch):
    monkeypatch.setattr(conv_cost, "FORCE", conv_route)
    model = _model()
    x, y = _data()
    grads = _example_grads(model, _loss_fn(model), x, y, copies=K)
    norms = [global_norm(g) for g in grads]
    clip = float(np.median(norms))
    assert min(norms) < clip < max(norms)
    engine = _install(model, clip=clip, augmentation_multiplicity=K,
                      augment=_scale_copies)
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    _assert_close(got, _reference_update(
        grads, lambda n: min(1.0, clip / n)))
    # Clipping each copy separately would be a different (wrong) update.
    per_copy = _reference_update(
        [g for i in range(len(y)) for g in per_group_gradients(
            model, _loss_fn(model),
            np.stack([x[i] * (1 + 0.25 * j) for j in range(K)]),
            np.repeat(y[i:i + 1], K))], lambda n: min(1.0, clip / n))
    assert max(np.abs(a - b).max() for a, b in zip(got, per_copy)) > 1e-4


def test_normalization_matches_reference_and_bounds_every_contribution():
    model = _model()
    engine = _install(model, clip=0.5, clipping="normalize", gamma=0.01)
    x, y = _data()
    grads = _example_grads(model, _loss_fn(model), x, y)
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    _assert_close(got, _reference_update(
        grads, lambda n: 0.5 / (n + 0.01)))
    for i in range(len(y)):  # one example alone: its whole contribution
        alone, _ = engine.compute_gradients(tf.constant(x[i:i + 1]),
                                            tf.constant(y[i:i + 1]))
        assert global_norm([np.asarray(g) for g in alone]) < 0.5


@pytest.mark.parametrize("multiplicity", [1, K])
def test_accumulation_equals_one_big_batch(multiplicity):
    model = _model()
    kwargs = dict(clip=0.05, augmentation_multiplicity=multiplicity,
                  augment=_scale_copies if multiplicity > 1 else None)
    big = _install(model, **kwargs)
    x, y = _data(8)
    want, want_pred = big.compute_gradients(tf.constant(x), tf.constant(y))
    chunked = _install(model, clip=0.05, physical_batch_size=3,
                       augmentation_multiplicity=multiplicity,
                       augment=kwargs["augment"])
    # Traced with an unknown batch size, as fit does; 8 = 3 + 3 + 2.
    step = tf.function(chunked.compute_gradients, input_signature=[
        tf.TensorSpec([None, 6, 6, 1]), tf.TensorSpec([None], tf.int32)])
    got, got_pred = step(tf.constant(x), tf.constant(y))
    _assert_close(got, [np.asarray(w) for w in want])
    np.testing.assert_allclose(got_pred, want_pred, atol=1e-5)


def test_accumulated_noise_is_added_once_per_logical_batch():
    model = keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=0.7, noise=1.3, physical_batch_size=4)
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(16, 50)).astype("float32"))
    y = tf.constant(np.arange(16) % 10)
    clean = _install(model, clip=0.7, physical_batch_size=4)
    noiseless, _ = clean.compute_gradients(x, y)
    draws = np.concatenate([
        np.ravel(np.asarray(a) - np.asarray(b))
        for _ in range(20)
        for a, b in zip(engine.compute_gradients(x, y)[0], noiseless)])
    # Once per step: std sigma*C/B, not sqrt(4 chunks) times that.
    assert draws.std() == pytest.approx(1.3 * 0.7 / 16, rel=0.03)


def test_noise_multiplier_change_reaches_a_traced_step():
    model = keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=1.0, noise=2.0, noise_seed=5)
    x = tf.constant(np.zeros((16, 50), "float32"))
    y = tf.constant(np.arange(16) % 10)
    step = tf.function(engine.compute_gradients)
    clean_engine = _install(model, clip=1.0)
    clean = np.concatenate([np.ravel(g) for g in
                            clean_engine.compute_gradients(x, y)[0]])

    def noise_std():
        draws = [np.concatenate([np.ravel(g) for g in step(x, y)[0]]) - clean
                 for _ in range(30)]
        return np.std(draws)

    assert noise_std() == pytest.approx(2.0 / 16, rel=0.05)
    engine.noise_multiplier = 0.5  # no retracing needed
    assert noise_std() == pytest.approx(0.5 / 16, rel=0.05)
    with pytest.raises(ValueError, match="noise_multiplier"):
        engine.noise_multiplier = -1.0


def test_fit_with_augmentation_and_accumulation_is_the_reference_step():
    """One fit step (K copies, chunks of 4 of a batch of 10) moves the
    weights by exactly -lr * the reference's clipped mean over copies."""
    model = _model()
    x, y = _data(10, seed=4)
    grads = _example_grads(model, _loss_fn(model), x, y, copies=K)
    clip = float(np.median([global_norm(g) for g in grads]))
    want = _reference_update(grads, lambda n: min(1.0, clip / n))
    before = [v.numpy() for v in model.trainable_variables]
    # The metrics see the augmented copies' predictions before the step.
    want_loss = np.mean([
        np.mean(_loss_fn(model)(np.repeat(y[i:i + 1], K), model(
            np.stack([x[i] * (1 + 0.25 * j) for j in range(K)]))))
        for i in range(10)])
    engine = _install(model, clip=clip, augmentation_multiplicity=K,
                      augment=_scale_copies, physical_batch_size=4)
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0,
                        shuffle=False)
    after = [v.numpy() for v in model.trainable_variables]
    _assert_close([(b - a) / 0.1 for b, a in zip(before, after)], want)
    assert history.history["loss"][0] == pytest.approx(want_loss, rel=1e-5)
    assert int(engine.steps_taken) == 1 and int(engine.examples_seen) == 10


@pytest.mark.parametrize("options, engine_kwargs, match", [
    (dict(clipping="auto"), {}, "^clipping='auto': must be"),
    (dict(clipping="normalize", gamma=0.0), {}, "^gamma=0.0: must be > 0"),
    (dict(augmentation_multiplicity=0), {},
     "^augmentation_multiplicity=0: must be >= 1"),
    (dict(physical_batch_size=0), {}, "^physical_batch_size=0: must be"),
    (dict(physical_batch_size=4), dict(num_microbatches=2),
     "^num_microbatches= cannot be combined"),
    (dict(clipping="quantile", count_stddev=5.0), dict(num_microbatches=2),
     "needs per-example clipping"),
    ({}, dict(num_microbatches=2, expected_batch_size=8),
     "cannot be combined"),
    ({}, dict(num_microbatches=0), "^num_microbatches=0: must be"),
    ({}, dict(expected_batch_size=-3), "^expected_batch_size=-3: must be"),
])
def test_bad_settings_are_refused_by_name(options, engine_kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClippingEngine(1.0, 1.0, options=EngineOptions.from_flat(**options),
                       **engine_kwargs)


def test_settings_are_read_only():
    engine = ClippingEngine(1.0, 1.0, num_microbatches=2, seed=3)
    for name in ("num_microbatches", "expected_batch_size", "seed",
                 "clipping", "options", "model", "steps_taken",
                 "examples_seen"):
        with pytest.raises(AttributeError):
            setattr(engine, name, None)
    with pytest.raises(TypeError, match="EngineOptions"):
        ClippingEngine(1.0, 1.0, options=dict(gamma=0.1))
    with pytest.raises(TypeError):  # options only by keyword
        ClippingEngine(1.0, 1.0, 2)


def test_random_crop_flip_returns_crops_of_the_padded_image():
    rng = np.random.default_rng(5)
    images = rng.normal(size=(12, 5, 7, 2)).astype("float32")
    out = np.asarray(RandomCropFlip(padding=2)(
        tf.constant(images), tf.random.Generator.from_seed(4)))
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)],
                    mode="reflect")
    seen_flip = set()
    for i in range(12):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5)
                   for f in (False, True)
                   if np.array_equal(
                       out[i], (lambda c: c[:, ::-1] if f else c)(
                           padded[i, dy:dy + 5, dx:dx + 7]))]
        assert matches, f"image {i} is not a crop of its padded original"
        seen_flip.add(matches[0][2])
    assert seen_flip == {False, True}
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)


def test_quantile_clipping_update_and_clip_step_match_reference():
    """Noise 0: the update is the reference's clipped mean at the current C,
    and C moves by exp(-eta * (fraction below C - target quantile))."""
    model = _model()
    x, y = _data(8)
    grads = _example_grads(model, _loss_fn(model), x, y)
    norms = np.array([global_norm(g) for g in grads])
    clip = float(np.median(norms))
    engine = _install(model, clip=clip, clipping="quantile",
                      target_quantile=0.3, clip_learning_rate=0.2,
                      count_stddev=0.0)
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    _assert_close(got, _reference_update(grads,
                                         lambda n: min(1.0, clip / n)))
    fraction = np.mean(norms <= clip)
    assert engine.l2_norm_clip == pytest.approx(
        clip * np.exp(-0.2 * (fraction - 0.3)), rel=1e-6)


def test_quantile_clipping_splits_the_noise_budget_exactly():
    model = keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=0.5, noise=1.2, clipping="quantile",
                      count_stddev=2.0, noise_seed=1)
    sigma_g = float(engine.gradient_noise_multiplier())
    # One Gaussian mechanism of multiplier 1.2 = gradient (sigma_g) and
    # count (sensitivity 1/2, std 2: multiplier 4) composed.
    assert sigma_g ** -2 + 4.0 ** -2 == pytest.approx(1.2 ** -2, rel=1e-5)
    assert sigma_g >= (1.2 ** -2 - 4.0 ** -2) ** -0.5  # rounded up, never down
    # dp_accounting agrees: both releases together cost one Gaussian(1.2).
    import dp_accounting
    both = dp_accounting.rdp.RdpAccountant()
    both.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(sigma_g),
        dp_accounting.GaussianDpEvent(4.0)]))
    one = dp_accounting.rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(1.2))
    assert both.get_epsilon(1e-5) == pytest.approx(one.get_epsilon(1e-5),
                                                   rel=1e-4)
    x = tf.constant(np.zeros((16, 50), "float32"))
    y = tf.constant(np.arange(16) % 10)
    draws = []
    for _ in range(20):
        clip = engine.l2_norm_clip  # C moves each step: noise is sigma_g * C
        # x = 0: the kernel's gradient is 0 for every example, pure noise.
        kernel = engine.compute_gradients(x, y)[0][0]
        draws.append(np.ravel(kernel) / clip)
    assert np.std(draws) == pytest.approx(sigma_g / 16, rel=0.03)
    quantile = EngineOptions(clipping="quantile")
    with pytest.raises(ValueError, match="count_stddev=1.0"):
        ClippingEngine(1.0, 3.0, options=EngineOptions.from_flat(
            clipping="quantile", count_stddev=1.0))
    with pytest.raises(ValueError, match="count_stddev"):
        ClippingEngine(1.0, 1.0, options=quantile)  # no batch size
    # The default count noise: expected batch / 20, decided in one place.
    with pytest.raises(ValueError, match="count_stddev=2.0"):
        ClippingEngine(1.0, 4.0, expected_batch_size=40, options=quantile)
    ClippingEngine(1.0, 3.9, expected_batch_size=40, options=quantile)


def test_quantile_clip_tracks_the_norms_in_fit():
    model = mnist_cnn("tanh")
    _install(model, clip=100.0, noise=0.5, clipping="quantile",
             target_quantile=0.5, clip_learning_rate=0.5,
             expected_batch_size=16)
    x = np.random.default_rng(6).uniform(size=(64, 28, 28, 1))
    y = np.arange(64) % 10
    history = model.fit(x.astype("float32"), y, batch_size=16, epochs=5,
                        verbose=0)
    clips = history.history["l2_norm_clip"]
    # Every example is below C = 100 at first: the clip shrinks.
    assert clips[-1] < clips[0] < 100


@pytest.mark.parametrize("sigma", [1.3, 0.1, 2.0820312, 1 / 3])
def test_stored_noise_is_never_below_the_accounted_noise(sigma):
    engine = ClippingEngine(1.0, sigma)
    assert engine.noise_multiplier == sigma  # what the accountant is told
    drawn = float(engine.gradient_noise_multiplier())  # what the step uses
    assert sigma <= drawn <= sigma * (1 + 1e-6)
    assert drawn == float(round_up_to_float32(sigma))
    engine.noise_multiplier = sigma / 3  # as a schedule does
    assert float(engine.gradient_noise_multiplier()) >= sigma / 3


def test_quantile_count_ignores_rows_of_weight_zero():
    """Poisson sampling's empty draw yields one row of sample weight 0; it
    is no example. Counted, it made the centred count +1/2 (clip moved from
    1.0 to 0.975 here): neighbours could differ by 1, twice the sensitivity
    the noise split assumes."""
    model = keras.Sequential([L.Dense(3, input_shape=(4,))])
    engine = _install(model, clip=1.0, clipping="quantile", count_stddev=0.0,
                      target_quantile=0.5, clip_learning_rate=0.2,
                      expected_batch_size=4)
    engine.compute_gradients(tf.ones((1, 4)), tf.constant([0]),
                             tf.constant([0.0]))
    assert engine.l2_norm_clip == pytest.approx(1.0, rel=1e-7)
    copies = _install(model, clip=1.0, clipping="quantile", count_stddev=0.0,
                      expected_batch_size=4, augmentation_multiplicity=2,
                      augment=lambda x, generator: x)
    copies.compute_gradients(tf.ones((1, 4)), tf.constant([0]),
                             tf.constant([0.0]))
    assert copies.l2_norm_clip == pytest.approx(1.0, rel=1e-7)
    # 2 real examples far below C = 1000 and 2 rows of weight 0: the count
    # is 2 - 2 / 2 = 1, the fraction 1 / 4 + 1 / 2.
    big = _install(model, clip=1000.0, clipping="quantile", count_stddev=0.0,
                   target_quantile=0.5, clip_learning_rate=0.2,
                   expected_batch_size=4)
    big.compute_gradients(tf.ones((4, 4)), tf.constant([0, 1, 2, 0]),
                          tf.constant([1.0, 0.0, 1.0, 0.0]))
    assert big.l2_norm_clip == pytest.approx(
        1000.0 * np.exp(-0.2 * (0.75 - 0.5)), rel=1e-6)


def _batches(sizes, weights_zero, seed=0):
    """Batches of the given sizes; ``weights_zero[i]`` rows of batch i get
    sample weight 0 (size 1 with 1 zero: Poisson's empty draw)."""
    rng = np.random.default_rng(seed)
    out = []
    for size, zeros in zip(sizes, weights_zero):
        weights = np.ones(size, "float32")
        weights[:zeros] = 0.0
        out.append((rng.normal(size=(size, 6, 6, 1)).astype("float32"),
                    (np.arange(size) % 3).astype("int32"), weights))
    return out


@pytest.mark.parametrize("options", [
    {}, dict(augmentation_multiplicity=2, augment=_scale_copies,
             physical_batch_size=3)], ids=["plain", "copies_and_chunks"])
def test_counters_count_steps_and_weighted_examples_in_fit(options):
    batches = _batches([5, 1, 7, 4], [0, 1, 2, 4])
    data = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=(
            tf.TensorSpec([None, 6, 6, 1]), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None]))).apply(
                tf.data.experimental.assert_cardinality(len(batches)))
    model = _model()
    engine = _install(model, clip=1.0, noise=0.5, expected_batch_size=5,
                      **options)
    assert int(engine.steps_taken) == 0 and int(engine.examples_seen) == 0
    model.fit(data, epochs=2, verbose=0)
    assert engine.steps_taken.dtype == tf.int64
    assert int(engine.steps_taken) == 2 * 4 == int(model.optimizer.iterations)
    assert int(engine.examples_seen) == 2 * (5 + 0 + 5 + 0)
    engine.compute_gradients(*batches[0])  # by hand: not counted
    assert int(engine.steps_taken) == 8


def test_noise_scale_is_never_rounded_below_the_accounted_one():
    """float32 products round to nearest; the engine's noise scale (and the
    quantile split's sigma_g) must round up instead."""
    from keras_tempered_dp.privacy.clipping.backend.tensorflow import (
        noise,
        quantile,
    )
    rng = np.random.default_rng(11)
    sigmas = rng.uniform(0.3, 5.0, size=400)
    clips = rng.uniform(0.01, 3.0, size=400)
    stored = np.array([noise.round_up_to_float32(s) for s in sigmas])
    scale = noise.noise_stddev(tf.constant(stored), tf.constant(
        clips.astype("float32"))).numpy().astype(np.float64)
    assert np.all(scale >= stored.astype(np.float64)
                  * clips.astype("float32").astype(np.float64))
    # sigma close to 2 s_b, where the subtraction cancels.
    count = rng.uniform(1.0, 3.0, size=400)
    sigma = 2 * count * rng.uniform(0.99, 0.9999, size=400)
    exact = (sigma ** -2.0 - (2 * count) ** -2.0) ** -0.5
    got = np.array([float(noise.noise_stddev(
        quantile.gradient_noise_multiplier(tf.constant(s, tf.float64), c),
        tf.constant(1.0))) for s, c in zip(sigma, count)])
    assert np.all(got >= exact)


class SubclassedNet(keras.Model):
    """A subclassed model: no ``outputs``, no ``output_shape``."""

    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(2, 3, activation="tanh")
        self.flatten = L.Flatten()
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(self.flatten(self.conv(x)))


def test_accumulation_in_a_subclassed_model_equals_one_big_batch():
    x, y = _data(8)
    model = SubclassedNet()
    model(x[:1])  # built: the engine taps the layers holding weights
    want, want_pred = _install(model, clip=0.05).compute_gradients(
        tf.constant(x), tf.constant(y))
    chunked = _install(model, clip=0.05, physical_batch_size=3)
    step = tf.function(chunked.compute_gradients, input_signature=[
        tf.TensorSpec([None, 6, 6, 1]), tf.TensorSpec([None], tf.int32)])
    got, got_pred = step(tf.constant(x), tf.constant(y))
    _assert_close(got, [np.asarray(w) for w in want])
    np.testing.assert_allclose(got_pred, want_pred, atol=1e-5)
    assert got_pred.shape.as_list() == [8, 3]


def test_accumulation_compiles_without_xla():
    """The chunk loop's sizes are known only at run time, which XLA cannot
    compile; Keras 3 turns XLA on by default wherever a GPU is present."""
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    _install(model, clip=1.0, noise=1.0, physical_batch_size=3)
    assert not model.jit_compile
    x, y = _data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize("make", [
    lambda: keras.Sequential([L.Conv2D(2, 3, activation="tanh"),
                              L.Flatten(), L.Dense(3)]),
    SubclassedNet], ids=["sequential", "subclassed"])
def test_unbuilt_models_are_tapped_at_the_first_step(make):
    x, y = _data(8)
    model = make()
    engine = _install(model, clip=0.05)  # no weights yet
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    assert model.built and len(got) == len(model.trainable_variables) == 4
    want, _ = _install(model, clip=0.05).compute_gradients(
        tf.constant(x), tf.constant(y))
    _assert_close(got, [np.asarray(w) for w in want])
    fitted = make()
    _install(fitted, clip=0.05, noise=1.0)
    fitted.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(fitted.optimizer.iterations) == 2

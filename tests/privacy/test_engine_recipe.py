"""Augmentation multiplicity, accumulation, normalization and a variable
noise multiplier, against independent references (reference.py style)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.models import mnist_cnn
from keras_tempered_dp.privacy.clipping import ClippingEngine
from tests.privacy.reference import global_norm, per_group_gradients

L = tf.keras.layers
RNG = np.random.default_rng(3)
K = 3


def _model():
    tf.keras.utils.set_random_seed(1)
    return tf.keras.Sequential([
        L.Conv2D(4, 3, activation="tanh", input_shape=(6, 6, 1)),
        L.GroupNormalization(2), L.Flatten(), L.Dense(3)])


def _install(model, clip=1.0, noise=0.0, **kwargs):
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    engine = ClippingEngine(clip, noise, **kwargs)
    engine.install(model)
    return engine


def _scale_copies(x, generator):
    """Deterministic 'augmentation': copy j of each example scaled by 1+j/4."""
    copy = tf.range(tf.shape(x)[0]) % K
    return x * (1.0 + 0.25 * tf.cast(copy, x.dtype))[:, None, None, None]


def _data(n=6):
    x = RNG.normal(size=(n, 6, 6, 1)).astype("float32")
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


def test_augmentation_multiplicity_averages_copies_before_clipping():
    model = _model()
    engine = _install(model, augmentation_multiplicity=K,
                      augment=_scale_copies)
    x, y = _data()
    grads = _example_grads(model, engine.loss_fn, x, y, copies=K)
    norms = [global_norm(g) for g in grads]
    clip = float(np.median(norms))
    assert min(norms) < clip < max(norms)
    engine.l2_norm_clip = clip
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    _assert_close(got, _reference_update(
        grads, lambda n: min(1.0, clip / n)))
    # Clipping each copy separately would be a different (wrong) update.
    per_copy = _reference_update(
        [g for i in range(len(y)) for g in per_group_gradients(
            model, engine.loss_fn,
            np.stack([x[i] * (1 + 0.25 * j) for j in range(K)]),
            np.repeat(y[i:i + 1], K))], lambda n: min(1.0, clip / n))
    assert max(np.abs(a - b).max() for a, b in zip(got, per_copy)) > 1e-4


def test_normalization_matches_reference_and_bounds_every_contribution():
    model = _model()
    engine = _install(model, clip=0.5, clipping="normalize", gamma=0.01)
    x, y = _data()
    grads = _example_grads(model, engine.loss_fn, x, y)
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
    chunked = ClippingEngine(0.05, 0.0, physical_batch_size=3,
                             augmentation_multiplicity=multiplicity,
                             augment=kwargs["augment"])
    chunked.install(model)
    # Traced with an unknown batch size, as fit does; 8 = 3 + 3 + 2.
    step = tf.function(chunked.compute_gradients, input_signature=[
        tf.TensorSpec([None, 6, 6, 1]), tf.TensorSpec([None], tf.int32)])
    got, got_pred = step(tf.constant(x), tf.constant(y))
    _assert_close(got, [np.asarray(w) for w in want])
    np.testing.assert_allclose(got_pred, want_pred, atol=1e-5)


def test_accumulated_noise_is_added_once_per_logical_batch():
    model = tf.keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=0.7, noise=1.3, physical_batch_size=4)
    x = tf.constant(RNG.normal(size=(16, 50)).astype("float32"))
    y = tf.constant(np.arange(16) % 10)
    clean = ClippingEngine(0.7, 0.0, physical_batch_size=4)
    clean.install(model)
    noiseless, _ = clean.compute_gradients(x, y)
    draws = np.concatenate([
        np.ravel(np.asarray(a) - np.asarray(b))
        for _ in range(20)
        for a, b in zip(engine.compute_gradients(x, y)[0], noiseless)])
    # Once per step: std sigma*C/B, not sqrt(4 chunks) times that.
    assert draws.std() == pytest.approx(1.3 * 0.7 / 16, rel=0.03)


def test_noise_multiplier_change_reaches_a_traced_step():
    model = tf.keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=1.0, noise=2.0, seed=5)
    x = tf.constant(np.zeros((16, 50), "float32"))
    y = tf.constant(np.arange(16) % 10)
    step = tf.function(engine.compute_gradients)
    clean_engine = ClippingEngine(1.0, 0.0)
    clean_engine.install(model)
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


def test_fit_with_augmentation_and_accumulation_on_the_paper_cnn():
    model = mnist_cnn("tempered_sigmoid")
    _install(model, clip=1.0, noise=1.0, augmentation_multiplicity=2,
             physical_batch_size=8)
    x = RNG.uniform(size=(32, 28, 28, 1)).astype("float32")
    y = np.arange(32) % 10
    before = model.get_weights()
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0 <= history.history["accuracy"][0] <= 1
    assert any(np.abs(a - b).max() > 0
               for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(clipping="auto"), "clipping"),
    (dict(clipping="normalize", gamma=0.0), "gamma"),
    (dict(augmentation_multiplicity=0), "augmentation_multiplicity"),
    (dict(physical_batch_size=0), "physical_batch_size"),
    (dict(num_microbatches=2, physical_batch_size=4), "num_microbatches"),
])
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClippingEngine(1.0, 1.0, **kwargs)


def test_random_crop_flip_returns_crops_of_the_padded_image():
    images = RNG.normal(size=(12, 5, 7, 2)).astype("float32")
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
    engine = _install(model, clip=1.0, clipping="quantile",
                      target_quantile=0.3, clip_learning_rate=0.2,
                      count_stddev=0.0)
    x, y = _data(8)
    grads = _example_grads(model, engine.loss_fn, x, y)
    norms = np.array([global_norm(g) for g in grads])
    clip = float(np.median(norms))
    engine.l2_norm_clip = clip
    got, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    _assert_close(got, _reference_update(grads,
                                         lambda n: min(1.0, clip / n)))
    fraction = np.mean(norms <= clip)
    assert engine.l2_norm_clip == pytest.approx(
        clip * np.exp(-0.2 * (fraction - 0.3)), rel=1e-6)


def test_quantile_clipping_splits_the_noise_budget_exactly():
    model = tf.keras.Sequential([L.Dense(10, input_shape=(50,))])
    engine = _install(model, clip=0.5, noise=1.2, clipping="quantile",
                      count_stddev=2.0, seed=1)
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
        engine.l2_norm_clip = 0.5  # zero gradients: C would drift
        draws.append(np.concatenate(
            [np.ravel(g) for g in engine.compute_gradients(x, y)[0]]))
    assert np.std(draws) == pytest.approx(sigma_g * 0.5 / 16, rel=0.03)
    with pytest.raises(ValueError, match="count_stddev"):
        ClippingEngine(1.0, 3.0, clipping="quantile", count_stddev=1.0)
    with pytest.raises(ValueError, match="count_stddev"):
        ClippingEngine(1.0, 1.0, clipping="quantile")  # no batch size


def test_quantile_clip_tracks_the_norms_in_fit():
    model = mnist_cnn("tanh")
    _install(model, clip=100.0, noise=0.5, clipping="quantile",
             target_quantile=0.5, clip_learning_rate=0.5,
             expected_batch_size=16)
    x = RNG.uniform(size=(64, 28, 28, 1)).astype("float32")
    y = np.arange(64) % 10
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    clips = history.history["l2_norm_clip"]
    # Every example is below C = 100 at first: the clip shrinks.
    assert clips[-1] < clips[0] < 100


@pytest.mark.parametrize("sigma", [1.3, 0.1, 2.0820312, 1 / 3])
def test_stored_noise_is_never_below_the_accounted_noise(sigma):
    engine = ClippingEngine(1.0, sigma)
    assert engine.noise_multiplier == sigma  # what the accountant is told
    assert float(engine._noise_multiplier.numpy()) >= sigma
    assert float(engine._noise_multiplier.numpy()) <= sigma * (1 + 1e-6)

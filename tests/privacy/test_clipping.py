"""The clipping engine against the independent reference (reference.py)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import cifar10_cnn, mnist_cnn
from keras_tempered_dp.privacy.clipping import ClippingEngine
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from tests.privacy.reference import clipped_mean, per_group_gradients
from keras_tempered_dp.privacy.state import get_dp_state

L = tf.keras.layers
RNG = np.random.default_rng(7)


def _install(model, clip=1.0, noise=0.0, **kwargs):
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    ClippingEngine(clip, noise, **kwargs).install(model)
    return get_dp_state(model).engine


def _median_clip(model, engine, x, y, num_groups=None):
    """A clip norm with examples both below and above it."""
    norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads))
             for grads in per_group_gradients(model, engine.loss_fn, x, y,
                                              num_groups)]
    clip = float(np.median(norms))
    assert min(norms) < clip < max(norms)
    return clip


def _assert_matches_reference(model, x, y, num_groups=None):
    engine = _install(model)
    clip = _median_clip(model, engine, x, y, num_groups)
    engine.l2_norm_clip = clip
    engine.num_microbatches = num_groups
    grads, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    expected, scales = clipped_mean(model, engine.loss_fn, x, y, clip,
                                    num_groups)
    assert len(grads) == len(expected)
    for got, want, scale, var in zip(grads, expected, scales,
                                     model.trainable_variables):
        # 1e-5 relative to the largest clipped per-example contribution.
        np.testing.assert_allclose(np.asarray(got) / (scale + 1e-12),
                                   want / (scale + 1e-12), rtol=0, atol=1e-5,
                                   err_msg=var.name)


def _images(shape, n=6):
    return RNG.normal(size=(n,) + shape).astype("float32")


def _labels(n=6, classes=3):
    return (np.arange(n) % classes).astype("int32")


def _head(*body, input_shape, classes=3):
    return tf.keras.Sequential([tf.keras.Input(input_shape), *body,
                                L.Flatten(), L.Dense(classes)])


CONV_CASES = [
    dict(filters=4, kernel_size=3, padding="same"),
    dict(filters=4, kernel_size=3, padding="valid"),
    dict(filters=3, kernel_size=(3, 2), strides=2, padding="same"),
    dict(filters=3, kernel_size=4, strides=(2, 1), padding="valid"),
    dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"),
    dict(filters=3, kernel_size=2, dilation_rate=(1, 2), padding="valid"),
    dict(filters=5, kernel_size=1, use_bias=False),
    dict(filters=4, kernel_size=3, padding="same", activation="tanh"),
    dict(filters=4, kernel_size=3, groups=2, padding="same"),  # generic
]


@pytest.mark.parametrize("conv", CONV_CASES, ids=lambda c: str(c))
def test_conv2d(conv):
    model = _head(L.Conv2D(**conv), TemperedSigmoid(),
                  input_shape=(7, 8, 4))
    _assert_matches_reference(model, _images((7, 8, 4)), _labels())


@pytest.mark.parametrize("input_shape", [(5,), (4, 5)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense(input_shape, use_bias):
    model = _head(L.Dense(6, use_bias=use_bias, activation="tempered_sigmoid"),
                  L.Dense(4, activation="relu"), input_shape=input_shape)
    _assert_matches_reference(model, _images(input_shape), _labels())


def test_embedding_with_repeated_ids():
    model = tf.keras.Sequential([tf.keras.Input((5,), dtype="int32"),
                                 L.Embedding(7, 4), L.Flatten(), L.Dense(3)])
    ids = np.array([[1, 2, 1, 1, 0], [3, 3, 3, 3, 3], [0, 1, 2, 3, 4],
                    [6, 5, 6, 5, 6], [2, 2, 0, 0, 1], [4, 4, 4, 1, 1]],
                   "int32")
    _assert_matches_reference(model, ids, _labels())


@pytest.mark.parametrize("norm", [
    lambda: L.LayerNormalization(),
    lambda: L.LayerNormalization(axis=[1, 2, 3]),
    lambda: L.GroupNormalization(groups=2),
    lambda: L.GroupNormalization(groups=2, center=False),
], ids=["ln", "ln_all_axes", "gn", "gn_no_center"])
def test_normalization_layers(norm):
    model = _head(L.Conv2D(4, 3), norm(), TemperedSigmoid(),
                  input_shape=(6, 6, 2))
    # Non-trivial norm weights, so their gradients are not all equal.
    for var in model.trainable_variables:
        var.assign(var + RNG.normal(size=var.shape).astype("float32") * 0.3)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


@pytest.mark.parametrize("layer", [
    lambda: L.Conv1D(3, 2),
    lambda: L.DepthwiseConv2D(2),
    lambda: L.Conv2DTranspose(2, 2, strides=2),
], ids=["conv1d", "depthwise", "conv2d_transpose"])
def test_unregistered_layers_take_the_exact_generic_route(layer):
    shape = (6, 3) if isinstance(layer(), L.Conv1D) else (5, 5, 2)
    model = _head(layer(), TemperedSigmoid(), input_shape=shape)
    _assert_matches_reference(model, _images(shape), _labels())


@pytest.mark.parametrize("num_groups", [None, 3, 2])
def test_mnist_cnn(num_groups):
    model = mnist_cnn("tempered_sigmoid")
    x = RNG.uniform(size=(6, 28, 28, 1)).astype("float32")
    _assert_matches_reference(model, x, _labels(6, 10), num_groups)


def test_cifar10_cnn():
    model = cifar10_cnn("tanh")
    x = RNG.uniform(size=(4, 32, 32, 3)).astype("float32")
    _assert_matches_reference(model, x, _labels(4, 10))


def test_functional_model_with_branches():
    inputs = tf.keras.Input((6, 6, 2))
    a = L.Conv2D(3, 3, padding="same", activation="tanh")(inputs)
    b = L.Conv2D(3, 1)(inputs)
    merged = L.Add()([a, b])
    outputs = L.Dense(3)(L.Flatten()(TemperedSigmoid()(merged)))
    model = tf.keras.Model(inputs, outputs)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


def test_matches_tf_privacy_dp_keras_sgd_update():
    x = RNG.uniform(size=(8, 28, 28, 1)).astype("float32")
    y = _labels(8, 10)
    ours = mnist_cnn("tempered_sigmoid")
    theirs = mnist_cnn("tempered_sigmoid")
    theirs.set_weights(ours.get_weights())
    compile_dp(ours, l2_norm_clip=0.3, noise_multiplier=0.0,
               learning_rate=0.5)
    compile_dp(theirs, l2_norm_clip=0.3, noise_multiplier=0.0,
               learning_rate=0.5, optimizer="dp_keras_sgd")
    ours.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_noise_std_and_freshness():
    model = _head(L.Dense(64), input_shape=(50,), classes=10)  # ~3.9k params
    engine = _install(model, clip=0.7, noise=1.3, seed=11)
    x = tf.constant(_images((50,), 16))
    y = tf.constant(_labels(16, 10))
    clean = ClippingEngine(0.7, 0.0)
    clean.model, clean.taps, clean.loss_fn = model, engine.taps, engine.loss_fn
    noiseless, _ = clean.compute_gradients(x, y)
    draws = []
    for _ in range(20):
        noisy, _ = engine.compute_gradients(x, y)
        draws.append(np.concatenate([np.ravel(a - b) for a, b in
                                     zip(noisy, noiseless)]))
    draws = np.array(draws)
    expected = 1.3 * 0.7 / 16
    assert draws.std() == pytest.approx(expected, rel=0.02)
    # 78k draws: the mean's standard error is 0.0036 * expected.
    assert abs(draws.mean()) < 0.02 * expected
    # Fresh each step: consecutive draws are uncorrelated.
    assert abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.05


def test_noise_seed_reproducible_and_distinct():
    def draw(seed):
        model = _head(L.Dense(4), input_shape=(3,))
        model.set_weights([np.ones(w.shape, "float32") * 0.1
                           for w in model.get_weights()])
        engine = _install(model, clip=1.0, noise=1.0, seed=seed)
        x = tf.constant(np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))
        y = tf.constant(_labels(4))
        return [np.concatenate([np.ravel(g) for g in
                                engine.compute_gradients(x, y)[0]])
                for _ in range(2)]
    a1, a2 = draw(5)
    b1, _ = draw(5)
    c1, _ = draw(6)
    np.testing.assert_array_equal(a1, b1)
    assert not np.allclose(a1, a2) and not np.allclose(a1, c1)


def test_expected_batch_size_divides_the_sum():
    model = _head(L.Dense(4), input_shape=(3,))
    engine = _install(model, clip=0.5)
    x, y = tf.constant(_images((3,), 6)), tf.constant(_labels(6))
    per_batch, _ = engine.compute_gradients(x, y)
    engine.expected_batch_size = 10
    per_expected, _ = engine.compute_gradients(x, y)
    for a, b in zip(per_batch, per_expected):
        np.testing.assert_allclose(np.asarray(a) * 6 / 10, b, rtol=1e-6)


def test_shared_layer_refused_by_name():
    shared = L.Dense(3, name="shared_dense")
    inputs = tf.keras.Input((3,))
    model = tf.keras.Model(inputs, shared(shared(inputs)))
    engine = _install(model)
    with pytest.raises(ValueError, match="'shared_dense' was called 2 times"):
        engine.compute_gradients(tf.ones((2, 3)), tf.constant([0, 1]))


def test_regularizers_refused():
    model = _head(L.Dense(3, kernel_regularizer="l2"), input_shape=(3,))
    engine = _install(model)
    with pytest.raises(ValueError, match="weight_decay"):
        engine.compute_gradients(tf.ones((2, 3)), tf.constant([0, 1]))


def test_weights_outside_leaf_layers_refused():
    class Owning(L.Layer):
        def build(self, shape):
            self.inner = L.Dense(3)
            self.scale = self.add_weight(name="own_scale", shape=())

        def call(self, x):
            return self.inner(x) * self.scale

    model = _head(Owning(), input_shape=(3,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="own_scale"):
        ClippingEngine(1.0, 1.0).install(model)


def test_batchnorm_refused_by_make_private():
    model = _head(L.BatchNormalization(name="bn"), input_shape=(3,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="'bn'.*GroupNormalization"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


def test_microbatches_must_divide_the_batch_at_run_time():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               num_microbatches=4)
    with pytest.raises(ValueError, match="num_microbatches=4 does not divide"):
        model.train_on_batch(np.zeros((6, 28, 28, 1)), np.zeros(6))
    # A dataset whose batch size is unknown when the step is traced.
    data = tf.data.Dataset.from_tensor_slices(
        (np.zeros((14, 28, 28, 1), "float32"), np.zeros(14))).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="num_microbatches=4 does not divide"):
        model.fit(data, epochs=1, verbose=0)


def test_unknown_batch_size_when_traced_matches_reference():
    # Keras traces fit's step with an unknown batch dimension.
    model = mnist_cnn("tempered_sigmoid")
    engine = _install(model)
    x = RNG.uniform(size=(6, 28, 28, 1)).astype("float32")
    y = _labels(6, 10)
    engine.l2_norm_clip = _median_clip(model, engine, x, y)
    step = tf.function(engine.compute_gradients, input_signature=[
        tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32)])
    grads, _ = step(tf.constant(x), tf.constant(y))
    expected, scales = clipped_mean(model, engine.loss_fn, x, y,
                                    engine.l2_norm_clip)
    for got, want, scale in zip(grads, expected, scales):
        np.testing.assert_allclose(np.asarray(got) / scale, want / scale,
                                   rtol=0, atol=1e-5)


WS_CASES = [
    dict(filters=4, kernel_size=3, padding="same"),
    dict(filters=3, kernel_size=3, strides=2, padding="valid"),
    # (a 1x1 kernel on 2 channels standardizes to +-1/sqrt(2): degenerate)
    dict(filters=5, kernel_size=2, use_bias=False),
    dict(filters=4, kernel_size=3, padding="same", activation="tanh"),
]


@pytest.mark.parametrize("conv", WS_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("num_groups", [None, 2])
def test_weight_standardized_conv(conv, num_groups):
    from keras_tempered_dp.layers import WSConv2D
    model = _head(WSConv2D(**conv), L.GroupNormalization(groups=1),
                  TemperedSigmoid(), input_shape=(6, 6, 2))
    for var in model.trainable_variables:  # gains away from 1
        var.assign(var + RNG.normal(size=var.shape).astype("float32") * 0.3)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels(),
                              num_groups)


def test_weight_standardized_conv_computes_the_standardized_convolution():
    from keras_tempered_dp.layers import WSConv2D
    layer = WSConv2D(3, 2, padding="valid")
    x = tf.constant(_images((5, 5, 2), 2))
    y = layer(x)
    layer.gain.assign([0.5, 1.0, 2.0])
    w = layer.kernel.numpy().reshape(-1, 3).astype("float64")
    fan_in = w.shape[0]
    w_hat = (w - w.mean(0)) / np.sqrt(np.maximum(w.var(0) * fan_in, 1e-4))
    w_hat = (w_hat * [0.5, 1.0, 2.0]).reshape(layer.kernel.shape)
    want = tf.nn.conv2d(x, w_hat.astype("float32"), 1, "VALID") + layer.bias
    np.testing.assert_allclose(layer(x), want, atol=1e-5)
    assert y.shape == want.shape


def test_wide_resnet_matches_reference():
    from keras_tempered_dp.wide_resnet import wide_resnet
    # groups=4: with one channel per group (16 groups of 16 channels) GN
    # cancels the convolutions' biases exactly, and comparing gradients that
    # are zero up to rounding says nothing.
    model = wide_resnet(10, 1, activation=TemperedSigmoid(),
                        input_shape=(8, 8, 3), num_classes=3, groups=4)
    x = RNG.uniform(size=(4, 8, 8, 3)).astype("float32")
    _assert_matches_reference(model, x, _labels(4))


@pytest.mark.parametrize("conv", CONV_CASES[:6], ids=lambda c: str(c))
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_conv2d_patches_equal_extract_patches(conv, channels):
    """Both patch routes (one-hot convolution, extract_patches) are exact."""
    from keras_tempered_dp.privacy.clipping.layers import conv2d_patches
    layer = L.Conv2D(**conv)
    x = tf.constant(_images((9, 8, channels), 3))
    layer(x)
    kh, kw = layer.kernel_size
    want = tf.image.extract_patches(
        x, [1, kh, kw, 1], [1, *layer.strides, 1],
        [1, *layer.dilation_rate, 1], layer.padding.upper())
    got = conv2d_patches(layer, x)
    np.testing.assert_array_equal(
        got, tf.reshape(want, [3, -1, kh * kw * channels]))

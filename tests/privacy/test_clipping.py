"""The clipping engine against the independent reference (reference.py)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import cifar10_cnn, mnist_cnn
from keras_tempered_dp.privacy.clipping import (
    ClippingEngine,
    register_norm_fn,
    registry,
)
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state
from tests.privacy.reference import clipped_mean, per_group_gradients

L = tf.keras.layers


def _compile(model):
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    return per_example_loss(model.loss)


def _install(model, clip=1.0, noise=0.0, **kwargs):
    """An engine built through the public entry point, make_private."""
    _compile(model)
    make_private(model, l2_norm_clip=clip, noise_multiplier=noise, **kwargs)
    return get_dp_state(model).engine


def _median_clip(model, x, y, num_groups=None):
    """A clip norm with examples both below and above it."""
    norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads))
             for grads in per_group_gradients(model, _compile(model), x, y,
                                              num_groups)]
    clip = float(np.median(norms))
    assert min(norms) < clip < max(norms)
    return clip


def _assert_matches_reference(model, x, y, num_groups=None):
    clip = _median_clip(model, x, y, num_groups)
    engine = _install(model, clip=clip, num_microbatches=num_groups)
    grads, _ = engine.compute_gradients(tf.constant(x), tf.constant(y))
    expected, scales = clipped_mean(model, per_example_loss(model.loss), x,
                                    y, clip, num_groups)
    assert len(grads) == len(expected)
    for got, want, scale, var in zip(grads, expected, scales,
                                     model.trainable_variables):
        # 1e-5 relative to the largest clipped per-example contribution.
        np.testing.assert_allclose(np.asarray(got) / (scale + 1e-12),
                                   want / (scale + 1e-12), rtol=0, atol=1e-5,
                                   err_msg=var.name)


def _images(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32")


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
    rng = np.random.default_rng(1)
    for var in model.trainable_variables:
        var.assign(var + rng.normal(size=var.shape).astype("float32") * 0.3)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


@pytest.mark.parametrize("layer", [
    lambda: L.Conv1D(3, 2),
    lambda: L.DepthwiseConv2D(2),
    lambda: L.Conv2DTranspose(2, 2, strides=2),
], ids=["conv1d", "depthwise", "conv2d_transpose"])
def test_unregistered_layers_take_the_exact_generic_route(layer,
                                                          monkeypatch):
    shape = (6, 3) if isinstance(layer(), L.Conv1D) else (5, 5, 2)
    model = _head(layer(), TemperedSigmoid(), input_shape=shape)
    routed = _count_generic_calls(monkeypatch)
    _assert_matches_reference(model, _images(shape), _labels())
    assert routed == [model.layers[0].name]


def _count_generic_calls(monkeypatch):
    """The names of the layers the engine sends to the generic route."""
    routed = []
    generic = registry.generic_sq_norms

    def spy(layer, *args):
        routed.append(layer.name)
        return generic(layer, *args)

    monkeypatch.setattr(registry, "generic_sq_norms", spy)
    return routed


class _Affine(L.Layer):
    """``x * w + b``; ``b`` may be frozen while ``w`` trains."""

    def __init__(self, train_b, **kwargs):
        super().__init__(**kwargs)
        self.train_b = train_b

    def build(self, shape):
        self.w = self.add_weight("w", shape[-1:], initializer="ones")
        self.b = self.add_weight("b", shape[-1:], initializer="ones",
                                 trainable=self.train_b)

    def call(self, x):
        return x * self.w + self.b


def test_partly_trainable_layer_takes_the_exact_generic_route(monkeypatch):
    def refusing(layer, *args):  # a registered fn may assume all trainable
        raise AssertionError("the registered function must not be called")

    register_norm_fn(_Affine, refusing)
    layer = _Affine(train_b=False, name="affine")
    model = _head(layer, L.Dense(4, activation="tanh"), input_shape=(5,))
    routed = _count_generic_calls(monkeypatch)
    _assert_matches_reference(model, _images((5,)), _labels())
    assert routed == ["affine"]
    with pytest.raises(AssertionError, match="must not be called"):
        _assert_matches_reference(  # all trainable: the registered one
            _head(_Affine(train_b=True), input_shape=(5,)), _images((5,)),
            _labels())


@pytest.mark.parametrize("num_groups", [None, 3, 2])
def test_mnist_cnn(num_groups):
    model = mnist_cnn("tempered_sigmoid")
    x = np.random.default_rng(2).uniform(size=(6, 28, 28, 1))
    _assert_matches_reference(model, x.astype("float32"), _labels(6, 10),
                              num_groups)


def test_cifar10_cnn():
    model = cifar10_cnn("tanh")
    x = np.random.default_rng(3).uniform(size=(4, 32, 32, 3))
    _assert_matches_reference(model, x.astype("float32"), _labels(4, 10))


def test_functional_model_with_branches():
    inputs = tf.keras.Input((6, 6, 2))
    a = L.Conv2D(3, 3, padding="same", activation="tanh")(inputs)
    b = L.Conv2D(3, 1)(inputs)
    merged = L.Add()([a, b])
    outputs = L.Dense(3)(L.Flatten()(TemperedSigmoid()(merged)))
    model = tf.keras.Model(inputs, outputs)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


def test_matches_tf_privacy_dp_keras_sgd_update():
    x = np.random.default_rng(4).uniform(size=(8, 28, 28, 1))
    x, y = x.astype("float32"), _labels(8, 10)
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
    engine = _install(model, clip=0.7, noise=1.3, noise_seed=11)
    x = tf.constant(_images((50,), 16))
    y = tf.constant(_labels(16, 10))
    clean = _install(model, clip=0.7, noise=0.0)  # the same model
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
        engine = _install(model, clip=1.0, noise=1.0, noise_seed=seed)
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
    x, y = tf.constant(_images((3,), 6)), tf.constant(_labels(6))
    per_batch, _ = _install(model, clip=0.5).compute_gradients(x, y)
    per_expected, _ = _install(model, clip=0.5, expected_batch_size=10
                               ).compute_gradients(x, y)
    for a, b in zip(per_batch, per_expected):
        np.testing.assert_allclose(np.asarray(a) * 6 / 10, b, rtol=1e-6)


def test_shared_layer_refused_by_name():
    shared = L.Dense(3, name="shared_dense")
    inputs = tf.keras.Input((3,))
    model = tf.keras.Model(inputs, shared(shared(inputs)))
    engine = _install(model)
    with pytest.raises(ValueError, match="'shared_dense' was called 2 times"):
        engine.compute_gradients(tf.ones((2, 3)), tf.constant([0, 1]))


def test_regularizers_refused_at_install():
    model = _head(L.Dense(3, kernel_regularizer="l2"), input_shape=(3,))
    with pytest.raises(ValueError, match="kernel_regularizer.*weight decay"):
        _install(model)


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


class _TiedTranspose(L.Layer):
    """A decoder reusing an encoder's kernel, transposed (tied weights)."""

    def __init__(self, source, **kwargs):
        super().__init__(**kwargs)
        self.source = source

    def build(self, shape):
        self.kernel = self.source.kernel

    def call(self, x):
        return tf.matmul(x, self.kernel, transpose_b=True)


def test_tied_weights_refused_naming_the_variable_and_layers():
    # Before the refusal the engine kept one layer's gradient for the shared
    # kernel: relative error 0.64 against the per-example reference.
    inputs = tf.keras.Input((4,))
    encoder = L.Dense(3, use_bias=False, activation="tanh", name="encoder")
    outputs = _TiedTranspose(encoder, name="decoder")(encoder(inputs))
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"'encoder/kernel:0' is shared by "
                       r"the layers 'encoder', 'decoder'"):
        ClippingEngine(1.0, 0.0).install(model)
    with pytest.raises(ValueError, match="tied weights"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=0.0)


def test_batch_mixing_refused_by_the_engine_itself():
    model = _head(L.BatchNormalization(name="bn"), input_shape=(3,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="'bn'.*GroupNormalization"):
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
    x = np.random.default_rng(5).uniform(size=(6, 28, 28, 1))
    x, y = x.astype("float32"), _labels(6, 10)
    clip = _median_clip(model, x, y)
    engine = _install(model, clip=clip)
    step = tf.function(engine.compute_gradients, input_signature=[
        tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32)])
    grads, _ = step(tf.constant(x), tf.constant(y))
    expected, scales = clipped_mean(model, per_example_loss(model.loss), x,
                                    y, clip)
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
    rng = np.random.default_rng(6)
    for var in model.trainable_variables:  # gains away from 1
        var.assign(var + rng.normal(size=var.shape).astype("float32") * 0.3)
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
    from keras_tempered_dp.models import wide_resnet
    # groups=4: with one channel per group (16 groups of 16 channels) GN
    # cancels the convolutions' biases exactly, and comparing gradients that
    # are zero up to rounding says nothing.
    model = wide_resnet(10, 1, activation=TemperedSigmoid(),
                        input_shape=(8, 8, 3), num_classes=3, groups=4)
    x = np.random.default_rng(8).uniform(size=(4, 8, 8, 3))
    _assert_matches_reference(model, x.astype("float32"), _labels(4))


@pytest.mark.parametrize("conv", CONV_CASES[:6], ids=lambda c: str(c))
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_conv2d_patches_equal_extract_patches(conv, channels):
    """Both patch routes (one-hot convolution, extract_patches) are exact."""
    from keras_tempered_dp.privacy.clipping.norms.conv import conv2d_patches
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

"""Per-layer norm functions (clipping/norms/) against the per-example
reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp import stack
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.privacy.clipping import (
    NormResult,
    lookup_norm_fn,
    register_norm_fn,
)
from keras_tempered_dp.privacy.clipping.core import ops
from keras_tempered_dp.privacy.clipping.core.groups import regroup
from keras_tempered_dp.privacy.clipping.backend.tensorflow import clipped_sum
from keras_tempered_dp.privacy.clipping.backend.tensorflow.norms import (
    conv,
    conv_filter,
)
from keras_tempered_dp.privacy.clipping.core.norms import outer_products
from keras_tempered_dp.privacy.clipping.core import conv_cost
from tests.privacy.clipping.support import (
    CONV_CASES,
    WS_CASES,
    L,
    _assert_matches_reference,
    _head,
    _images,
    _labels,
)


@pytest.fixture(params=["patches", "filter"])
def conv_route(request, monkeypatch):
    """Both exact routes of the convolutions' norms, forced in turn (on
    TensorFlow; the JAX engine has the patches only)."""
    if keras.backend.backend() == "jax" and request.param == "filter":
        pytest.skip("the filter route is the TensorFlow engine's")
    monkeypatch.setattr(conv_cost, "FORCE", request.param)
    return request.param


@pytest.mark.parametrize("conv", CONV_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.jax_backend
def test_conv2d(conv, num_groups, conv_route):
    model = _head(L.Conv2D(**conv), TemperedSigmoid(),
                  input_shape=(7, 8, 4))
    _assert_matches_reference(model, _images((7, 8, 4)), _labels(),
                              num_groups)


def test_few_positions_take_the_ghost_norm():
    """The two last CONV_CASES exercise the ghost route of convolutions."""
    for conv_case in CONV_CASES[-2:]:
        layer = L.Conv2D(**conv_case)
        x = tf.zeros((6, 7, 8, 4))
        z = layer(x)
        c_in = 4 // layer.groups
        c_out = z.shape[-1] // layer.groups
        positions = z.shape[1] * z.shape[2]
        assert outer_products.uses_ghost(positions, 9 * c_in, c_out)


def test_filter_route_is_chosen_by_the_cost_rule(monkeypatch):
    """The rule's choice reaches the engine (the route runs)."""
    calls = []
    real = conv_filter.per_group_kernel_grads
    monkeypatch.setattr(conv, "per_group_kernel_grads",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(conv_cost, "route", lambda *a: "filter")
    model = _head(L.Conv2D(3, 3), input_shape=(6, 6, 2))
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())
    assert calls


@pytest.mark.parametrize("input_shape", [(5,), (4, 5)])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.jax_backend
def test_dense(input_shape, use_bias):
    model = _head(L.Dense(6, use_bias=use_bias, activation="tempered_sigmoid"),
                  L.Dense(4, activation="relu"), input_shape=input_shape)
    _assert_matches_reference(model, _images(input_shape), _labels())


@pytest.mark.jax_backend
def test_embedding_with_repeated_ids():
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
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
    pytest.param(lambda: L.LayerNormalization(rms_scaling=True),
                 marks=pytest.mark.skipif(
                     not stack.KERAS_3,
                     reason="rms_scaling is a Keras 3 option")),
], ids=["ln", "ln_all_axes", "gn", "gn_no_center", "ln_rms_scaling"])
@pytest.mark.jax_backend
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
    generic = clipped_sum.generic_sq_norms

    def spy(layer, *args):
        routed.append(layer.name)
        return generic(layer, *args)

    monkeypatch.setattr(clipped_sum, "generic_sq_norms", spy)
    return routed


class _Affine(L.Layer):
    """``x * w + b``; ``b`` may be frozen while ``w`` trains."""

    def __init__(self, train_b, **kwargs):
        super().__init__(**kwargs)
        self.train_b = train_b

    def build(self, shape):
        # Keywords: Keras 3's add_weight takes shape first.
        self.w = self.add_weight(name="w", shape=shape[-1:],
                                 initializer="ones")
        self.b = self.add_weight(name="b", shape=shape[-1:],
                                 initializer="ones",
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


class _Scale(L.Layer):
    """``y = x * w``, ``w`` one weight per feature."""

    def build(self, shape):
        self.w = self.add_weight(name="w", shape=shape[-1:],
                                 initializer="ones")

    def call(self, x):
        return x * self.w


def _scale_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """``_Scale``'s norms in the shared ops (both backends): example m's
    gradient is ``x_m * dz_m``; the clipped sum is left to the engine."""
    per_example = ops.cast(inputs, "float32") * grad_outputs  # [B, D]
    grouped = ops.mean(regroup(per_example, num_groups), axis=1)
    return NormResult(ops.sum(ops.square(grouped), axis=1))


@pytest.mark.parametrize("num_groups", [None, 2])
@pytest.mark.jax_backend
def test_a_norm_fn_for_both_backends_runs_on_this_one(num_groups):
    class Scale(_Scale):  # a class of its own: the registry is global
        pass

    used = []

    def counting(layer, *args):
        used.append(layer.name)
        return _scale_sq_norms(layer, *args)

    register_norm_fn(Scale, counting, backends=("tensorflow", "jax"))
    model = _head(Scale(name="scale"), L.Dense(4, activation="tanh"),
                  input_shape=(5,))
    _assert_matches_reference(model, _images((5,)), _labels(),
                              num_groups=num_groups)
    assert used and set(used) == {"scale"}


@pytest.mark.jax_backend
def test_a_norm_fn_for_the_other_backend_is_not_used():
    class Scale(_Scale):
        pass

    def refusing(layer, *args):
        raise AssertionError("registered for the other backend")

    other = "jax" if stack.backend() == "tensorflow" else "tensorflow"
    register_norm_fn(Scale, refusing, backends=other)
    assert lookup_norm_fn(Scale()) is None
    model = _head(Scale(), L.Dense(4, activation="tanh"), input_shape=(5,))
    # The exact fallback (TensorFlow: generic; JAX: the replay) clips it.
    _assert_matches_reference(model, _images((5,)), _labels())


def test_a_norm_fn_returning_none_takes_the_exact_fallback():
    """None from a norm function means "not for this layer": the unit is
    clipped by the exact fallback, for one call and for several calls of
    an ``all_calls`` function."""
    class Scale(_Scale):
        pass

    class Shared(_Scale):
        pass

    declined = []

    def declining(layer, *args):
        declined.append(layer.name)
        return None

    register_norm_fn(Scale, declining, backends=("tensorflow", "jax"))
    register_norm_fn(Shared, declining, all_calls=True)
    model = _head(Scale(name="scale"), L.Dense(4, activation="tanh"),
                  input_shape=(5,))
    _assert_matches_reference(model, _images((5,)), _labels())
    shared = Shared(name="shared")
    inputs = keras.Input((5,))
    twice = keras.Model(inputs, L.Dense(3)(shared(shared(inputs))))
    _assert_matches_reference(twice, _images((5,)), _labels())
    assert set(declined) == {"scale", "shared"}


def test_register_norm_fn_names_the_backends_it_knows():
    with pytest.raises(ValueError, match=r"backends=\('torch',\).*jax"):
        register_norm_fn(_Scale, _scale_sq_norms, backends="torch")
    with pytest.raises(ValueError, match="backends="):
        register_norm_fn(_Scale, _scale_sq_norms, backends=())
    assert lookup_norm_fn(_Scale()) is None


@pytest.mark.parametrize("conv", WS_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("num_groups", [None, 2])
@pytest.mark.jax_backend
def test_weight_standardized_conv(conv, num_groups, conv_route):
    from keras_tempered_dp.layers import WSConv2D
    model = _head(WSConv2D(**conv), L.GroupNormalization(groups=1),
                  TemperedSigmoid(), input_shape=(6, 6, 2))
    rng = np.random.default_rng(6)
    for var in model.trainable_variables:  # gains away from 1
        var.assign(var + rng.normal(size=var.shape).astype("float32") * 0.3)
    _assert_matches_reference(model, _images((6, 6, 2)), _labels(),
                              num_groups)


def test_weight_standardized_conv_with_a_constant_filter(conv_route):
    """An output channel whose weights are all equal standardizes with eps
    (the max in the scale): the closed-form backward pass has no variance
    term there."""
    from keras_tempered_dp.layers import WSConv2D
    layer = WSConv2D(3, 3, padding="same")
    model = _head(layer, TemperedSigmoid(), input_shape=(6, 6, 2))
    kernel = layer.kernel.numpy()
    kernel[..., 1] = 0.3
    layer.kernel.assign(kernel)
    layer.gain.assign([0.7, 1.3, 2.0])
    _assert_matches_reference(model, _images((6, 6, 2)), _labels())


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


@pytest.mark.parametrize("conv", CONV_CASES[:6], ids=lambda c: str(c))
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_conv2d_patches_equal_extract_patches(conv, channels):
    """Both patch routes (one-hot convolution, extract_patches) are exact."""
    from keras_tempered_dp.privacy.clipping.backend.tensorflow.norms.conv import (
        conv2d_patches,
    )
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


"""Every layer of the package through the shared harness
(tests/layer_harness.py), plus each layer's own refusals."""

import os
import zlib

import keras
import numpy as np
import pytest

from keras_tempered_dp.layers import (
    AddPositionEmbedding,
    Scattering2D,
    TemperedSigmoid,
    WSConv2D,
)
from tests.layer_harness import (
    LayerCase,
    check_config,
    check_golden,
    check_numerical_gradient,
    check_fresh_job,
    check_one_step_fit,
    predict_job,
    run_fresh_jobs,
    save_load_job,
    training_resumes_job,
)

# -- TemperedSigmoid ----------------------------------------------------------

def _tempered_sigmoid_identities(rng):
    x = rng.normal(scale=4, size=50)
    np.testing.assert_allclose(TemperedSigmoid(2, 2, 1, dtype="float64")(x),
                               np.tanh(x), atol=1e-15)
    np.testing.assert_allclose(TemperedSigmoid(1, 1, 0, dtype="float64")(x),
                               1 / (1 + np.exp(-x)), atol=1e-15)
    # Bounded in (-o, s - o).
    y = TemperedSigmoid(3, 0.5, 1, dtype="float64")(x * 100).numpy()
    assert y.min() >= -1 and y.max() <= 2


TEMPERED_SIGMOID = LayerCase(
    name="TemperedSigmoid",
    cls=TemperedSigmoid,
    kwargs=dict(s=3.0, T=0.5, o=1.0),
    input_shape=(3,),
    golden_input=np.array([[-2.0, 0.0, 4.0]]),
    # 3 / (1 + e^1) - 1, 3 / 2 - 1, 3 / (1 + e^-2) - 1
    golden=lambda dtype: np.array(
        [[-0.19317573589001466, 0.5, 1.642391233933647]]),
    tolerances={"float16": 2e-3, "float32": 1e-6, "float64": 1e-15},
    identities=[_tempered_sigmoid_identities],
)


# -- WSConv2D -----------------------------------------------------------------

_KERNEL = np.linspace(-1.0, 1.3, 2 * 2 * 2 * 3).reshape(2, 2, 2, 3) ** 3
_BIAS = np.array([0.1, -0.2, 0.3])
_GAIN = np.array([1.0, 0.5, 2.0])
_EPS = 1e-3


def _set_ws_weights(layer, kernel=_KERNEL):
    layer.kernel.assign(kernel.astype(layer.dtype))
    layer.bias.assign(_BIAS.astype(layer.dtype))
    layer.gain.assign(_GAIN.astype(layer.dtype))


def _ws_reference(x, kernel=_KERNEL):
    """Scaled weight standardization and a valid convolution, by loops."""
    fan_in = np.prod(kernel.shape[:3])
    mean = kernel.mean(axis=(0, 1, 2))
    var = kernel.var(axis=(0, 1, 2))
    w = (kernel - mean) / np.sqrt(np.maximum(fan_in * var, _EPS)) * _GAIN
    kh, kw, _, c_out = w.shape
    b, h, wd, _ = x.shape
    out = np.zeros((b, h - kh + 1, wd - kw + 1, c_out))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            patch = x[:, i:i + kh, j:j + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
    return out + _BIAS


_WS_INPUT = np.linspace(-2, 2, 1 * 4 * 4 * 2).reshape(1, 4, 4, 2)


def _ws_identities(rng):
    x = rng.normal(size=(2, 4, 4, 2))
    kernel = rng.normal(size=(2, 2, 2, 3))
    layer = WSConv2D(3, 2, eps=_EPS, dtype="float64")
    layer.build(x.shape)
    _set_ws_weights(layer, kernel)
    y = layer(x).numpy()
    # Standardization: an affine change of each output channel's kernel
    # (positive scale) leaves the output unchanged.
    _set_ws_weights(layer, kernel * [0.3, 2.0, 5.0] + [1.0, -4.0, 0.5])
    np.testing.assert_allclose(layer(x), y, atol=1e-12)
    # The standardized kernel: zero mean and fan_in * var = gain^2.
    w = layer.standardized_kernel().numpy()
    np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0, atol=1e-15)
    np.testing.assert_allclose(8 * w.var(axis=(0, 1, 2)), _GAIN ** 2,
                               rtol=1e-12)


WS_CONV = LayerCase(
    name="WSConv2D",
    cls=WSConv2D,
    kwargs=dict(filters=3, kernel_size=(2, 2), strides=(1, 1),
                padding="valid", eps=_EPS),
    input_shape=(4, 4, 2),
    golden_input=_WS_INPUT,
    golden=lambda dtype: _ws_reference(_WS_INPUT),
    tolerances={"float32": 2e-5, "float64": 1e-12},
    set_weights=_set_ws_weights,
    identities=[_ws_identities],
)


# -- Scattering2D -------------------------------------------------------------
# No weights; its values are kymatio 0.3.0's (tests/layers/ has the full
# comparison and the tolerance's reason).

with np.load(os.path.join(os.path.dirname(__file__), "layers", "reference",
                          "scattering_kymatio.npz")) as _ref:
    _SCAT_INPUT = _ref["grey20x24_J1_L6/x"][..., None]        # [2, 20, 24, 1]
    _SCAT_KYMATIO = _ref["grey20x24_J1_L6/S"].transpose(0, 2, 3, 1)


def _scattering_identities(rng):
    x = rng.normal(size=(3, 20, 24, 1))
    layer = Scattering2D(J=1, L=6, dtype="float64")
    # Positively homogeneous, and an all-zero image scatters to zero.
    np.testing.assert_allclose(layer(3 * x), 3 * layer(x).numpy(),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(layer(np.zeros_like(x)), 0)


SCATTERING = LayerCase(
    name="Scattering2D",
    cls=Scattering2D,
    kwargs=dict(J=1, L=6),
    input_shape=(20, 24, 1),
    golden_input=_SCAT_INPUT,
    golden=lambda dtype: _SCAT_KYMATIO,
    tolerances={"float32": 1e-6, "float64": 1e-6},
    identities=[_scattering_identities],
)


# -- AddPositionEmbedding -----------------------------------------------------

_POS_INPUT = np.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4)
_POS_TABLE = np.arange(12.0).reshape(3, 4) / 10


def _set_position_table(layer):
    layer.set_weights([_POS_TABLE])


def _position_identities(rng):
    x = rng.normal(size=(4, 3, 5))
    layer = AddPositionEmbedding(dtype="float64")
    # Every example gets the same table added: differences are unchanged,
    # and a zero input returns the table.
    y = layer(x).numpy()
    np.testing.assert_allclose(y - y[:1], x - x[:1], atol=1e-15)
    np.testing.assert_allclose(layer(np.zeros_like(x))[2], layer.embeddings,
                               atol=0)
    with pytest.raises(ValueError, match="sequence, features"):
        AddPositionEmbedding()(np.zeros((2, 5), "float32"))


POSITION = LayerCase(
    name="AddPositionEmbedding",
    cls=AddPositionEmbedding,
    kwargs=dict(initializer="zeros"),
    input_shape=(3, 4),
    golden_input=_POS_INPUT,
    golden=lambda dtype: _POS_INPUT + _POS_TABLE,
    tolerances={"float32": 1e-6, "float64": 1e-15},
    set_weights=_set_position_table,
    identities=[_position_identities],
)


CASES = [TEMPERED_SIGMOID, WS_CONV, SCATTERING, POSITION]
_ids = [case.name for case in CASES]


@pytest.mark.parametrize("case,dtype", [
    pytest.param(case, dtype, id=f"{case.name}-{dtype}")
    for case in CASES for dtype in case.tolerances])
def test_golden_values_per_dtype(case, dtype):
    check_golden(case, dtype)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_exact_identities(case, rng):
    assert case.identities, "every layer states its identities"
    for identity in case.identities:
        identity(rng)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_numerical_gradient_float64(case, rng):
    check_numerical_gradient(case, rng)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_config_round_trip_as_json_with_every_argument(case):
    check_config(case)


FORMATS = ["keras", "savedmodel"]


def _activation_name_job(folder, rng):
    """A model using the registered name "tempered_sigmoid" loads where
    only the package is imported."""
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(3, activation="tempered_sigmoid")])
    x = rng.normal(size=(6, 5)).astype("float32")
    return predict_job(model, x, "keras", folder, exact=True)


@pytest.fixture(scope="module")
def fresh_jobs(tmp_path_factory, fresh_python):
    """Every fresh-process check of this module, prepared here and run
    together (tests/layer_harness.py, run_fresh_jobs); each test below
    asserts its own job."""
    folder = tmp_path_factory.mktemp("fresh_jobs")
    jobs = {}
    for case in CASES:
        for fmt in FORMATS:
            name = f"save_load-{case.name}-{fmt}"
            jobs[name] = save_load_job(case, fmt, folder / name,
                                       _rng_for(name))
        name = f"resumes-{case.name}"
        rng = _rng_for(name)
        model = keras.Sequential([keras.Input(case.input_shape), case.make(),
                                  keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
        x = rng.normal(size=(8,) + case.input_shape).astype("float32")
        jobs[name] = training_resumes_job(model, x, rng.integers(0, 2, 8),
                                          folder / name)
    jobs["activation_name"] = _activation_name_job(
        folder / "activation_name", _rng_for("activation_name"))
    return jobs, run_fresh_jobs(jobs, fresh_python)


def _rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_save_and_load_in_fresh_process(case, fmt, fresh_jobs):
    check_fresh_job(*fresh_jobs, f"save_load-{case.name}-{fmt}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_training_resumes_after_load_in_fresh_process(case, fresh_jobs):
    check_fresh_job(*fresh_jobs, f"resumes-{case.name}")


def test_activation_name_loads_in_fresh_process(fresh_jobs):
    check_fresh_job(*fresh_jobs, "activation_name")


@pytest.mark.parametrize("private", [False, True], ids=["sgd", "dp_sgd"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_one_step_fit(case, private, rng):
    check_one_step_fit(case, private, rng)


# -- each layer's own refusals ------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [({"s": 0}, "s"), ({"T": -1}, "T"),
                                         ({"o": float("nan")}, "o")])
def test_tempered_sigmoid_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        TemperedSigmoid(**kwargs)


@pytest.mark.parametrize("eps", [0, -1e-4])
def test_ws_conv_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps="):
        WSConv2D(3, 2, eps=eps)


@pytest.mark.parametrize("policy,out", [
    ("float64", "float64"), ("float32", "float32"), ("bfloat16", "bfloat16"),
    ("mixed_float16", "float16"), (None, "float32")])
@pytest.mark.parametrize("given", ["float16", "float32", "float64"])
def test_tempered_sigmoid_layer_returns_its_compute_dtype(policy, out, given):
    import tensorflow as tf
    # As documented: Keras casts float inputs to the layer's compute dtype.
    kwargs = {} if policy is None else {"dtype": policy}
    x = np.array([-2.0, 0.0, 4.0], given)
    y = TemperedSigmoid(3, 0.5, 1, **kwargs)(x)
    assert tf.as_dtype(y.dtype).name == out
    np.testing.assert_allclose(
        tf.cast(y, "float64").numpy(),
        [-0.19317573589001466, 0.5, 1.642391233933647],
        atol=3e-2 if out in ("float16", "bfloat16") else 1e-6)


def test_tempered_sigmoid_layer_refuses_integer_inputs():
    with pytest.raises(TypeError, match="x has dtype int32.*Cast it"):
        TemperedSigmoid()(np.array([0, 255], "int32"))

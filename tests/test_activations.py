import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.activations import (
    get_activation,
    list_activations,
    make_tempered_sigmoid,
    register_activation,
    tempered_sigmoid,
)

DTYPES = [(tf.float16, 2e-3), (tf.float32, 1e-6), (tf.float64, 1e-12)]
X = np.concatenate([np.linspace(-8, 8, 161), [-1e4, -50.0, 50.0, 1e4]])


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_2_2_1_is_tanh(dtype, tol):
    x = tf.constant(X, dtype)
    got = tempered_sigmoid(x, s=2, T=2, o=1)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.numpy().astype("float64"),
                               np.tanh(X.astype(dtype.as_numpy_dtype)),
                               atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_1_1_0_is_logistic_sigmoid(dtype, tol):
    x = tf.constant(X, dtype)
    got = tempered_sigmoid(x, s=1, T=1, o=0).numpy().astype("float64")
    xs = X.astype(dtype.as_numpy_dtype).astype("float64")
    expected = 0.5 * (1 + np.tanh(xs / 2))  # overflow-free logistic
    np.testing.assert_allclose(got, expected, atol=tol, rtol=0)


def test_golden_values_float32():
    # s / (1 + exp(-T x)) - o computed by hand for (3, 0.5, 1).
    x = tf.constant([-2.0, 0.0, 1.0, 4.0])
    expected = [3 / (1 + np.exp(1.0)) - 1, 0.5, 3 / (1 + np.exp(-0.5)) - 1,
                3 / (1 + np.exp(-2.0)) - 1]
    np.testing.assert_allclose(tempered_sigmoid(x, 3, 0.5, 1), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.float32, tf.float64])
@pytest.mark.parametrize("params", [(2, 2, 1), (1, 1, 0), (4, 8, 2)])
def test_values_and_gradients_finite_for_huge_inputs(dtype, params):
    x = tf.constant([-1e4, -1e3, -30.0, 0.0, 30.0, 1e3, 1e4], dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tempered_sigmoid(x, *params)
    grad = tape.gradient(y, x)
    assert np.all(np.isfinite(y.numpy()))
    assert np.all(np.isfinite(grad.numpy()))
    s, _, o = params
    assert np.all(y.numpy() >= -o) and np.all(y.numpy() <= s - o)


def test_float64_numerical_gradient():
    x = tf.constant(np.linspace(-3, 3, 13), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda v: tempered_sigmoid(v, s=1.7, T=2.3, o=0.4), [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)


def test_slope_bound():
    x = tf.constant(np.linspace(-5, 5, 1001), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tempered_sigmoid(x, s=3, T=1.5, o=1)
    slope = tape.gradient(y, x).numpy()
    assert slope.max() <= 3 * 1.5 / 4 + 1e-12
    assert slope.max() > 3 * 1.5 / 4 - 1e-4


@pytest.mark.parametrize(
    "kwargs,name",
    [({"s": 0}, "s"), ({"s": -1}, "s"), ({"T": 0}, "T"), ({"T": -2}, "T"),
     ({"s": float("nan")}, "s"), ({"T": float("inf")}, "T"),
     ({"o": float("nan")}, "o"), ({"o": float("-inf")}, "o"),
     ({"s": "2"}, "s")])
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        tempered_sigmoid(tf.constant([0.0]), **kwargs)
    with pytest.raises(ValueError, match=rf"^{name}="):
        make_tempered_sigmoid(**kwargs)


def test_builtins_registered():
    names = list_activations()
    for name in ["relu", "tanh", "sigmoid", "gelu", "tempered_sigmoid",
                 "tempered_sigmoid_logistic"]:
        assert name in names
    assert get_activation("relu") is keras.activations.relu
    assert get_activation("gelu") is keras.activations.gelu
    assert get_activation("tempered_sigmoid").tempered_sigmoid_parameters \
        == (2.0, 2.0, 1.0)


def test_callable_passes_through():
    fn = lambda x: x
    assert get_activation(fn) is fn


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="Known: .*relu.*tempered_sigmoid"):
        get_activation("swishy")


def test_duplicate_registration_needs_force():
    register_activation("dup_test_act", make_tempered_sigmoid(2, 1, 1),
                        force=True)
    with pytest.raises(ValueError, match="already registered.*force=True"):
        register_activation("dup_test_act", tf.nn.relu)
    with pytest.raises(ValueError, match="already registered"):
        register_activation("relu", tf.nn.relu)
    replaced = register_activation("dup_test_act", tf.nn.relu, force=True)
    assert get_activation("dup_test_act") is replaced
    np.testing.assert_allclose(replaced(tf.constant([-1.0, 2.0])), [0, 2])


def test_keras_layers_accept_registered_names():
    layer = keras.layers.Dense(3, activation="tempered_sigmoid")
    x = tf.constant([[0.3, -0.2]])
    y = layer(x)
    pre = tf.matmul(x, layer.kernel) + layer.bias
    np.testing.assert_allclose(y, np.tanh(pre), atol=1e-6)


def test_registered_layer_instance_is_wrapped_and_named():
    from keras_tempered_dp.layers import TemperedSigmoid
    fn = register_activation("ts_layer_wrapped", TemperedSigmoid(1, 1, 0),
                             force=True)
    assert fn.__name__ == "ts_layer_wrapped"
    np.testing.assert_allclose(fn(tf.constant([0.0])), [0.5])


@pytest.mark.parametrize("bad", ["", None, 3])
def test_register_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="name="):
        register_activation(bad, tf.nn.relu)


def test_register_rejects_non_callables():
    with pytest.raises(ValueError, match="fn=.*callable"):
        register_activation("not_callable_act", 3)


@pytest.mark.parametrize("name", ["softplus", "elu", "selu", "swish"])
def test_keras_builtin_names_need_force(name):
    before = keras.activations.get(name)
    with pytest.raises(ValueError, match=rf"name='{name}'.*Keras.*force=True"):
        register_activation(name, make_tempered_sigmoid(2, 1, 1))
    assert keras.activations.get(name) is before
    assert name not in list_activations()


def test_names_in_keras_custom_objects_need_force():
    objects = keras.utils.get_custom_objects()
    objects["someone_elses_act"] = tf.nn.relu
    try:
        with pytest.raises(ValueError, match="someone_elses_act.*force=True"):
            register_activation("someone_elses_act", tf.nn.elu)
        assert objects["someone_elses_act"] is tf.nn.relu
    finally:
        del objects["someone_elses_act"]


def test_registered_functions_serialize_qualified_by_package():
    fn = get_activation("tempered_sigmoid")
    assert keras.utils.get_registered_name(fn) == \
        "keras_tempered_dp>tempered_sigmoid"
    assert keras.utils.get_custom_objects()[
        "keras_tempered_dp>tempered_sigmoid"] is fn
    config = keras.layers.Dense(2, activation="tempered_sigmoid").get_config()
    again = keras.layers.Dense.from_config(json.loads(json.dumps(config)))
    assert again.activation is fn


def test_bare_names_of_older_files_still_resolve():
    # How a registered function was written before names were qualified.
    old = {"module": "builtins", "class_name": "function",
           "config": "tempered_sigmoid", "registered_name": "function"}
    assert keras.activations.deserialize(old) is \
        get_activation("tempered_sigmoid")


def test_function_registered_by_its_owner_keeps_its_name():
    @keras.utils.register_keras_serializable(package="someone")
    def someone_elses_ts(x):
        return tempered_sigmoid(x, 2, 1, 1)

    fn = register_activation("someone_elses_ts", someone_elses_ts,
                             force=True)
    assert fn is someone_elses_ts
    assert keras.utils.get_registered_name(fn) == "someone>someone_elses_ts"
    assert keras.activations.get("someone_elses_ts") is fn


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32",
                                   "float64"])
@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_keeps_the_floating_dtype_of_x(dtype, kind):
    # Reference: the formula in float64, rounded to dtype.
    values = np.array([-3.0, -0.5, 0.0, 0.25, 2.0])
    x = tf.constant(values, dtype)
    if kind == "numpy":
        if dtype == "bfloat16":
            pytest.skip("NumPy has no bfloat16")
        x = x.numpy()
    got = tempered_sigmoid(x, s=3, T=0.5, o=1)
    assert tf.as_dtype(got.dtype).name == dtype
    xs = tf.cast(tf.constant(values, dtype), "float64").numpy()
    want = 3 / (1 + np.exp(-0.5 * xs)) - 1
    tol = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 1e-6,
           "float64": 1e-15}[dtype]
    np.testing.assert_allclose(tf.cast(got, "float64").numpy(), want,
                               atol=tol, rtol=0)


@pytest.mark.parametrize("x", [
    pytest.param(np.array([1, 2]), id="numpy-int64"),
    pytest.param(tf.constant([1, 2]), id="tf-int32"),
    pytest.param(tf.constant([0, 255], tf.uint8), id="tf-uint8"),
    pytest.param(np.array([True, False]), id="bool"),
    pytest.param([1, 2], id="list-of-ints"),
])
def test_non_float_x_is_refused_naming_x_and_its_dtype(x):
    dtype = tf.convert_to_tensor(x).dtype.name
    with pytest.raises(TypeError, match=rf"x has dtype {dtype}.*Cast it"):
        tempered_sigmoid(x, s=2, T=0.5, o=1)

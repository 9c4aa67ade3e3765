import json

import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.layers import TemperedSigmoid


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("float32", 1e-6),
                                       ("float64", 1e-12)])
def test_default_layer_is_tanh_per_dtype(dtype, tol):
    x = np.linspace(-6, 6, 49).astype(dtype)
    y = TemperedSigmoid(dtype=dtype)(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, "float64"), np.tanh(x), atol=tol)


def test_golden_values():
    y = TemperedSigmoid(s=3, T=0.5, o=1)(tf.constant([[-2.0, 4.0]]))
    np.testing.assert_allclose(
        y, [[3 / (1 + np.exp(1.0)) - 1, 3 / (1 + np.exp(-2.0)) - 1]],
        rtol=1e-6)


def test_numerical_gradient_float64():
    layer = TemperedSigmoid(s=1.5, T=3.0, o=0.2, dtype="float64")
    x = tf.constant(np.linspace(-2, 2, 9), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(layer, [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)


def test_config_round_trip_as_json():
    layer = TemperedSigmoid(s=3, T=0.5, o=1.25, name="ts")
    config = layer.get_config()
    for arg in ("s", "T", "o"):
        assert arg in config
    clone = TemperedSigmoid.from_config(json.loads(json.dumps(config)))
    assert json.dumps(clone.get_config(), sort_keys=True) == \
        json.dumps(config, sort_keys=True)
    serialized = tf.keras.layers.serialize(layer)
    assert serialized["registered_name"] == "keras_tempered_dp>TemperedSigmoid"
    again = tf.keras.layers.deserialize(json.loads(json.dumps(serialized)))
    assert isinstance(again, TemperedSigmoid)
    assert (again.s, again.T, again.o) == (3.0, 0.5, 1.25)


@pytest.mark.parametrize("kwargs,name", [({"s": 0}, "s"), ({"T": -1}, "T"),
                                         ({"o": float("nan")}, "o")])
def test_constructor_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        TemperedSigmoid(**kwargs)


def _model():
    model = tf.keras.Sequential([tf.keras.Input((5,))])
    model.add(tf.keras.layers.Dense(4))
    model.add(TemperedSigmoid(s=3, T=0.7, o=1.2))
    model.add(tf.keras.layers.Dense(3, activation="tempered_sigmoid"))
    model.add(tf.keras.layers.Dense(2))
    return model


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_save_and_load_in_fresh_process(tmp_path, fresh_python, fmt):
    model = _model()
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    path = tmp_path / ("model.keras" if fmt == "keras" else "saved_model")
    model.save(str(path))
    np.save(tmp_path / "x.npy", x)
    fresh_python(f"""
        import numpy as np, tensorflow as tf
        import keras_tempered_dp
        model = tf.keras.models.load_model({str(path)!r})
        assert isinstance(model.layers[1], keras_tempered_dp.TemperedSigmoid)
        assert model.layers[1].get_config()["T"] == 0.7
        np.save({str(tmp_path / 'y.npy')!r},
                model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
    """)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  model.predict(x, verbose=0))


def test_one_step_fit_changes_weights():
    model = _model()
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    before = [w.copy() for w in model.get_weights()]
    model.fit(np.ones((8, 5)), np.zeros((8, 2)), epochs=1, verbose=0)
    assert any(np.abs(a - b).max() > 0
               for a, b in zip(before, model.get_weights()))

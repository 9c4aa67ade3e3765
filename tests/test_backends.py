"""The backend-neutral parts on Keras 3's JAX backend.

The tempered sigmoid, its registered names, TemperedSigmoid, WSConv2D and
the models are written in ``keras.ops`` and run on any Keras 3 backend; DP
training runs on TensorFlow and JAX (tests/test_jax_backend.py) and refuses
the others. Each test runs a fresh
process with ``KERAS_BACKEND=jax`` (the backend is fixed when Keras is first
imported, and this process already runs TensorFlow), checks there that JAX
really computes (outputs are JAX arrays), and compares values against the
formula ``s * sigmoid(T * x) - o`` computed in NumPy.
"""

import importlib.util
import textwrap

import keras
import numpy as np
import pytest

from keras_tempered_dp.stack import KERAS_3

pytestmark = [
    pytest.mark.skipif(
        not KERAS_3,
        reason="Keras 2 runs only on TensorFlow; other backends are Keras 3's"),
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason='JAX is not installed (pip install "keras-tempered-dp[jax]")'),
]

# Opens every fresh process: JAX as the backend, and proof that it is.
PRELUDE = """
    import jax, keras, numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    import keras_tempered_dp
    from keras_tempered_dp.layers import TemperedSigmoid, WSConv2D

    def formula(x, s, T, o):
        return s / (1 + np.exp(-T * np.asarray(x, "float64"))) - o

    def is_jax(y):
        return isinstance(y, jax.Array)
"""


@pytest.fixture
def jax_python(fresh_python, monkeypatch):
    """Runs code in a fresh process on the JAX backend, after PRELUDE."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")

    def run(code, timeout=300):
        # Each part dedented on its own: indented alike they would nest.
        return fresh_python(textwrap.dedent(PRELUDE) + textwrap.dedent(code),
                            timeout=timeout)
    return run


def test_tempered_sigmoid_values_and_gradient_on_jax(jax_python):
    jax_python("""
        x = np.concatenate([np.linspace(-8, 8, 161), [-1e4, 1e4]])
        x = x.astype("float32")
        for s, T, o in [(2, 2, 1), (1, 1, 0), (3, 0.5, 1)]:
            y = keras_tempered_dp.tempered_sigmoid(x, s, T, o)
            assert is_jax(y) and y.dtype == np.float32
            np.testing.assert_allclose(np.asarray(y), formula(x, s, T, o),
                                       atol=1e-6, rtol=0)
            layer = TemperedSigmoid(s, T, o)
            np.testing.assert_allclose(np.asarray(layer(x)),
                                       formula(x, s, T, o), atol=1e-6, rtol=0)
        # (2, 2, 1) is tanh.
        np.testing.assert_allclose(
            np.asarray(keras_tempered_dp.tempered_sigmoid(x)), np.tanh(x),
            atol=1e-6, rtol=0)
        # The derivative s * T * sigma * (1 - sigma), finite everywhere.
        grad = jax.vmap(jax.grad(
            lambda v: keras_tempered_dp.tempered_sigmoid(v, 3, 1.5, 1)))(x)
        sigma = 1 / (1 + np.exp(-1.5 * x.astype("float64")))
        np.testing.assert_allclose(np.asarray(grad),
                                   3 * 1.5 * sigma * (1 - sigma), atol=1e-6)
        assert np.isfinite(np.asarray(grad)).all()
        # Registered names work as Keras activation strings on JAX too.
        dense = keras.layers.Dense(3, activation="tempered_sigmoid_logistic")
        inputs = np.linspace(-1, 1, 8).reshape(2, 4).astype("float32")
        out = dense(inputs)
        assert is_jax(out)
        pre = inputs @ np.asarray(dense.kernel) + np.asarray(dense.bias)
        np.testing.assert_allclose(np.asarray(out), formula(pre, 1, 1, 0),
                                   atol=1e-6)
    """)


def _layers_model_code(path):
    """A model with every layer of the package and a registered name."""
    return f"""
        model = keras.Sequential([
            keras.Input((6, 6, 2)),
            WSConv2D(4, 3, eps=1e-3, name="ws"),
            TemperedSigmoid(3, 0.5, 1, name="ts"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="tempered_sigmoid",
                               name="dense"),
            keras.layers.Dense(2, name="logits")])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
        y = rng.integers(0, 2, 8)
        path = {str(path)!r}
    """


def test_layers_fit_save_and_load_on_jax(jax_python, tmp_path):
    """Ordinary fit moves every weight (the WSConv2D gain included); the
    .keras file loads in another fresh JAX process with the same
    predictions and trains on there as it would have in the first; and it
    loads on TensorFlow, here, with the same predictions."""
    jax_python(_layers_model_code(tmp_path / "layers.keras") + f"""
        before = [np.array(w) for w in model.get_weights()]
        fit = dict(batch_size=4, epochs=1, shuffle=False, verbose=0)
        history = model.fit(x, y, **fit)
        assert np.isfinite(history.history["loss"][0])
        for w, old in zip(model.trainable_weights, before):
            assert np.abs(np.asarray(w) - old).max() > 0, w.path
        assert [w.name for w in model.get_layer("ws").weights] == \\
            ["kernel", "bias", "gain"]
        # The layers' values on JAX against the formulas.
        ws_out = model.get_layer("ws")(x)
        assert is_jax(ws_out)
        ts = model.get_layer("ts")
        np.testing.assert_allclose(np.asarray(ts(ws_out)),
                                   formula(ws_out, 3, 0.5, 1), atol=1e-6)
        model.save(path)
        np.save({str(tmp_path / 'x.npy')!r}, x)
        np.save({str(tmp_path / 'y.npy')!r}, model.predict(x, verbose=0))
        model.fit(x, y, **fit)
        np.savez({str(tmp_path / 'continued.npz')!r},
                 *[np.asarray(w) for w in model.get_weights()])
    """)
    jax_python(_layers_model_code(tmp_path / "layers.keras") + f"""
        loaded = keras.models.load_model(path)
        assert type(loaded.get_layer("ws")) is WSConv2D
        assert type(loaded.get_layer("ts")) is TemperedSigmoid
        np.testing.assert_allclose(loaded.predict(x, verbose=0),
                                   np.load({str(tmp_path / 'y.npy')!r}),
                                   rtol=1e-6, atol=1e-6)
        loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        with np.load({str(tmp_path / 'continued.npz')!r}) as continued:
            expected = [continued[f"arr_{{i}}"]
                        for i in range(len(continued.files))]
        for got, want in zip(loaded.get_weights(), expected):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6,
                                       atol=1e-6)
    """)
    # Keras 3's .keras files are backend-neutral: this process runs
    # TensorFlow.
    loaded = keras.models.load_model(tmp_path / "layers.keras")
    np.testing.assert_allclose(
        loaded.predict(np.load(tmp_path / "x.npy"), verbose=0),
        np.load(tmp_path / "y.npy"), rtol=1e-5, atol=1e-5)


def test_models_forward_fit_save_and_load_on_jax(jax_python, tmp_path):
    """Every model of keras_tempered_dp.models, with the tempered sigmoid:
    its pinned parameter count, a forward pass, a step of ordinary fit and
    a .keras round trip with the same predictions; the ScatterNet models
    refuse JAX by name."""
    jax_python(f"""
        from keras_tempered_dp.models import FIXED_FRONT_MODELS, MODELS
        counts = {{"mnist_cnn": 26010, "cifar10_cnn": 550570,
                   "digits_cnn": 9258, "wrn16_4": 2753402, "vit": 71946,
                   "sequence_lstm": 81674}}
        # The ScatterNet models' scattering is TensorFlow code: refused.
        assert set(MODELS) == set(counts) | set(FIXED_FRONT_MODELS), \
            sorted(MODELS)
        for name in FIXED_FRONT_MODELS:
            try:
                MODELS[name]("tanh")
            except RuntimeError as error:
                assert "Scattering2D runs on TensorFlow" in str(error)
                assert "jax backend" in str(error)
            else:
                raise AssertionError(name + " built on JAX")
        rng = np.random.default_rng(0)
        # WRN-16-4 is built and counted; a WRN-10-1 (the same builder and
        # blocks, 1/40 of the weights) stands for it in the fit and the
        # round trip, which jit-compile it (half a minute for 16-4).
        from keras_tempered_dp.models import wide_resnet
        assert MODELS["wrn16_4"]("tempered_sigmoid").count_params() == \
            counts["wrn16_4"]
        trained = dict(MODELS, wrn16_4=lambda activation: wide_resnet(
            10, 1, activation, input_shape=(16, 16, 3)))
        for name, builder in ((n, trained[n]) for n in counts):
            model = builder("tempered_sigmoid")
            if name != "wrn16_4":
                assert model.count_params() == counts[name], name
            x = rng.uniform(size=(4,) + tuple(model.input_shape[1:]))
            x = x.astype("float32")
            logits = model(x)
            assert is_jax(logits) and tuple(logits.shape) == (4, 10), name
            model.compile(optimizer="sgd",
                          loss=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True))
            history = model.fit(x, np.arange(4), batch_size=4, epochs=1,
                                verbose=0)
            assert np.isfinite(history.history["loss"][0]), name
            path = {str(tmp_path)!r} + f"/{{name}}.keras"
            model.save(path)
            loaded = keras.models.load_model(path)
            np.testing.assert_allclose(loaded.predict(x, verbose=0),
                                       model.predict(x, verbose=0),
                                       rtol=1e-6, atol=1e-6, err_msg=name)
    """, timeout=600)


def test_dp_training_refuses_backends_without_an_engine(fresh_python,
                                                         monkeypatch):
    """Keras' NumPy backend (and PyTorch's, which this suite does not
    install) has no engine: compile_dp and the engine refuse, naming the
    backend found and the two that work, before anything is set up.
    (The engine on JAX: tests/test_jax_backend.py.)"""
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    fresh_python("""
        import keras, keras_tempered_dp
        from keras_tempered_dp.privacy.clipping import ClippingEngine
        assert keras.backend.backend() == "numpy"
        model = keras_tempered_dp.mnist_cnn()
        for make in (lambda: keras_tempered_dp.compile_dp(
                         model, l2_norm_clip=1, noise_multiplier=1),
                     lambda: ClippingEngine(1.0, 1.0)):
            try:
                make()
            except RuntimeError as error:
                assert "'numpy' backend" in str(error), str(error)
                assert "TensorFlow and JAX" in str(error), str(error)
                assert "KERAS_BACKEND=jax" in str(error), str(error)
            else:
                raise AssertionError("DP training set up on numpy")
        assert not model.compiled  # refused before anything was set up
    """)


def test_pytorch_is_refused_by_name(monkeypatch):
    from keras_tempered_dp import stack
    monkeypatch.setattr(stack, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match="TensorFlow and JAX backends.*"
                                           "'torch' backend.*Opacus"):
        stack.require_engine_backend("compile_dp")


# The tempered sigmoid keeps the floating dtype of its input and refuses
# integer inputs by name, as on TensorFlow (tests/test_activations.py).
def test_keeps_float_dtype_and_refuses_integers_on_jax(jax_python):
    jax_python("""
        import jax.numpy as jnp
        import pytest
        values = np.array([-3.0, -0.5, 0.0, 0.25, 2.0])
        for dtype, tol in [("float16", 4e-3), ("bfloat16", 3e-2),
                           ("float32", 1e-6)]:
            x = jnp.asarray(values, dtype)
            y = keras_tempered_dp.tempered_sigmoid(x, 3, 0.5, 1)
            assert is_jax(y) and y.dtype == x.dtype, (dtype, y.dtype)
            np.testing.assert_allclose(
                np.asarray(y, "float64"),
                formula(np.asarray(x, "float64"), 3, 0.5, 1),
                atol=tol, rtol=0)
            # The layer follows its compute dtype, not its input's.
            layer = TemperedSigmoid(3, 0.5, 1, dtype=dtype)
            assert layer(values.astype("float32")).dtype == x.dtype
        # Integers are refused by name (JAX itself would turn T=0.5 into 0).
        for x in [np.array([1, 2]), jnp.array([1, 2]), np.array([True])]:
            with pytest.raises(TypeError, match="x has dtype .*Cast it"):
                keras_tempered_dp.tempered_sigmoid(x, 2, 0.5, 1)
        print("ok")
    """)

"""The tempered sigmoid's dtypes on Keras 3's JAX backend: it keeps the
floating dtype of its input and refuses integer inputs by name, as on
TensorFlow (tests/test_activations.py). Fresh processes, as in
tests/test_backends.py, whose fixture and skip conditions this reuses."""

from tests.test_backends import jax_python, pytestmark  # noqa: F401


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

"""Models trained with the engine save, load and train further."""

import numpy as np
import pytest

from keras_tempered_dp import stack
from keras_tempered_dp.models import mnist_cnn
from keras_tempered_dp.privacy.compile import compile_dp


def _trained_model(x, y):
    model = mnist_cnn("tempered_sigmoid")
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               learning_rate=0.1, momentum=0.9)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model


def _data():
    rng = np.random.default_rng(0)
    return (rng.uniform(size=(32, 28, 28, 1)).astype("float32"),
            np.arange(32) % 10)


@pytest.mark.parametrize("fmt", [
    "keras",
    pytest.param("savedmodel", marks=pytest.mark.skipif(
        stack.KERAS_3, reason="Keras 3 saves and loads .keras files only; "
        "its SavedModel is an inference export (model.export), tested "
        "below")),
])
def test_trained_model_saves_loads_and_trains_further(tmp_path, fresh_python,
                                                      fmt):
    x, y = _data()
    model = _trained_model(x, y)
    path = tmp_path / ("m.keras" if fmt == "keras" else "m_savedmodel")
    model.save(str(path))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = fresh_python(f"""
        import keras, numpy as np, tensorflow as tf
        import keras_tempered_dp as kdp
        model = keras.models.load_model({str(path)!r})
        x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load(
            {str(tmp_path / 'y.npy')!r})
        np.save({str(tmp_path / 'pred.npy')!r}, model.predict(x, verbose=0))
        steps_before = int(model.optimizer.iterations)
        before = model.get_weights()
        # Continue with DP-SGD and the restored optimizer (momentum) state.
        kdp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                            callbacks=[kdp.EpsilonCallback(32, 16,
                                                           delta=1e-3)])
        changed = any(np.abs(a - b).max() > 0
                      for a, b in zip(before, model.get_weights()))
        from keras_tempered_dp.privacy import get_dp_state
        engine = get_dp_state(model).engine
        print(int(engine.steps_taken), int(engine.examples_seen))
        print(steps_before, int(model.optimizer.iterations), changed,
              history.history["epsilon"][0] > 0)
    """)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"),
                                  model.predict(x, verbose=0))
    # Keras 2.15 restores the optimizer's state (step count, momentum) from
    # .keras files only; from a SavedModel it silently starts a fresh
    # optimizer, for plain Keras models as well (docs/sharp_edges.md).
    steps = ["2", "4"] if fmt == "keras" else ["0", "2"]
    assert out.split()[-4:] == steps + ["True", "True"]
    # The resumed engine counts what it ran itself: 2 steps of 16.
    assert out.split()[-6:-4] == ["2", "32"]


def test_trained_model_exports_a_savedmodel_for_serving(tmp_path,
                                                        fresh_python):
    """model.export (both stacks): an inference SavedModel, loaded by
    TensorFlow alone, gives the trained model's predictions."""
    x, y = _data()
    model = _trained_model(x, y)
    path = tmp_path / "exported"
    model.export(str(path))
    np.save(tmp_path / "x.npy", x)
    fresh_python(f"""
        import numpy as np, tensorflow as tf
        served = tf.saved_model.load({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'served.npy')!r},
                served.serve(tf.constant(x)).numpy())
    """)
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"),
                               model.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-6)

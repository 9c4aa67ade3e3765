"""Parameter averaging against a NumPy EMA of the recorded weights."""

import keras
import numpy as np
import pytest

from keras_tempered_dp.averaging import ParameterAveraging
from keras_tempered_dp.models import digits_cnn
from keras_tempered_dp.privacy.compile import compile_dp


class _Record(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([w.numpy() for w in self.model.trainable_weights])


def _data(n=40):
    rng = np.random.default_rng(1)
    return (rng.uniform(size=(n, 8, 8, 1)).astype("float32"),
            np.arange(n) % 10)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_numpy_reference(warmup):
    x, y = _data()
    model = digits_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.5,
               learning_rate=0.5)
    initial = [w.numpy() for w in model.trainable_weights]
    record, ema = _Record(), ParameterAveraging(decay=0.8, warmup=warmup)
    model.fit(x, y, batch_size=10, epochs=2, verbose=0,
              callbacks=[record, ema])
    avg = [w.astype("float64") for w in initial]
    for t, weights in enumerate(record.seen):
        d = min(0.8, (1 + t) / (10 + t)) if warmup else 0.8
        avg = [d * a + (1 - d) * w for a, w in zip(avg, weights)]
    assert ema.get_state()["updates"] == 8
    for got, want in zip(ema.average, avg):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    final = [w.numpy() for w in model.trainable_weights]
    np.testing.assert_array_equal(final[0], record.seen[-1][0])
    with ema.averaged():
        np.testing.assert_allclose(model.trainable_weights[0].numpy(),
                                   avg[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.trainable_weights[0].numpy(),
                                  final[0])


def test_validation_uses_average_and_apply_at_end(tmp_path):
    x, y = _data()
    model = digits_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.5,
               learning_rate=0.5)
    ema = ParameterAveraging(decay=0.9, apply_at_end=True)
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0,
                        validation_data=(x, y), callbacks=[ema])
    # After apply_at_end the model holds the average: same validation loss.
    loss = model.evaluate(x, y, verbose=0)[0]
    assert history.history["val_loss"][0] == pytest.approx(loss, rel=1e-5)
    model.save(tmp_path / "averaged.keras")
    loaded = keras.models.load_model(tmp_path / "averaged.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)


def test_bad_decay_refused():
    with pytest.raises(ValueError, match="decay"):
        ParameterAveraging(decay=1.0)

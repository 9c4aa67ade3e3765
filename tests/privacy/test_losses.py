"""per_example_loss: one value per example, or a clear refusal."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.privacy.losses import per_example_loss
from tests.privacy.stacks import needs_tf_privacy


def test_losses_keep_one_value_per_example():
    y = tf.constant([0, 1, 2])
    logits = tf.constant(np.eye(3, dtype="float32") * 3)
    for loss in (None, "sparse_categorical_crossentropy",
                 keras.losses.SparseCategoricalCrossentropy(
                     from_logits=True)):
        assert per_example_loss(loss)(y, logits).shape == (3,)


@pytest.mark.parametrize("optimizer", [
    "fast", pytest.param("dp_keras_sgd", marks=needs_tf_privacy)])
def test_a_loss_that_averages_the_batch_is_refused(optimizer):
    def mean_loss(y_true, y_pred):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True))

    model = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(3)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer=optimizer, loss=mean_loss)
    before = [w.numpy() for w in model.weights]
    with pytest.raises(ValueError, match="one value per example"):
        model.fit(np.zeros((8, 4), "float32"), np.zeros(8), batch_size=4,
                  verbose=0)
    assert all(np.array_equal(a, w.numpy())
               for a, w in zip(before, model.weights))

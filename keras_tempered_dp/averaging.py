"""Parameter averaging: an exponential moving average (EMA) of the weights.

De et al. (2022) evaluate DP-SGD models with an EMA of their parameters; the
average is post-processing of the private iterates, so it costs no privacy.
After every training step::

    d_t = min(decay, (1 + t) / (10 + t))      (warmup=True; else d_t = decay)
    avg = d_t * avg + (1 - d_t) * w

The warmup is the ``num_updates`` rule of TensorFlow's
``tf.train.ExponentialMovingAverage``: early on the average follows the
weights closely, so a decay of 0.9999 is usable in runs of a few thousand
steps.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp.validation import check_number


class ParameterAveraging(keras.callbacks.Callback):
    """Keeps an EMA of the model's trainable weights during ``fit``.

    Args:
        decay: the EMA decay in [0, 1); 0.9999 as in De et al.
        warmup: use ``min(decay, (1 + t) / (10 + t))`` at step t.
        evaluate_with_average: validation inside ``fit`` (and any
            ``evaluate`` given this callback) runs with the averaged weights.
        apply_at_end: when training ends, the model keeps the averaged
            weights (so ``evaluate``, ``predict`` and ``save`` use them).

    Example:

    >>> from keras_tempered_dp.models import digits_cnn
    >>> model = digits_cnn()
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> ema = ParameterAveraging(decay=0.9)
    >>> _ = model.fit(tf.zeros([4, 8, 8, 1]), tf.zeros([4]), verbose=0,
    ...               callbacks=[ema])
    >>> with ema.averaged():
    ...     _ = model.predict(tf.zeros([1, 8, 8, 1]), verbose=0)
    """

    def __init__(self, decay=0.9999, warmup=True, evaluate_with_average=True,
                 apply_at_end=False):
        super().__init__()
        # Keras may then pass logs as tensors: no per-step sync for numpy.
        self._supports_tf_logs = True
        self.decay = check_number("decay", decay, low=0, high=1,
                                  high_open=True,
                                  hint="De et al. use 0.9999.")
        self.warmup = bool(warmup)
        self.evaluate_with_average = bool(evaluate_with_average)
        self.apply_at_end = bool(apply_at_end)
        self.average = None
        self.updates = None
        self._swapped = None
        self._update_fn = None

    def _build(self):
        if self.average is not None:
            return
        weights = self.model.trainable_weights
        self.average = [tf.Variable(w, trainable=False) for w in weights]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)

        @tf.function
        def update():
            t = tf.cast(self.updates, tf.float32)
            decay = tf.constant(self.decay)
            if self.warmup:
                decay = tf.minimum(decay, (1 + t) / (10 + t))
            for avg, w in zip(self.average, weights):
                avg.assign(decay * avg + (1 - decay) * tf.cast(w, avg.dtype))
            self.updates.assign_add(1)

        self._update_fn = update

    def on_train_begin(self, logs=None):
        self._build()

    def on_train_batch_end(self, batch, logs=None):
        self._update_fn()

    def on_test_begin(self, logs=None):
        if self.evaluate_with_average and self.average is not None:
            self._swap_in()

    def on_test_end(self, logs=None):
        self._swap_out()

    def on_train_end(self, logs=None):
        self._swap_out()
        if self.apply_at_end:
            self.apply()

    def _swap_in(self):
        if self._swapped is None:
            weights = self.model.trainable_weights
            self._swapped = [w.numpy() for w in weights]
            for w, avg in zip(weights, self.average):
                w.assign(avg)

    def _swap_out(self):
        if self._swapped is not None:
            for w, value in zip(self.model.trainable_weights, self._swapped):
                w.assign(value)
            self._swapped = None

    def apply(self):
        """Overwrites the model's trainable weights with the average."""
        if self.average is None:
            raise ValueError("No average yet: train with this callback "
                             "first.")
        for w, avg in zip(self.model.trainable_weights, self.average):
            w.assign(avg)

    @contextlib.contextmanager
    def averaged(self):
        """Within the block the model holds the averaged weights."""
        if self.average is None:
            raise ValueError("No average yet: train with this callback "
                             "first.")
        self._swap_in()
        try:
            yield self.model
        finally:
            self._swap_out()

    def get_state(self):
        """``{"updates": t, "average": [arrays]}``, to resume a run exactly."""
        return {"updates": int(self.updates.numpy()),
                "average": [a.numpy() for a in self.average]}

    def set_state(self, model, state):
        """Restores :meth:`get_state` for ``model`` before training resumes."""
        self.set_model(model)
        self._build()
        if len(state["average"]) != len(self.average):
            raise ValueError("state: it holds "
                             f"{len(state['average'])} weights, the model "
                             f"{len(self.average)}.")
        for avg, value in zip(self.average, state["average"]):
            avg.assign(np.asarray(value))
        self.updates.assign(int(state["updates"]))

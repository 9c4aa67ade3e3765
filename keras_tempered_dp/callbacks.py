"""Keras callbacks: the privacy budget spent, written into the logs."""

import tensorflow as tf

from keras_tempered_dp.privacy.accounting import compute_epsilon


class EpsilonCallback(tf.keras.callbacks.Callback):
    """Writes ``epsilon``, the privacy spent so far, into the logs each epoch.

    Because it edits the epoch-end ``logs``, History, CSVLogger, TensorBoard
    and the progress bar all see ``epsilon`` (put this callback before them in
    the list; Keras runs callbacks in order). Epsilon comes from
    dp_accounting's RDP accountant after ``steps`` DP-SGD steps at sampling
    rate ``batch_size / num_examples``; see
    :mod:`keras_tempered_dp.privacy.accounting` for what it assumes, in
    particular about Keras' shuffled fixed-size batches.

    Args:
        num_examples: the training set size N.
        batch_size: the batch size used by ``fit``.
        noise_multiplier: sigma; by default read from ``model.dp_config`` (set
            by ``compile_dp``) or from a TF Privacy DP optimizer.
        delta: the delta of (epsilon, delta)-DP; 1e-5 by default, and it
            should be below 1 / num_examples.
        sampling: "poisson" or "without_replacement".
        steps_per_epoch: steps in one epoch; by default what ``fit`` reports,
            else ``ceil(num_examples / batch_size)``.
        initial_steps: steps already taken before this ``fit`` (resuming).
        used_microbatching: None to infer it from ``model.dp_config``.

    Example:

    >>> cb = EpsilonCallback(num_examples=60000, batch_size=256,
    ...                      noise_multiplier=1.1)
    >>> round(cb.epsilon_after(steps=60 * 235), 2)
    2.6
    """

    def __init__(self, num_examples, batch_size, noise_multiplier=None,
                 delta=1e-5, sampling="poisson", steps_per_epoch=None,
                 initial_steps=0, used_microbatching=None):
        super().__init__()
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampling = sampling
        self.steps_per_epoch = steps_per_epoch
        self.used_microbatching = used_microbatching
        self.steps = initial_steps
        if noise_multiplier is not None:
            self.epsilon_after(0)  # validates the arguments now, not later

    def _noise(self):
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        config = getattr(self.model, "dp_config", None)
        if config is not None:
            return config.noise_multiplier
        # TF Privacy's Gaussian-query optimizers keep stddev = sigma * C.
        query = getattr(self.model.optimizer, "_dp_sum_query", None)
        stddev = getattr(query, "_stddev", None)
        clip = getattr(query, "_l2_norm_clip", None)
        if stddev is None or not clip:
            raise ValueError(
                "noise_multiplier is unknown: pass noise_multiplier= to "
                "EpsilonCallback, or compile with keras_tempered_dp's "
                "compile_dp or a TF Privacy DP optimizer.")
        return float(stddev) / float(clip)

    def _microbatching(self):
        if self.used_microbatching is not None:
            return self.used_microbatching
        config = getattr(self.model, "dp_config", None)
        num = (config.num_microbatches if config is not None else
               getattr(getattr(self.model, "optimizer", None),
                       "_num_microbatches", None))
        return num is not None and num < self.batch_size

    def epsilon_after(self, steps):
        """Epsilon after ``steps`` steps of this run."""
        noise = self._noise() if self.model is not None else \
            self.noise_multiplier
        return compute_epsilon(
            self.num_examples, self.batch_size, noise, steps=steps,
            delta=self.delta, sampling=self.sampling,
            used_microbatching=(self._microbatching()
                                if self.model is not None
                                else bool(self.used_microbatching)))

    def on_epoch_end(self, epoch, logs=None):
        per_epoch = (self.steps_per_epoch or self.params.get("steps")
                     or -(-self.num_examples // self.batch_size))
        self.steps += int(per_epoch)
        if logs is not None:
            logs["epsilon"] = self.epsilon_after(self.steps)

"""Keras callbacks: the privacy budget spent, written into the logs."""

import tensorflow as tf

from keras_tempered_dp.privacy.accounting import compute_epsilon
from keras_tempered_dp.privacy.schedules import schedule_epsilon
from keras_tempered_dp.privacy.state import get_dp_state


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
        noise_multiplier: sigma; by default read from the model's DP state
            (set by ``compile_dp``) or from a TF Privacy DP optimizer.
        delta: the delta of (epsilon, delta)-DP; 1e-5 by default, and it
            should be below 1 / num_examples.
        sampling: "poisson" or "without_replacement".
        steps_per_epoch: steps in one epoch; by default what ``fit`` reports,
            else ``ceil(num_examples / batch_size)``.
        initial_steps: steps already taken before this ``fit`` (resuming).
        used_microbatching: None to infer it from the model's DP state.
        noise_schedule: a :class:`~keras_tempered_dp.privacy.schedules.
            NoiseSchedule`; by default the one a :class:`NoiseScheduler`
            callback put on the model, else a constant noise multiplier.

    Example:

    >>> cb = EpsilonCallback(num_examples=60000, batch_size=256,
    ...                      noise_multiplier=1.1)
    >>> round(cb.epsilon_after(steps=60 * 235), 2)
    2.6
    """

    def __init__(self, num_examples, batch_size, noise_multiplier=None,
                 delta=1e-5, sampling="poisson", steps_per_epoch=None,
                 initial_steps=0, used_microbatching=None,
                 noise_schedule=None):
        super().__init__()
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampling = sampling
        self.steps_per_epoch = steps_per_epoch
        self.used_microbatching = used_microbatching
        self.steps = initial_steps
        self.noise_schedule = noise_schedule
        if noise_multiplier is not None:
            self.epsilon_after(0)  # validates the arguments now, not later

    def _noise(self):
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        state = get_dp_state(self.model)
        if state is not None:
            return state.config.noise_multiplier
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
        state = get_dp_state(self.model)
        num = (state.config.num_microbatches if state is not None else
               getattr(getattr(self.model, "optimizer", None),
                       "_num_microbatches", None))
        return num is not None and num < self.batch_size

    def _schedule(self):
        if self.noise_schedule is not None:
            return self.noise_schedule
        state = get_dp_state(self.model)
        return None if state is None else state.noise_schedule

    def _steps_per_epoch(self):
        return int(self.steps_per_epoch
                   or (self.params or {}).get("steps")
                   or -(-self.num_examples // self.batch_size))

    def epsilon_after(self, steps):
        """Epsilon after ``steps`` steps of this run."""
        schedule = self._schedule() if self.model is not None \
            else self.noise_schedule
        if schedule is not None:
            if self.used_microbatching:
                raise ValueError("Noise schedules need per-example clipping "
                                 "(used_microbatching=False).")
            return schedule_epsilon(
                self.num_examples, self.batch_size, schedule,
                steps_per_epoch=self._steps_per_epoch(), steps=steps,
                delta=self.delta, sampling=self.sampling)
        noise = self._noise() if self.model is not None else \
            self.noise_multiplier
        return compute_epsilon(
            self.num_examples, self.batch_size, noise, steps=steps,
            delta=self.delta, sampling=self.sampling,
            used_microbatching=(self._microbatching()
                                if self.model is not None
                                else bool(self.used_microbatching)))

    def on_epoch_end(self, epoch, logs=None):
        self._check_engine_noise(epoch)
        self.steps += self._steps_per_epoch()
        if logs is not None:
            logs["epsilon"] = self.epsilon_after(self.steps)

    def _check_engine_noise(self, epoch):
        """The engine's noise must be what the accounting assumes: a lower
        noise than accounted would make the reported epsilon a lie."""
        state = get_dp_state(self.model)
        engine = None if state is None else state.engine
        if engine is None:
            return
        schedule = self._schedule()
        assumed = (schedule(epoch) if schedule is not None
                   else self._noise())
        if engine.noise_multiplier < assumed * (1 - 1e-6):
            raise RuntimeError(
                f"The engine's noise multiplier is {engine.noise_multiplier}"
                f" at epoch {epoch}, below the {assumed} the epsilon "
                "accounting assumes. Change the noise only through a "
                "NoiseScheduler callback (or pass its schedule as "
                "noise_schedule=). The model's weights are intact; epsilon "
                "for this epoch is not reported.")


class NoiseScheduler(tf.keras.callbacks.Callback):
    """Sets the clipping engine's noise multiplier at each epoch's start.

    The noise of epoch e is ``schedule(e)``; :class:`EpsilonCallback` finds
    the schedule on the model and composes each epoch's own Gaussian events
    (:func:`~keras_tempered_dp.privacy.schedules.schedule_epsilon`), so the
    reported epsilon is exact for the decaying noise. Calibrate sigma0 for a
    target epsilon with
    :func:`~keras_tempered_dp.privacy.schedules.calibrate_schedule`.

    Example:

    >>> from keras_tempered_dp.privacy.schedules import StepDecay
    >>> scheduler = NoiseScheduler(StepDecay(sigma0=2.0, factor=0.5,
    ...                                      period=10))
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"schedule={schedule!r}: must be a "
                             "NoiseSchedule (epoch -> noise multiplier).")
        self.schedule = schedule

    def on_train_begin(self, logs=None):
        state = get_dp_state(self.model)
        if state is None or state.engine is None:
            raise ValueError(
                "NoiseScheduler needs the package's clipping engine "
                "(compile_dp(..., optimizer='fast') or make_private); TF "
                "Privacy's optimizers fix their noise when built.")
        state.noise_schedule = self.schedule

    def on_epoch_begin(self, epoch, logs=None):
        get_dp_state(self.model).engine.noise_multiplier = self.schedule(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["noise_multiplier"] = get_dp_state(
                self.model).engine.noise_multiplier

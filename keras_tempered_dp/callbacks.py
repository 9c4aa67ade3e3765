"""Keras callbacks: the privacy budget spent, written into the logs."""

import dataclasses
import math
from collections.abc import Sequence

import keras

from keras_tempered_dp.privacy import accounting
from keras_tempered_dp.privacy.accounting import Segment, compose_epsilon
from keras_tempered_dp.privacy.checks import check_dp_trainable
from keras_tempered_dp.privacy.schedules import NoiseSchedule, schedule_segments
from keras_tempered_dp.privacy.state import get_dp_state

# Honest Poisson runs stay within this many standard deviations of the
# expected number of examples per epoch (a false alarm has probability
# below 1e-14); a batch size or N off by a factor lands far outside.
POISSON_TOLERANCE_SDS = 8


@dataclasses.dataclass(frozen=True)
class DPTraining:
    """What runs a model's DP-SGD step, as the epsilon callback reads it.

    Attributes:
        noise_multiplier: sigma of the step (the engine's current one).
        l2_norm_clip: C.
        num_microbatches: None for per-example clipping.
        engine: the package's clipping engine, or None (TF Privacy).
    """

    noise_multiplier: float
    l2_norm_clip: float
    num_microbatches: int | None
    engine: object | None = None


def tf_privacy_training(optimizer):
    """The DP settings of a TF Privacy DP optimizer, or None if
    ``optimizer`` is not one.

    TF Privacy 0.9 keeps them only in private attributes (the Gaussian sum
    query's ``_l2_norm_clip`` and ``_stddev``, the optimizer's
    ``_num_microbatches`` and ``_gradient_accumulation_steps``, and the
    vectorized optimizers' ``_noise_multiplier`` and ``_l2_norm_clip``);
    this is the one place in the package that reads them.

    Raises:
        ValueError: for DP optimizers this accounting does not describe.
    """
    query = getattr(optimizer, "_dp_sum_query", None)
    if query is None:
        return None
    from tensorflow_privacy.privacy.dp_query.gaussian_query import (
        GaussianSumQuery,
    )
    name = type(optimizer).__name__
    if type(query) is not GaussianSumQuery:
        raise ValueError(
            f"The model's optimizer {name} uses a {type(query).__name__}; "
            "EpsilonCallback accounts only the Gaussian sum query of "
            "DPKerasSGDOptimizer and its siblings (DP-SGD).")
    accumulation = getattr(optimizer, "_gradient_accumulation_steps", 1)
    if accumulation != 1:
        raise ValueError(
            f"The model's optimizer {name} accumulates gradients over "
            f"gradient_accumulation_steps={accumulation} steps, so fit's "
            "steps are not its noised steps; EpsilonCallback cannot account "
            "that. Use gradient_accumulation_steps=1, or the package's "
            "engine with physical_batch_size=.")
    clip = float(query._l2_norm_clip)
    noise = float(query._stddev) / clip
    # The vectorized optimizers noise with their own copy of sigma and C;
    # should the two ever differ, account the smaller noise.
    own_noise = getattr(optimizer, "_noise_multiplier", None)
    own_clip = getattr(optimizer, "_l2_norm_clip", None)
    if own_noise is not None and own_clip is not None:
        # They clip at their own C and add own_noise * own_C: their
        # noise multiplier is own_noise itself.
        noise = min(noise, float(own_noise))
    return DPTraining(noise_multiplier=noise, l2_norm_clip=clip,
                      num_microbatches=optimizer._num_microbatches)


def dp_training(model):
    """How ``model`` trains privately: its engine, else the TF Privacy DP
    optimizer actually in use.

    Raises:
        ValueError: when neither runs the model's step.
    """
    state = get_dp_state(model)
    if state is not None and state.engine is not None:
        engine = state.engine
        return DPTraining(noise_multiplier=engine.noise_multiplier,
                          l2_norm_clip=engine.l2_norm_clip,
                          num_microbatches=engine.num_microbatches,
                          engine=engine)
    training = tf_privacy_training(getattr(model, "optimizer", None))
    if training is not None:
        return training
    raise ValueError(
        f"Model {model.name!r} does not train with DP-SGD: it has neither "
        "the package's clipping engine nor a TF Privacy DP optimizer "
        f"(its optimizer is {type(getattr(model, 'optimizer', None)).__name__}"
        "), so there is no epsilon to report. A model loaded from a file "
        "comes back as an ordinary Keras model: make it private again with "
        "make_private(model, l2_norm_clip=..., noise_multiplier=...) (or "
        "compile_dp) before fit.")


class EpsilonCallback(keras.callbacks.Callback):
    """Writes ``epsilon``, the privacy spent so far, into the logs each epoch.

    Because it edits the epoch-end ``logs``, History, CSVLogger, TensorBoard
    and the progress bar all see ``epsilon`` (put this callback before them in
    the list; Keras runs callbacks in order). Epsilon comes from
    dp_accounting's RDP accountant (or its PLD accountant, with
    ``accountant="pld"``) after the DP-SGD steps actually run at
    sampling rate ``batch_size / num_examples``; see
    :mod:`keras_tempered_dp.privacy.accounting` for what it assumes, in
    particular about Keras' shuffled fixed-size batches.

    It reports only what it can vouch for. Before training it refuses a
    model that has neither the package's engine nor a TF Privacy DP optimizer,
    a BatchNormalization layer anywhere in the model, an explicit
    ``noise_multiplier`` or ``used_microbatching=False`` that the model
    does not run, and a ``fit`` whose steps per epoch differ from the ones
    accounted. At each epoch's end it checks the steps actually run and,
    when the package's engine counts them, the steps and examples the
    engine saw: no more examples per step than ``batch_size`` (fixed-size
    batches), or a mean within statistical error of ``batch_size`` (Poisson
    sampling, i.e. an engine with ``expected_batch_size``). A disagreement
    raises an error naming both numbers; it never reports a smaller epsilon.

    Args:
        num_examples: the training set size N.
        batch_size: the batch size used by ``fit`` (the expected one under
            Poisson sampling).
        noise_multiplier: None (default) to read sigma from the model; a
            value given must equal what the model runs.
        delta: the delta of (epsilon, delta)-DP, below 1 / num_examples.
        sampling: "poisson" or "without_replacement" (the analysis).
        steps_per_epoch: steps in one epoch; by default
            ``steps_per_epoch(num_examples, batch_size)`` = ``ceil(N / B)``,
            what ``fit`` runs over arrays. ``fit`` must run this many.
        initial_steps: steps of this run taken before this ``fit`` with the
            same settings (resuming; under a schedule, its first epochs).
        used_microbatching: None to infer it from the model; False is
            refused for a model that clips microbatches of > 1 example.
        noise_schedule: a :class:`~keras_tempered_dp.privacy.schedules.
            NoiseSchedule`; by default the one a :class:`NoiseScheduler`
            callback put on the model, else a constant noise multiplier.
        previous_segments: :class:`~keras_tempered_dp.privacy.accounting.
            Segment` objects of earlier parts of the run that used other
            settings; composed before this run's steps.
        accountant: "rdp" (default) or "pld": the PLD accountant is tighter
            (a smaller epsilon for the same run) and costs about half a
            second per epoch; Poisson sampling only.

    Raises:
        ValueError: at construction for invalid arguments (delta >= 1/N
            included), before training for a model that does not run what
            is accounted.
        RuntimeError: at an epoch's end when training did not run what was
            accounted.

    Example:

    >>> cb = EpsilonCallback(num_examples=60000, batch_size=256,
    ...                      noise_multiplier=1.1)
    >>> round(cb.epsilon_after(steps=60 * 235), 2)
    2.6
    """

    def __init__(self, num_examples: int, batch_size: int,
                 noise_multiplier: float | None = None,
                 delta: float = 1e-5, sampling: str = "poisson",
                 steps_per_epoch: int | None = None,
                 initial_steps: int = 0,
                 used_microbatching: bool | None = None,
                 noise_schedule: NoiseSchedule | None = None,
                 previous_segments: Sequence[Segment] = (),
                 accountant: str = "rdp"):
        super().__init__()
        check = accounting
        self.num_examples, self.batch_size = check.check_run(num_examples,
                                                             batch_size)
        self.delta = check.check_delta(delta, self.num_examples)
        self.sampling = check.check_sampling(sampling)
        self.accountant = check.check_accountant(accountant, self.sampling)
        self.noise_multiplier = (
            None if noise_multiplier is None
            else check.check_noise_multiplier(noise_multiplier))
        self.steps_per_epoch = (
            check.steps_per_epoch(self.num_examples, self.batch_size)
            if steps_per_epoch is None else
            check.check_integer("steps_per_epoch", steps_per_epoch, 1))
        self.initial_steps = check.check_integer("initial_steps",
                                                 initial_steps)
        if used_microbatching not in (None, True, False):
            raise ValueError(f"used_microbatching={used_microbatching!r}: "
                             "must be None (inferred), True or False.")
        self.used_microbatching = used_microbatching
        if noise_schedule is not None and not callable(noise_schedule):
            raise ValueError(f"noise_schedule={noise_schedule!r}: must be a "
                             "NoiseSchedule (epoch -> noise multiplier).")
        if noise_schedule is not None and noise_multiplier is not None:
            raise ValueError("Give noise_multiplier= or noise_schedule=, "
                             "not both.")
        if noise_schedule is not None and used_microbatching:
            raise ValueError("Noise schedules need per-example clipping "
                             "(used_microbatching=False).")
        self.noise_schedule = noise_schedule
        self.previous_segments = tuple(previous_segments)
        for segment in self.previous_segments:
            if not isinstance(segment, Segment) or \
                    segment.sampling != self.sampling:
                raise ValueError(
                    f"previous_segments: {segment!r} must be a Segment with "
                    f"sampling={self.sampling!r} (one neighbouring relation "
                    "for the whole run).")
        self.steps = self.initial_steps
        # The batch hook only counts steps: Keras need not copy each step's
        # logs to NumPy for it (that would wait for every step).
        self._supports_tf_logs = True
        self._recorded = []  # one segment per epoch of every fit so far
        # The initial steps' segments, fixed when the first fit starts: the
        # noise of steps already taken must not follow later changes.
        self._initial = None
        self._engine = None
        self._counters = None
        self._last_batch = -1
        if noise_multiplier is not None or noise_schedule is not None:
            self.epsilon_after(self.initial_steps)  # validates them now

    # -- what the model runs ------------------------------------------------
    def _training(self):
        """The model's DP training, checked against what we were told."""
        training = dp_training(self.model)
        told = self.noise_multiplier
        if told is not None and not math.isclose(
                told, training.noise_multiplier, rel_tol=1e-6):
            raise ValueError(
                f"noise_multiplier={told!r} was given to EpsilonCallback but "
                f"the model trains with noise_multiplier="
                f"{training.noise_multiplier!r}; the epsilon would describe "
                "another training. Leave noise_multiplier= out: it is read "
                "from the model.")
        if self.used_microbatching is False and self._microbatching(
                training):
            raise ValueError(
                f"used_microbatching=False was given but the model clips "
                f"{training.num_microbatches} microbatches of a batch of "
                f"{self.batch_size} examples; leave used_microbatching= out.")
        return training

    def _microbatching(self, training):
        num = training.num_microbatches
        return num is not None and num < self.batch_size

    def _schedule(self):
        if self.noise_schedule is not None or self.model is None:
            return self.noise_schedule
        state = get_dp_state(self.model)
        return None if state is None else state.noise_schedule

    def _settings(self):
        """``(noise_multiplier, used_microbatching)`` of this run's steps."""
        if self.model is None:
            if self.noise_multiplier is None and self.noise_schedule is None:
                raise ValueError(
                    "noise_multiplier is unknown until the callback sees the "
                    "model; pass noise_multiplier= to ask before training.")
            return self.noise_multiplier, bool(self.used_microbatching)
        training = self._training()
        return (training.noise_multiplier,
                bool(self.used_microbatching) or self._microbatching(
                    training))

    def _run_segments(self, steps, first_epoch=0):
        """This run's first ``steps`` steps as Segments, under its settings."""
        schedule = self._schedule()
        if schedule is not None:
            if self.model is not None and self._settings()[1]:
                raise ValueError(
                    "A noise schedule with microbatches of more than one "
                    "example is not accounted (the analysis halves sigma "
                    "for microbatches); use per-example clipping.")
            return schedule_segments(
                self.num_examples, self.batch_size, schedule,
                steps_per_epoch=self.steps_per_epoch, steps=steps,
                sampling=self.sampling, first_epoch=first_epoch)
        if steps == 0:
            return []
        noise, micro = self._settings()
        return [Segment(self.num_examples, self.batch_size, steps, noise,
                        self.sampling, micro)]

    def epsilon_after(self, steps):
        """Epsilon after ``steps`` steps of this run (the previous segments
        included), assuming the run's settings."""
        steps = accounting.check_integer("steps", steps)
        return compose_epsilon(
            self.previous_segments + tuple(self._run_segments(steps)),
            delta=self.delta, sampling=self.sampling,
            accountant=self.accountant)

    def segments(self):
        """Every :class:`Segment` accounted so far: the previous segments,
        the initial steps and each epoch of this fit (adjacent ones with the
        same settings merged). Store ``[dataclasses.asdict(s) for s in
        callback.segments()]`` in a checkpoint to resume with other
        settings."""
        initial = (self._initial if self._initial is not None
                   else tuple(self._run_segments(self.initial_steps)))
        return accounting.merge_segments(
            list(self.previous_segments) + list(initial) + self._recorded)

    # -- Keras hooks -------------------------------------------------------
    def on_train_begin(self, logs=None):
        check_dp_trainable(self.model)
        training = self._training()
        fit_steps = (self.params or {}).get("steps")
        if fit_steps is not None and fit_steps != self.steps_per_epoch:
            raise ValueError(
                f"fit runs {fit_steps} steps per epoch but EpsilonCallback "
                f"accounts steps_per_epoch={self.steps_per_epoch} "
                f"(num_examples={self.num_examples}, batch_size="
                f"{self.batch_size}); give "
                "the callback the num_examples, batch_size and "
                "steps_per_epoch that fit uses.")
        self._engine = training.engine
        if self._initial is None:
            self._initial = tuple(self._run_segments(self.initial_steps))
        # The constant noise accounted for this fit: what the model runs now.
        self._noise_at_start = training.noise_multiplier
        self._microbatching_at_start = (bool(self.used_microbatching)
                                        or self._microbatching(training))
        # Nothing is reset: a second fit with this callback adds its steps.

    def on_epoch_begin(self, epoch, logs=None):
        self._last_batch = -1
        self._counters = self._read_counters()

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch = batch  # Keras passes the step's index in the epoch

    def on_epoch_end(self, epoch, logs=None):
        ran = self._last_batch + 1
        if ran > self.steps_per_epoch:
            raise RuntimeError(
                f"fit ran {ran} steps in epoch {epoch} but EpsilonCallback "
                f"accounts steps_per_epoch={self.steps_per_epoch}; epsilon "
                "for this epoch is not reported.")
        self._check_engine_counts(epoch, ran)
        sigma = self._check_engine_noise(epoch)
        if ran:
            self._recorded.append(Segment(
                self.num_examples, self.batch_size, ran, sigma,
                self.sampling, self._microbatching_at_start))
        self.steps += ran
        if logs is not None:
            logs["epsilon"] = compose_epsilon(
                self.segments(), delta=self.delta, sampling=self.sampling,
                accountant=self.accountant)

    # -- checks of what ran -----------------------------------------------
    def _read_counters(self):
        engine = self._engine
        steps = getattr(engine, "steps_taken", None)
        examples = getattr(engine, "examples_seen", None)
        if steps is None or examples is None:
            return None  # an engine without counters, or TF Privacy
        return int(steps.numpy()), int(examples.numpy())

    def _check_engine_counts(self, epoch, ran):
        before, after = self._counters, self._read_counters()
        if before is None or after is None:
            return
        steps, examples = after[0] - before[0], after[1] - before[1]
        if steps != ran:
            raise RuntimeError(
                f"The clipping engine counted {steps} DP-SGD steps in epoch "
                f"{epoch} but fit ran {ran}; epsilon for this epoch is not "
                "reported.")
        told = steps * self.batch_size
        if getattr(self._engine, "expected_batch_size", None) is None:
            if examples > told:
                raise RuntimeError(
                    f"The clipping engine saw {examples} examples in "
                    f"{steps} steps of epoch {epoch}, more than batch_size="
                    f"{self.batch_size} per step ({told}): fit's batches are "
                    "larger than the callback was told, which would "
                    "understate epsilon. Give EpsilonCallback the "
                    "batch_size fit uses.")
            return
        q = self.batch_size / self.num_examples
        tolerance = POISSON_TOLERANCE_SDS * math.sqrt(
            steps * self.num_examples * q * (1 - q)) + 1
        if abs(examples - told) > tolerance:
            raise RuntimeError(
                f"The clipping engine saw {examples} examples in {steps} "
                f"Poisson-sampled steps of epoch {epoch}, a mean of "
                f"{examples / max(steps, 1):.1f} per step, but the callback "
                f"was told batch_size={self.batch_size} of num_examples="
                f"{self.num_examples} (expected {told} +- {tolerance:.0f}). "
                "Give EpsilonCallback the num_examples and batch_size the "
                "sampler uses.")

    def _check_engine_noise(self, epoch):
        """The noise of this epoch, checked to be what the accounting
        assumes: a lower noise than accounted would make epsilon a lie."""
        schedule = self._schedule()
        state = get_dp_state(self.model)
        applied = None if state is None else state.noise_schedule
        if (self.noise_schedule is not None and applied is not None
                and applied != self.noise_schedule):
            raise RuntimeError(
                f"noise_schedule={self.noise_schedule!r} was given to "
                f"EpsilonCallback but a NoiseScheduler applies {applied!r}; "
                "leave noise_schedule= out: it is read from the model.")
        assumed = (schedule(epoch) if schedule is not None
                   else self._noise_at_start)
        engine = self._engine
        # TF Privacy's optimizers fix their noise when built.
        running = (engine.noise_multiplier if engine is not None
                   else self._noise_at_start)
        if running < assumed * (1 - 1e-6):
            raise RuntimeError(
                f"The engine's noise multiplier is {running}"
                f" at epoch {epoch}, below the {assumed} the epsilon "
                "accounting assumes. Change the noise only through a "
                "NoiseScheduler callback (or pass its schedule as "
                "noise_schedule=). The model's weights are intact; epsilon "
                "for this epoch is not reported.")
        return assumed


class NoiseScheduler(keras.callbacks.Callback):
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
        if state.engine.num_microbatches is not None:
            raise ValueError(
                "NoiseScheduler needs per-example clipping: with "
                f"num_microbatches={state.engine.num_microbatches} one "
                "example can move a microbatch's mean by 2C, which the "
                "schedule's accounting does not halve sigma for. Use "
                "num_microbatches=None.")
        state.noise_schedule = self.schedule

    def on_epoch_begin(self, epoch, logs=None):
        get_dp_state(self.model).engine.noise_multiplier = self.schedule(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["noise_multiplier"] = get_dp_state(
                self.model).engine.noise_multiplier

"""Keras callbacks: the privacy budget spent, written into the logs.

:class:`EpsilonCallback` is a thin reporter: the steps are recorded by the
model's step (:mod:`keras_tempered_dp.privacy.clipping.backend.tensorflow.step_record`), kept
in the model's ledger (:mod:`keras_tempered_dp.privacy.ledger`), checked by
pure functions (:mod:`keras_tempered_dp.privacy.step_checks`); the callback
declares each ``fit``'s data and writes the ledger's epsilon into the logs.
"""

import dataclasses
import math
import warnings
import weakref
from collections.abc import Sequence

import keras

from keras_tempered_dp.privacy import accounting, recording
from keras_tempered_dp.privacy.accounting import Segment, compose_epsilon
from keras_tempered_dp.privacy.checks import check_dp_trainable
from keras_tempered_dp.privacy.fit_data import current_fit_data, fit_frame
from keras_tempered_dp.privacy.ledger import Unattributed
from keras_tempered_dp.privacy.recording import FitContext, privacy_ledger
from keras_tempered_dp.privacy.schedules import NoiseSchedule, schedule_segments
from keras_tempered_dp.privacy.state import (
    engine_of,
    get_dp_state,
    ledger_slot,
)
from keras_tempered_dp.privacy.step_checks import (
    check_epoch_steps,
    check_examples,
    check_fit_data,
    check_fit_steps,
    check_recorded_steps,
)


def _to_int(value):
    """A counter as an int: a TensorFlow variable or tensor (its
    ``numpy()``; under a tf.distribute strategy ``np.asarray`` fails on
    it) or the JAX engine's NumPy integer."""
    return int(value.numpy() if hasattr(value, "numpy") else value)


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
    """Writes ``epsilon``, the privacy the model has spent, into the logs
    each epoch.

    Epsilon is the composition of every DP-SGD step the model has taken,
    read from the model's own ledger
    (:func:`~keras_tempered_dp.privacy.recording.privacy_ledger`): steps of
    earlier ``fit`` calls included, whatever callbacks they had, with the
    noise multiplier each step really used (the engine's step records it;
    a TF Privacy optimizer's is fixed when it is built). A callback created
    late, listed in any order, or used for a second ``fit`` reports the
    same number. Because it edits the epoch-end ``logs``, History,
    CSVLogger, TensorBoard and the progress bar all see ``epsilon`` (put it
    before them in the list; Keras runs callbacks in order). Epsilon comes
    from dp_accounting's RDP accountant (or its PLD accountant, with
    ``accountant="pld"``) at sampling rate ``batch_size / num_examples``;
    see :mod:`keras_tempered_dp.privacy.accounting` for what it assumes, in
    particular about Keras' shuffled fixed-size batches.

    What the callback adds to the ledger is the data of this ``fit``: N,
    the batch size and the sampling scheme of its steps. It checks them
    before the first step against ``fit``'s own data
    (:mod:`keras_tempered_dp.privacy.fit_data`): Poisson-sampled batches
    need a step that divides by the expected batch size (and the reverse),
    N must not exceed the arrays ``fit`` trains on, and ``fit``'s steps per
    epoch must be the ones accounted. At each epoch's end it checks the
    steps the engine (or the optimizer) counted and the examples it saw
    (:mod:`keras_tempered_dp.privacy.step_checks`). A disagreement raises an
    error naming both numbers; it never reports a smaller epsilon.

    Args:
        num_examples: the training set size N.
        batch_size: the batch size used by ``fit`` (the expected one under
            Poisson sampling).
        noise_multiplier: None (default) to read sigma from the model; a
            value given must equal what the model runs now.
        delta: the delta of (epsilon, delta)-DP, below 1 / num_examples.
        sampling: "poisson" or "without_replacement" (the analysis).
        steps_per_epoch: steps in one epoch; by default
            ``steps_per_epoch(num_examples, batch_size)`` = ``ceil(N / B)``,
            what ``fit`` runs over arrays. ``fit`` must run this many.
        initial_steps: steps taken before the model had a ledger (a model
            restored from weights alone), with this callback's settings
            (under a schedule, its first epochs); refused when the model's
            ledger already records steps.
        used_microbatching: None to infer it from the model; False is
            refused for a model that clips microbatches of > 1 example.
        noise_schedule: a :class:`~keras_tempered_dp.privacy.schedules.
            NoiseSchedule` for :meth:`epsilon_after` and ``initial_steps``;
            by default the one a :class:`NoiseScheduler` callback put on
            the model. The steps that run are accounted at the noise they
            used, schedule or not.
        previous_segments: :class:`~keras_tempered_dp.privacy.accounting.
            Segment` objects of earlier parts of the run that the model's
            ledger does not hold (like ``initial_steps``); added to it when
            training starts.
        accountant: "rdp" (default) or "pld": the PLD accountant is tighter
            (a smaller epsilon for the same run) and costs about half a
            second per epoch; Poisson sampling only.

    Raises:
        ValueError: at construction for invalid arguments (delta >= 1/N
            included), before training for a model or data that does not
            run what is accounted.
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
        # The models whose ledger got this callback's earlier steps (once).
        self._declared = weakref.WeakSet()
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
        """``steps`` planned steps as Segments, under the run's settings."""
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
        included), assuming the run's settings: a plan, before training.
        What was spent is :meth:`epsilon`."""
        steps = accounting.check_integer("steps", steps)
        return compose_epsilon(
            self.previous_segments + tuple(self._run_segments(steps)),
            delta=self.delta, sampling=self.sampling,
            accountant=self.accountant)

    def _ledger(self):
        if self.model is None:
            raise ValueError("The callback has not seen a model yet: it "
                             "reports the model's ledger once fit starts.")
        return privacy_ledger(self.model)

    def epsilon(self):
        """Epsilon of every step the model has taken (its ledger)."""
        return self._ledger().epsilon(delta=self.delta,
                                      accountant=self.accountant,
                                      sampling=self.sampling)

    def segments(self):
        """The model's ledger: every :class:`Segment` it spent, adjacent
        equal ones merged. ``[dataclasses.asdict(s) for s in ...]``
        rebuilds with ``Segment(**d)``."""
        return self._ledger().segments

    # -- Keras hooks -------------------------------------------------------
    def on_train_begin(self, logs=None):
        check_dp_trainable(self.model)
        training = self._training()
        check_fit_steps((self.params or {}).get("steps"),
                        self.steps_per_epoch, self.num_examples,
                        self.batch_size)
        self._engine = training.engine
        count = getattr(self._engine, "nonfinite_examples", None)
        self._nonfinite = 0 if count is None else _to_int(count)
        micro = bool(self.used_microbatching) or self._microbatching(
            training)
        expected = getattr(self._engine, "expected_batch_size", None)
        check_fit_data(
            current_fit_data(self.model), num_examples=self.num_examples,
            batch_size=self.batch_size, sampling=self.sampling,
            expected_batch_size=expected,
            divides_by_drawn_size=(expected is None and (
                self._engine is None
                or self._engine.num_microbatches is None)))
        # Steps recorded before this fit ran without a declared context.
        recording.drain(self.model)
        slot = ledger_slot(self.model)
        if self._engine is None:
            self._unseen_tf_privacy_steps(slot, training)
        slot.ledger.check_attributed()  # before a step, not after it
        context = FitContext(self.num_examples, self.batch_size,
                             self.sampling, micro, fit_frame(self.model))
        live = recording.live_context(slot)
        if live is not None and live != context:
            raise ValueError(
                f"Two epsilon callbacks in one fit declare different data "
                f"({live} and {context}); give them the same "
                "num_examples, batch_size and sampling.")
        if self.model not in self._declared and (
                self.initial_steps or self.previous_segments) \
                and slot.ledger.steps:
            raise ValueError(
                f"initial_steps={self.initial_steps} / previous_segments= "
                f"declare steps taken before the model had a ledger, but "
                f"its ledger already records {slot.ledger.steps} steps "
                "(epsilon already covers them). Leave them out.")
        if live is None:
            slot.context = context
        self._noise_at_start = training.noise_multiplier
        self._iterations = self._optimizer_iterations()

    def on_epoch_begin(self, epoch, logs=None):
        if self.model not in self._declared:
            # Here, not in on_train_begin: every callback's on_train_begin
            # has run (a NoiseScheduler's too), so the schedule is known
            # whatever the callbacks' order.
            ledger = ledger_slot(self.model).ledger
            for segment in self.previous_segments + tuple(
                    self._run_segments(self.initial_steps)):
                ledger.record(segment)
            self._declared.add(self.model)
        self._last_batch = -1
        self._counters = self._read_counters()
        self._iterations = self._optimizer_iterations()

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch = batch  # Keras passes the step's index in the epoch

    def on_epoch_end(self, epoch, logs=None):
        ran = self._last_batch + 1
        check_epoch_steps(epoch, ran, self.steps_per_epoch)
        self._check_schedule()
        if self._engine is not None:
            after = self._read_counters()

            def check(drained):
                # Before the steps are attributed: steps that did not run
                # as declared are kept unattributed, never accounted at the
                # declared batch size. Another drain this epoch (a second
                # epsilon callback, a save) may have taken some of them.
                if drained.steps > ran:
                    check_recorded_steps(epoch, ran, drained.steps)
                if self._counters is not None:
                    check_recorded_steps(epoch, ran,
                                         after[0] - self._counters[0])
                    check_examples(
                        epoch, steps=ran,
                        examples=after[1] - self._counters[1],
                        max_examples=drained.max_examples,
                        batch_size=self.batch_size,
                        num_examples=self.num_examples,
                        poisson=self._engine.expected_batch_size is not None)
            recording.drain(self.model, check=check)
            self._counters = after
            self._warn_nonfinite(epoch)
        else:
            self._record_tf_privacy(epoch, ran)
        self.steps += ran
        if logs is not None:
            logs["epsilon"] = self.epsilon()

    def on_train_end(self, logs=None):
        slot = ledger_slot(self.model)
        if slot.context is not None:
            recording.drain(self.model)
            slot.context = None

    # -- checks of what ran -----------------------------------------------
    def _optimizer_iterations(self):
        iterations = getattr(getattr(self.model, "optimizer", None),
                             "iterations", None)
        return None if iterations is None else _to_int(iterations)

    def _record_tf_privacy(self, epoch, ran):
        """A TF Privacy optimizer: its steps, checked against its own
        iteration counter, at the noise it was built with."""
        before, after = self._iterations, self._optimizer_iterations()
        training = dp_training(self.model)
        sigma = min(training.noise_multiplier, self._noise_at_start)
        slot = ledger_slot(self.model)
        try:
            if before is not None and after is not None:
                check_recorded_steps(epoch, ran, after - before,
                                     what="The optimizer")
        except RuntimeError:
            slot.ledger.record_unattributed(Unattributed(sigma, ran))
            raise
        finally:
            self._iterations = after
            slot.optimizer_iterations = after
        slot.ledger.record(slot.context.segment(ran, sigma))

    def _unseen_tf_privacy_steps(self, slot, training):
        """A TF Privacy optimizer's iterations no epsilon callback saw (a
        fit without one, train_on_batch, a loop): kept unattributed."""
        iterations = self._optimizer_iterations()
        if iterations is None:
            return
        seen = slot.optimizer_iterations or 0
        if iterations > seen:
            slot.ledger.record_unattributed(Unattributed(
                training.noise_multiplier, iterations - seen))
        slot.optimizer_iterations = iterations

    def _warn_nonfinite(self, epoch):
        """Says when examples were left out for a non-finite loss or
        gradient (each then added zero to its step: the guarantee holds;
        docs/sharp_edges.md)."""
        count = getattr(self._engine, "nonfinite_examples", None)
        if count is None:
            return
        count, before = _to_int(count), getattr(self, "_nonfinite", 0)
        self._nonfinite = count
        if count > before:
            warnings.warn(
                f"Epoch {epoch}: {count - before} examples had a non-finite "
                "loss or gradient (NaN or inf inputs, labels that are not "
                "class indices, overflow) and were left out of their steps "
                "(clip factor 0: epsilon is unchanged). Repair the data; "
                "engine.nonfinite_examples counts them.", RuntimeWarning,
                stacklevel=2)

    def _read_counters(self):
        engine = self._engine
        steps = getattr(engine, "steps_taken", None)
        examples = getattr(engine, "examples_seen", None)
        if steps is None or examples is None:
            return None  # an engine without counters, or TF Privacy
        return _to_int(steps), _to_int(examples)

    def _check_schedule(self):
        state = get_dp_state(self.model)
        applied = None if state is None else state.noise_schedule
        if (self.noise_schedule is not None and applied is not None
                and applied != self.noise_schedule):
            raise RuntimeError(
                f"noise_schedule={self.noise_schedule!r} was given to "
                f"EpsilonCallback but a NoiseScheduler applies {applied!r}; "
                "leave noise_schedule= out: it is read from the model.")


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
        engine = engine_of(
            self.model, "NoiseScheduler needs the package's clipping engine "
            "(compile_dp(..., optimizer='fast') or make_private); TF "
            "Privacy's optimizers fix their noise when built.")
        if engine.num_microbatches is not None:
            raise ValueError(
                "NoiseScheduler needs per-example clipping: with "
                f"num_microbatches={engine.num_microbatches} one "
                "example can move a microbatch's mean by 2C, which the "
                "schedule's accounting does not halve sigma for. Use "
                "num_microbatches=None.")
        get_dp_state(self.model).noise_schedule = self.schedule

    def on_epoch_begin(self, epoch, logs=None):
        get_dp_state(self.model).engine.noise_multiplier = self.schedule(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["noise_multiplier"] = get_dp_state(
                self.model).engine.noise_multiplier

"""The clipping engine: exact DP-SGD steps at a few times ordinary cost.

One step, for a batch of B examples split into G groups (G = B unless
microbatches are asked for):

1. forward pass with every trainable layer tapped (:mod:`.tap`);
2. one backward pass of the summed per-example loss to the taps' outputs:
   ``dz`` for every layer, no weight gradients yet;
3. per-group squared gradient norms, layer by layer (:mod:`...core.registry`),
   summed over layers: ``||g_m||^2`` for the whole model;
4. clip factors ``c_m = C / max(||g_m||, C)``, exactly TF Privacy's
   ``clip_by_global_norm``;
5. weight gradients of each layer from its inputs and ``dz`` weighted per
   example by ``c_m / |group m|``: the sum of clipped group gradients;
6. Gaussian noise of std ``noise_multiplier * C`` added once, division by G
   (or by the expected batch size under Poisson sampling), optimizer step.

Steps 2 to 5 cost about one ordinary backward pass plus the norms, instead
of one backward pass per example.

Beyond the paper (De et al. 2022; a sound Auto DP-SGD):

* ``augmentation_multiplicity=K``: each example is repeated K times and
  augmented; the K copies form one group (:mod:`...core.groups`), so step
  4 clips the *mean* gradient over an example's copies and the sensitivity is
  unchanged;
* ``clipping="normalize"``: factors ``C / (||g_m|| + gamma)`` instead of
  ``C / max(||g_m||, C)`` (per-example normalization, Bu et al. 2022): every
  contribution has norm below C, nothing to tune but gamma;
* ``physical_batch_size=P``: the (logical) batch is processed in chunks of
  P examples whose clipped sums are accumulated; noise is added once, to the
  whole logical batch's sum, so the update equals the one-batch update;
* the noise multiplier is a variable: a schedule (or anything else) may
  change it between steps; every step records the sigma it used
  (:mod:`.step_record`), and the model's ledger composes exactly those
  (:mod:`keras_tempered_dp.privacy.ledger`);
* ``clipping="quantile"``: the clip norm follows a privately estimated
  quantile of the per-example norms (Andrew et al. 2021), at no extra
  privacy cost (:mod:`.quantile`).

Where each part lives: :mod:`.clipped_sum` (steps 1 to 5),
:mod:`.accumulation`, :mod:`.noise`, :mod:`.quantile`,
:mod:`...core.groups`, :mod:`.installation`; the settings are
:class:`~keras_tempered_dp.privacy.config.EngineOptions`.
"""

import keras
import tensorflow as tf

from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.validation import check_number
from ...core.engine_base import EngineBase, checked_settings
from ...core.groups import GroupsOf, groups_with_weight
from .. import engine_class
from . import installation, noise, quantile, replicas, strategies
from .accumulation import accumulated
from .batches import augmented_copies, Batch, repeat_rows
from .clipped_sum import clipped_sum
from .step_record import Drained, StepRecord
from .tap import find_taps


class ClippingEngine(EngineBase):
    """Runs DP-SGD steps for one Keras model; install with :meth:`install`.

    The settings are read-only once validated. Two values change on
    purpose: ``noise_multiplier`` (assign it; noise schedules do, each
    epoch) and ``l2_norm_clip`` (with ``clipping="quantile"`` it adapts
    every step; assign it only to restore a saved run's adapted clip).

    Args:
        l2_norm_clip: C, a finite number > 0.
        noise_multiplier: sigma >= 0; the noise std is ``sigma * C``.
        num_microbatches: None (per-example clipping) or G dividing every
            batch; each microbatch's mean gradient is clipped, as in TF
            Privacy.
        expected_batch_size: divide the noised sum by this instead of the
            batch's size (Poisson sampling, where batch sizes vary).
        seed: seeds the noise generator; None draws the seed from the
            operating system. The generator's state advances every step, so
            every step gets fresh noise.
        options: the :class:`~keras_tempered_dp.privacy.config.
            EngineOptions` (clipping mode, augmentation multiplicity,
            physical batch size, quantile clipping); None: the defaults.

    Attributes:
        steps_taken, examples_seen: int64 counters of what ``fit`` really
            ran (:meth:`train_step`); ``compute_gradients`` called by hand
            does not count.

    Raises:
        ValueError: for a bad value or combination, naming it.

    Example: a logical batch of 8 in chunks of 4, each example's gradient
    averaged over 2 augmented copies, normalized rather than clipped.

    >>> from keras_tempered_dp.models import digits_cnn
    >>> from keras_tempered_dp.privacy.config import EngineOptions
    >>> model = digits_cnn()
    >>> model.compile(optimizer=keras.optimizers.SGD(0.5),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(
    ...         from_logits=True))
    >>> options = EngineOptions(clipping="normalize",
    ...     augmentation_multiplicity=2, physical_batch_size=4)
    >>> engine = ClippingEngine(1.0, 1.1, options=options)
    >>> _ = engine.install(model)
    >>> history = model.fit(tf.zeros([8, 8, 8, 1]), tf.zeros([8]),
    ...                     batch_size=8, verbose=0)
    >>> int(engine.steps_taken), int(engine.examples_seen)
    (1, 8)
    """

    def __new__(cls, *args, **kwargs):
        # On Keras 3's JAX backend the same arguments build the JAX
        # engine (privacy/clipping/backend); on PyTorch a refusal.
        if cls is ClippingEngine and engine_class() is not ClippingEngine:
            return engine_class()(*args, **kwargs)
        return super().__new__(cls)

    @classmethod
    def from_config(cls, config, *, expected_batch_size=None, options=None):
        """The engine of a :class:`~keras_tempered_dp.privacy.config.
        DPConfig`, already validated where it was made (compile_dp's and
        make_private's path): its clip, noise, microbatches and seed."""
        if cls is ClippingEngine and engine_class() is not ClippingEngine:
            return engine_class().from_config(
                config, expected_batch_size=expected_batch_size,
                options=options)
        return super().from_config(config, expected_batch_size=
                                   expected_batch_size, options=options)

    def _setup(self, config, expected_batch_size, options):
        self._options, self._expected_batch_size = checked_settings(
            config, expected_batch_size, options)
        self._num_microbatches = config.num_microbatches
        options = self._options
        self._count_stddev = (
            options.quantile.count_stddev_for(self._expected_batch_size)
            if options.clipping == "quantile" else None)
        if self._count_stddev is not None:
            quantile.check_noise_split(config.noise_multiplier,
                                       self._count_stddev)
        self._seed = config.noise_seed
        self._strategy = tf.distribute.get_strategy()
        self._pending = []  # drained when the variables moved
        self._make_variables(config.l2_norm_clip, config.noise_multiplier,
                             seed=self._seed)
        self._model = self._loss_fn = None
        self._canaries = None

    def _make_variables(self, l2_norm_clip, noise_multiplier, seed=None,
                        source=None, steps=0, examples=0, nonfinite=0):
        """The engine's variables, in ``self._strategy``'s scope.

        Under a tf.distribute strategy they must be made in its scope: the
        counters and the clip are updated in replica context (hence their
        aggregation), and a generator made there gives every replica its
        own stream (:mod:`.replicas`). A ``source`` generator is split, not
        copied: its draws are never repeated (a draw repeated in two updates
        would cancel from their difference).
        """
        only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        with self._strategy.scope():
            self._clip = tf.Variable(l2_norm_clip, trainable=False,
                                     dtype=tf.float32, name="l2_norm_clip",
                                     aggregation=only_first)
            self._noise = noise.NoiseMultiplier(noise_multiplier)
            if source is not None:
                self._generator = source.split(1)[0]
            elif seed is None:
                self._generator = \
                    tf.random.Generator.from_non_deterministic_state()
            else:
                self._generator = tf.random.Generator.from_seed(seed)
            # Augmentation draws from its own stream: the noise stays the
            # same whether or not the data is augmented.
            self._augment_generator = self._generator.split(1)[0]
            self._steps_taken = tf.Variable(
                steps, trainable=False, dtype=tf.int64, name="steps_taken",
                aggregation=only_first)
            self._examples_seen = tf.Variable(
                examples, trainable=False, dtype=tf.int64,
                name="examples_seen",
                aggregation=tf.VariableAggregation.SUM)
            self._nonfinite_examples = tf.Variable(
                nonfinite, trainable=False, dtype=tf.int64,
                name="nonfinite_examples",
                aggregation=tf.VariableAggregation.SUM)
        self._record = StepRecord(self._strategy)

    def _move_to(self, strategy):
        """Remakes the variables in ``strategy``'s scope (the model's, when
        the engine was made outside it), values kept, the streams split."""
        if strategy is self._strategy:
            return
        self._strategy = strategy
        self._pending.append(self._record.drain())
        nominal = self._noise.nominal
        self._make_variables(
            self.l2_norm_clip, self.noise_multiplier,
            source=self._generator, steps=self._steps_taken.numpy(),
            examples=self._examples_seen.numpy(),
            nonfinite=self._nonfinite_examples.numpy())
        self._noise.nominal.update(nominal)

    # -- settings (read-only) --------------------------------------------
    options = property(lambda self: self._options,
                       doc="The :class:`EngineOptions`.")
    clipping = property(lambda self: self._options.clipping,
                        doc='"clip", "normalize" or "quantile".')
    augmentation_multiplicity = property(
        lambda self: self._options.augmentation_multiplicity,
        doc="K, the augmented copies per example.")
    num_microbatches = property(lambda self: self._num_microbatches)
    expected_batch_size = property(lambda self: self._expected_batch_size)
    seed = property(lambda self: self._seed)
    model = property(lambda self: self._model,
                     doc="The model installed on, or None.")
    steps_taken = property(
        lambda self: self._steps_taken.read_value(),
        doc="Optimizer steps run by ``fit`` / ``train_on_batch`` (int64).")
    nonfinite_examples = property(
        lambda self: self._nonfinite_examples.read_value(),
        doc="Examples (groups) left out of a step because their loss or "
            "gradient was not finite: clip factor 0, a zero contribution "
            "(docs/sharp_edges.md). Exact, not noised: a debugging count.")
    examples_seen = property(
        lambda self: self._examples_seen.read_value(),
        doc="Examples of sample weight > 0 in those steps, each counted "
            "once (not per augmented copy), over the logical batch (int64).")

    @property
    def l2_norm_clip(self):
        """C of the next step (adapted each step with "quantile").

        Assigning it restores an adapted clip when a run resumes; it is not
        a setting to change during training.
        """
        return float(self._clip.numpy())

    @l2_norm_clip.setter
    def l2_norm_clip(self, value):
        self._clip.assign(check_number("l2_norm_clip", value, low=0,
                                       low_open=True))

    @property
    def noise_multiplier(self):
        """sigma of the next step; assigning it takes effect at once."""
        return self._noise.value

    @noise_multiplier.setter
    def noise_multiplier(self, value):
        value = check_number("noise_multiplier", value, low=0)
        if self._count_stddev is not None:
            quantile.check_noise_split(value, self._count_stddev)
        self._noise.assign(value)

    def drain_record(self):
        """The steps recorded since the last drain (:mod:`.step_record`),
        each run's sigma mapped back to the exact value assigned; the
        record is empty afterwards. The model's ledger calls this
        (:func:`keras_tempered_dp.privacy.recording.drain`)."""
        parts = self._pending + [self._record.drain()]
        self._pending = []
        runs = []
        for part in parts:
            for stored, steps in part.runs:
                sigma = self._noise.nominal_value(stored)
                if runs and runs[-1][0] == sigma:
                    runs[-1] = (sigma, runs[-1][1] + steps)
                else:
                    runs.append((sigma, steps))
        return Drained(tuple(runs), max(p.max_examples for p in parts),
                       sum(p.merged_steps for p in parts))

    def gradient_noise_multiplier(self, noise_multiplier=None):
        """sigma_g: the gradient's share of the step's noise multiplier.

        Equal to sigma (as stored: rounded up to float32) except with
        ``clipping="quantile"``, where the count release takes its share:
        ``(sigma^-2 - (2 s_b)^-2)^(-1/2)`` (in float64).
        """
        sigma = (self._noise.variable if noise_multiplier is None
                 else tf.convert_to_tensor(noise_multiplier, tf.float32))
        if self.clipping != "quantile":
            return tf.identity(sigma)
        return quantile.gradient_noise_multiplier(sigma, self._count_stddev)

    # -- installation -----------------------------------------------------
    def install(self, model, config=None):
        """Makes ``model.fit`` (and ``train_on_batch``) use this engine.

        The model must be compiled and free of batch-mixing layers. Only
        the instance's ``train_step`` is replaced: the model saves and loads
        as an ordinary Keras model. ``config`` (a
        :class:`~keras_tempered_dp.privacy.config.DPConfig`) is recorded in
        the model's :class:`~keras_tempered_dp.privacy.state.DPState`; by
        default one is made from this engine's settings.

        Raises:
            ValueError: uncompiled model, batch-mixing layers, tied weights,
                weights outside leaf layers.
        """
        installation.check_installable(model)
        # An unbuilt model has no weights to tap yet: its taps are found
        # when a step is traced (_tapped).
        if model.built:
            find_taps(model)  # refuses untappable models now
        strategies.refuse_untested(model.distribute_strategy)
        self._move_to(model.distribute_strategy)
        self._model = model
        self._loss_fn = per_example_loss(model.loss)
        self._installed_loss = model.loss
        if self._options.physical_batch_size is not None:
            installation.without_xla(model)
        installation.replace_train_step(model, self.train_step)
        return self._attach(model, config)

    # -- one step ---------------------------------------------------------
    def _chunk_sum(self, batch):
        """The clipped sum of one (physical) batch, augmented first."""
        k = self._options.augmentation_multiplicity
        batch = augmented_copies(batch, k, self._options.augment,
                                 self._augment_generator)
        groups = GroupsOf(k) if k > 1 else replicas.local_groups(
            self._num_microbatches, replicas.count())
        return clipped_sum(self._model, self._tapped(batch.x),
                           self._loss_fn, batch,
                           groups, tf.identity(self._clip), self._options)

    def _tapped(self, x):
        """The taps, found and checked again at every trace.

        The install-time checks saw the model as it was then: a model unbuilt
        at install (a subclassed model creating its layers in ``build``) had
        no layers to check, and layers may be added after install. Tracing
        happens once per input signature, so this costs nothing per step.
        """
        installation.build(self._model, x)
        installation.check_installable(self._model)
        if self._model.loss is not self._installed_loss:
            # model.compile(loss=...) after install: Keras retraces the
            # step, and the step must differentiate the loss the logs show.
            self._loss_fn = per_example_loss(self._model.loss)
            self._installed_loss = self._model.loss
        return find_taps(self._model)

    def _denominator(self, batch):
        """D, for the global batch (all replicas' rows)."""
        if self._expected_batch_size is not None:
            return tf.constant(self._expected_batch_size)
        if self._num_microbatches:
            return tf.constant(float(self._num_microbatches))
        # One group per (original, unaugmented) example.
        return replicas.total(tf.cast(batch.rows(), tf.float32))

    def _noised_gradients(self, batch):
        """The noised, averaged gradient, the outputs of the rows seen and
        the sigma the step used (one read of the variable, for both the
        noise and the record)."""
        installation.refuse_regularization_losses(self._model)
        sigma = self._noise.variable.read_value()
        size = self._options.physical_batch_size
        total = (self._chunk_sum(batch) if size is None else
                 accumulated(self._chunk_sum, batch, size, self._model))
        # This replica's share of the step's noise (:mod:`.replicas`).
        stddev = replicas.share_stddev(
            noise.noise_stddev(self.gradient_noise_multiplier(sigma),
                               tf.identity(self._clip)), replicas.count())
        sums = total.sums
        if self._canaries is not None:  # an audit (keras_tempered_dp.audit)
            sums = self._canaries.inject(sums, tf.identity(self._clip))
        noised = noise.noised_sums(sums, stddev, self._generator)
        if self._canaries is not None:
            self._canaries.observe(noised, total.sums)
        denominator = self._denominator(batch)
        grads = [g / tf.cast(denominator, g.dtype) for g in noised]
        if self.clipping == "quantile":
            # After the noise: this step used the clip it clipped with.
            with tf.control_dependencies(grads):
                quantile.adapt_clip(
                    self._clip, total.below, total.counted,
                    self._options.quantile, self._count_stddev,
                    self._expected_batch_size, self._generator)
        return grads, total.y_pred, sigma, total.nonfinite

    @property
    def canaries(self):
        """The :class:`~keras_tempered_dp.audit.gradient_canaries.
        GradientCanaries` an audit injects into every step, or None.

        Set them after :meth:`install` and before the first step is traced
        (a callback's ``on_train_begin`` is the place); one device only.
        """
        return self._canaries

    @canaries.setter
    def canaries(self, canaries):
        if self._model is None:
            raise ValueError("Install the engine on a model before giving "
                             "it gradient canaries.")
        if self._strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "Gradient canaries run on one device: under "
                f"{type(self._strategy).__name__} with "
                f"{self._strategy.num_replicas_in_sync} replicas every "
                "replica would inject them. Audit without a strategy.")
        if canaries is not None:
            canaries.attach(self._model.trainable_variables)
        self._canaries = canaries

    def compute_gradients(self, x, y, sample_weight=None):
        """The noised, averaged DP-SGD gradient for one batch.

        Not counted in :attr:`steps_taken` / :attr:`examples_seen` (no
        optimizer step ran), but recorded in the model's ledger like a step:
        the noised gradient is a release. Outside a ``fit`` whose epsilon
        callback declared the data, it is recorded unattributed.

        Returns:
            ``(gradients, y_pred)``; gradients in the order of
            ``model.trainable_variables``.
        """
        batch = Batch(x, y, sample_weight)
        grads, y_pred, sigma, _ = self._noised_gradients(batch)
        counted = groups_with_weight(batch.sample_weight,
                                     batch.rows(), None)
        with tf.control_dependencies(grads):
            recorded = self._record.update(sigma, tf.cast(replicas.total(
                tf.reduce_sum(tf.cast(counted, tf.float32))), tf.int64))
        with tf.control_dependencies([recorded]):
            grads = [tf.identity(g) for g in grads]
        return grads, y_pred

    def train_step(self, data):
        """One DP-SGD step, as ``model.train_step`` (installed by
        :meth:`install`): gradient, optimizer step, counters, metrics."""
        model = self._model
        batch = Batch(*keras.utils.unpack_x_y_sample_weight(data))
        grads, y_pred, sigma, nonfinite = self._noised_gradients(batch)
        model.optimizer.apply_gradients(zip(grads,
                                            model.trainable_variables))
        counted = groups_with_weight(batch.sample_weight,
                                     batch.rows(), None)
        # Counted only once the step's checks passed (the gradients depend
        # on them): a refused step spends no privacy.
        with tf.control_dependencies(grads):
            seen = tf.reduce_sum(tf.cast(counted, tf.float32))
            self._steps_taken.assign_add(1)
            self._examples_seen.assign_add(tf.cast(seen, tf.int64))
            self._record.update(sigma, tf.cast(replicas.total(seen),
                                               tf.int64))
            self._nonfinite_examples.assign_add(tf.cast(nonfinite,
                                                        tf.int64))
        k = self._options.augmentation_multiplicity
        y, sample_weight = (repeat_rows(t, k) for t in batch[1:])
        installation.track_loss(model, batch.x, y, y_pred, sample_weight)
        logs = model.compute_metrics(batch.x, y, y_pred, sample_weight)
        if self.clipping == "quantile":
            logs = dict(logs, l2_norm_clip=tf.identity(self._clip))
        return logs

"""The clipping engine on Keras 3's JAX backend.

The step is the TensorFlow engine's (docs/engine.md), as a pure function:
``(model state, engine state, settings, batch) -> (logs, model state,
engine state)``, jitted as Keras jits its own step. The engine's state is
a small pytree the engine holds between steps, never part of the model
(the model saves and loads as an ordinary Keras model):

* ``key``: the noise's JAX PRNG key, seeded from the operating system
  (``secrets``) unless ``noise_seed`` is given; each step splits it, so
  every step draws fresh noise and no draw is ever reused;
* ``examples``, ``nonfinite``, ``max_examples``: device counters, read by
  the host when the ledger is drained.

The settings the host may change between steps (``sigma``, ``C``) are
arguments of the jitted step, not constants: a noise schedule changes
sigma without a recompilation. The noise std ``sigma * C`` is computed on
the host in float64 and rounded *up* to float32. The steps and the sigma
each ran with are counted on the host, where sigma is known exactly, one
count per call of the step, not read back from the device; the one value
read back per step is the replay check's flag (:meth:`JaxClippingEngine.
refuse_after_mismatch`), so that the step after a failed check raises.

Poisson batches vary in size, and every new shape is a new compilation on
JAX; with ``expected_batch_size`` each batch is padded with rows of sample
weight 0 (no example: zero loss, zero gradient, not counted) up to one
size, ``expected + 3 * sqrt(expected)`` rounded up to 8, which all but
about one batch in 700 fit (:func:`_bucket`), so a run compiles one
shape, not one per step.

Options that have no JAX step yet are refused by name
(:func:`refuse_options`).
"""

import math
import secrets
import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np

from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.validation import check_number
from ...core.engine_base import checked_settings, EngineBase
from ...core.noise_std import host_noise_stddev
from ..tensorflow.installation import check_installable
from ..tensorflow.step_record import Drained
from ..tensorflow.tap import find_taps
from .clipped_sum import clipped_sum
from .recording import Recorder, RecordingTap


def refuse_options(options):
    """Raises for an engine option the JAX step does not have yet."""
    missing = []
    if options.clipping == "quantile":
        missing.append("clipping='quantile'")
    if options.augmentation_multiplicity > 1 or options.augment is not None:
        missing.append("augmentation_multiplicity / augment")
    if options.physical_batch_size is not None:
        missing.append("physical_batch_size")
    if missing:
        raise ValueError(
            f"{', '.join(missing)}: not available on the JAX backend yet "
            "(clipping='clip' or 'normalize', num_microbatches and "
            "expected_batch_size are). Train with KERAS_BACKEND=tensorflow "
            "for these options, or leave them out.")


# Layers whose call draws random numbers when their rate is above 0.
_RANDOM = {"Dropout": "rate", "SpatialDropout1D": "rate",
           "SpatialDropout2D": "rate", "SpatialDropout3D": "rate",
           "GaussianDropout": "rate", "AlphaDropout": "rate",
           "GaussianNoise": "stddev"}


def _draws(layer):
    """Why ``layer`` itself draws random numbers in ``call``, or None."""
    name = type(layer).__name__
    if name in _RANDOM and getattr(layer, _RANDOM[name], 0):
        return f"{name}({_RANDOM[name]}={getattr(layer, _RANDOM[name])})"
    for attribute in ("dropout", "recurrent_dropout"):  # RNN cells
        if getattr(layer, attribute, 0) and isinstance(
                getattr(layer, attribute), (int, float)):
            return f"{attribute}={getattr(layer, attribute)}"
    return None


def refuse_random_units(taps):
    """Raises for a clip unit that draws random numbers in its call, in
    itself or in a layer nested in it (a recurrent layer with dropout, a
    custom layer holding a Dropout).

    The engine computes such a unit's norm and clipped sum by replaying
    its calls, on each group's rows and on the whole batch; on JAX each
    replay draws its own numbers (the draw depends on the shape), so the
    norm would belong to another function than the sum, and an example's
    contribution could exceed the clip. Dropout as a layer of its own,
    between units, is fine: it is no unit.
    """
    for tap in taps:
        for layer in [tap.layer] + list(tap.layer._flatten_layers(
                include_self=False, recursive=True)):
            why = _draws(layer)
            if why is not None:
                raise ValueError(
                    f"Layer {tap.layer.name!r} "
                    f"({type(tap.layer).__name__}) draws random numbers in "
                    f"its call ({layer.name!r}: {why}). On the JAX backend "
                    "the engine recomputes this layer per group of examples "
                    "and cannot reproduce its draws, so the clip would not "
                    "bound what is summed. Set the rate to 0 and put a "
                    "keras.layers.Dropout between layers instead, or train "
                    "with KERAS_BACKEND=tensorflow (whose engine checks "
                    "each recomputation).")


def noise_key(seed=None):
    """The noise's raw threefry key, ``uint32[2]``: 64 bits from the
    operating system (``secrets``), or the 64 low bits of ``seed``.

    Not ``jax.random.PRNGKey(seed)``: without 64-bit mode JAX keeps only a
    seed's low 32 bits there (``PRNGKey(2**40)`` is ``PRNGKey(0)``), which
    would leave 2^32 possible noise streams, few enough to search.

    >>> [int(w) for w in noise_key(2**40 + 5)]
    [256, 5]
    """
    bits = secrets.randbits(64) if seed is None else int(seed) % 2 ** 64
    return jnp.asarray([bits >> 32, bits & 0xFFFFFFFF], jnp.uint32)


def _bucket(rows, expected):
    """The rows a Poisson batch of ``rows`` is padded to.

    Every batch of at most ``expected + 3 * sqrt(expected)`` rows (a
    Poisson batch's size but for about one step in 700) is padded to that
    one size, rounded up to 8: a run compiles one step, where padding to
    nearby sizes compiled a new one (seconds) whenever a size first came
    up, through the whole run. A larger batch goes to the next multiple
    of a quarter of the expected size above it (rounded up to 8).

    >>> [_bucket(rows, 64) for rows in (1, 64, 88, 89, 120)]
    [88, 88, 88, 104, 120]
    """
    main = -(-int(expected + 3 * math.sqrt(expected)) // 8) * 8
    if rows <= main:
        return main
    # Multiples of 8: a batch sharded over 2, 4 or 8 devices splits evenly.
    step = max(8, -(-(int(expected) // 4) // 8) * 8)
    return main + -(-(rows - main) // step) * step


def _padded(batch, expected):
    """A Poisson batch ``(x, y, sample_weight)`` padded with weight-0
    rows (module docstring); on the host where the batch is (NumPy, as
    ``fit`` hands it over), so the padding is no work for the device."""
    x, y, weight = batch
    if weight is None:
        return batch
    rows = int(weight.shape[0])
    extra = _bucket(rows, expected) - rows
    if extra == 0:
        return batch

    def pad(t):
        if t is None:
            return None
        xp = np if isinstance(t, np.ndarray) else jnp
        return xp.concatenate(
            [t, xp.zeros((extra,) + tuple(t.shape[1:]), t.dtype)])
    return (jax.tree_util.tree_map(pad, x), jax.tree_util.tree_map(pad, y),
            pad(weight))


def _mean_over_rows(model):
    """Whether the compiled loss divides its weighted sum by the number of
    rows (Keras' default reduction), which padding changes."""
    return getattr(model.loss, "reduction", "sum_over_batch_size") in (
        "sum_over_batch_size", "mean")


def _padded_batch_metrics(model, metrics_vars, loss, data, padded, rows):
    """``(logs, metrics_vars)`` of a padded Poisson batch ``data = (x, y,
    y_pred, sample_weight)``, as of the ``rows`` drawn: Keras' mean loss
    divides by every row, so it is scaled back; the padding's rows (weight
    0, no example) are masked out of the metrics Keras updates without
    weights; the loss tracker weighs the batch by ``rows``, as
    TensorFlow's step does. A model with its own ``compute_metrics`` gets
    the scaled loss and Keras' metrics (padding included)."""
    x, y, y_pred, sample_weight = data
    if _mean_over_rows(model):
        loss = loss * (padded / jnp.maximum(rows, 1))
    compiled = getattr(model, "_compile_metrics", None)
    if (type(model).compute_metrics is not keras.Model.compute_metrics
            or (compiled is not None and not compiled.built)):
        return model._update_metrics_variables(
            metrics_vars, loss, x, y, y_pred, sample_weight)
    mask = (jnp.arange(padded) < rows).astype("float32")
    with keras.StatelessScope(state_mapping=list(
            zip(model.metrics_variables, metrics_vars))) as scope:
        model._loss_tracker.update_state(loss, sample_weight=rows)
        if compiled is not None:
            ys, preds = compiled._flatten_y(y), compiled._flatten_y(y_pred)
            for metric, y_t, y_p in zip(compiled._flat_metrics, ys, preds):
                if metric:
                    metric.update_state(y_t, y_p, sample_weight=mask)
            for metric, y_t, y_p in zip(compiled._flat_weighted_metrics, ys,
                                        preds):
                if metric:
                    metric.update_state(y_t, y_p,
                                        sample_weight=sample_weight)
        logs = model.get_metrics_result()
    updated = [scope.get_current_value(v) for v in model.metrics_variables]
    return logs, [v.value if new is None else new
                  for v, new in zip(model.metrics_variables, updated)]


def _rows(batch):
    """The batch's rows (its inputs' first axis, static on JAX)."""
    return int(jax.tree_util.tree_leaves(batch[0])[0].shape[0])


def _give_back(model, state):
    """Puts ``state`` back into the model's variables after a step that
    raised (a refusal when the step was traced): Keras' JAX ``fit`` takes
    the values out of the variables before the first step and puts them
    back only after one succeeded, so the model would be left without
    weights. Nothing to do where the values were already given to a step
    that ran (donated)."""
    names = ("trainable_variables", "non_trainable_variables",
             "optimizer_variables", "metrics_variables")
    model._jax_state = dict(zip(names, state))
    model._jax_state_synced = False
    try:
        model.jax_state_sync()
    except Exception:  # donated buffers: the step's own error says more
        pass


class JaxClippingEngine(EngineBase):
    """Runs DP-SGD steps for one Keras model on the JAX backend.

    The same arguments, settings and counters as the TensorFlow engine,
    :class:`~keras_tempered_dp.privacy.clipping.ClippingEngine` (which
    builds this class on JAX); see the module docstring for what differs
    inside.

    Example:

    >>> engine = JaxClippingEngine(1.0, 1.1)     # doctest: +SKIP
    >>> _ = engine.install(model)                # doctest: +SKIP
    >>> model.fit(x, y, batch_size=64)           # doctest: +SKIP
    """

    def _setup(self, config, expected_batch_size, options):
        self._options, self._expected_batch_size = checked_settings(
            config, expected_batch_size, options)
        self._num_microbatches = config.num_microbatches
        refuse_options(self._options)
        self._seed = config.noise_seed
        self._clip = float(config.l2_norm_clip)
        self._sigma = float(config.noise_multiplier)
        self._device_settings = None  # ((C, sigma), their device values)
        self._state = {
            "key": noise_key(config.noise_seed),
            "examples": jnp.zeros([], jnp.int32),
            "nonfinite": jnp.zeros([], jnp.int32),
            "max_examples": jnp.zeros([], jnp.int32),
            "mismatch": jnp.zeros([], jnp.bool_),
        }
        self._steps = self._examples = self._nonfinite = 0
        self._runs = []  # [(sigma, steps)] since the last drain
        self._model = self._loss_fn = self._gradients = None

    # -- settings ---------------------------------------------------------
    options = property(lambda self: self._options)
    clipping = property(lambda self: self._options.clipping)
    augmentation_multiplicity = property(lambda self: 1)
    num_microbatches = property(lambda self: self._num_microbatches)
    expected_batch_size = property(lambda self: self._expected_batch_size)
    seed = property(lambda self: self._seed)
    model = property(lambda self: self._model)

    @property
    def canaries(self):
        """None: gradient canaries (the audit) are the TensorFlow
        engine's."""
        return None

    @canaries.setter
    def canaries(self, canaries):
        if canaries is not None:
            raise ValueError(
                "Gradient canaries (keras_tempered_dp.audit) run on the "
                "TensorFlow engine only so far: audit with "
                "KERAS_BACKEND=tensorflow.")

    steps_taken = property(lambda self: np.int64(self._steps))

    @property
    def examples_seen(self):
        return np.int64(self._examples + int(self._state["examples"]))

    @property
    def nonfinite_examples(self):
        return np.int64(self._nonfinite + int(self._state["nonfinite"]))

    @property
    def l2_norm_clip(self):
        return self._clip

    @l2_norm_clip.setter
    def l2_norm_clip(self, value):
        self._clip = check_number("l2_norm_clip", value, low=0,
                                  low_open=True)

    @property
    def noise_multiplier(self):
        return self._sigma

    @noise_multiplier.setter
    def noise_multiplier(self, value):
        self._sigma = check_number("noise_multiplier", value, low=0)

    def gradient_noise_multiplier(self, noise_multiplier=None):
        return (self._sigma if noise_multiplier is None
                else float(noise_multiplier))

    # -- the ledger's record ------------------------------------------------
    def _record(self, sigma):
        if self._runs and self._runs[-1][0] == sigma:
            self._runs[-1] = (sigma, self._runs[-1][1] + 1)
        else:
            self._runs.append((sigma, 1))

    def drain_record(self):
        """The steps since the last drain, as the TensorFlow engine's
        :meth:`drain_record` gives them; the record is empty afterwards.
        The device counters are folded into the host's (int64) here."""
        state = self._state
        drained = Drained(tuple(self._runs), int(state["max_examples"]), 0)
        self._examples += int(state["examples"])
        self._nonfinite += int(state["nonfinite"])
        if bool(state["mismatch"]):
            warnings.warn(
                "A recomputed layer did not reproduce its call: the step "
                "added only noise (accounted here); the next step raises.",
                RuntimeWarning, stacklevel=2)
        self._state = dict(state,
                           examples=jnp.zeros([], jnp.int32),
                           nonfinite=jnp.zeros([], jnp.int32),
                           max_examples=jnp.zeros([], jnp.int32))
        self._runs = []
        return drained

    # -- installation ---------------------------------------------------------
    def install(self, model, config=None):
        """Makes ``model.fit`` and ``train_on_batch`` run this engine's
        step; see the TensorFlow engine's :meth:`install`."""
        check_installable(model)
        if jax.process_count() > 1:
            raise ValueError(
                f"{jax.process_count()} JAX processes: the JAX engine draws "
                "its noise key on one host and has no multi-host test yet "
                "(each process would add its own noise to the same sum). "
                "Train on one host (its devices: keras.distribution."
                "DataParallel), or with KERAS_BACKEND=tensorflow's "
                "multi-worker strategy.")
        if model.built:
            refuse_random_units(find_taps(model))
        self._model = model
        self._loss_fn = per_example_loss(model.loss)
        self._installed_loss = model.loss
        self._gradients = None
        model.make_train_function = self._make_train_function
        model.train_function = None
        return self._attach(model, config)

    def _recording_taps(self):
        """The taps, found and checked again whenever a step is traced
        (layers may have been added or the loss recompiled since)."""
        model = self._model
        check_installable(model)
        if model.loss is not self._installed_loss:
            self._loss_fn = per_example_loss(model.loss)
            self._installed_loss = model.loss
        recorder = Recorder()
        trained = {id(w) for w in model.trainable_variables}
        taps = find_taps(model)
        refuse_random_units(taps)
        return [RecordingTap(tap.layer, i, recorder, trained)
                for i, tap in enumerate(taps)]

    # -- one step -------------------------------------------------------------
    def _noised(self, model_state, engine_state, settings, batch):
        """The noised, averaged gradient and what the counters need."""
        clip, stddev = settings
        taps = self._recording_taps()
        total = clipped_sum(self._model, taps, self._loss_fn, model_state,
                            batch, self._groups(batch), clip, self._options)
        key, step_key = jax.random.split(engine_state["key"])
        noised = [s + stddev * jax.random.normal(
            jax.random.fold_in(step_key, i), s.shape, s.dtype)
            for i, s in enumerate(total.sums)]
        denominator = self._denominator(batch)
        grads = [g / denominator for g in noised]
        seen = total.counted.astype(jnp.int32)
        # Every release counts for the ledger's largest step; the counters
        # count optimizer steps only (:meth:`_step`).
        engine_state = dict(
            engine_state, key=key,
            max_examples=jnp.maximum(engine_state["max_examples"], seen),
            mismatch=engine_state["mismatch"] | total.mismatch)
        return grads, total, engine_state

    def _groups(self, batch):
        rows = _rows(batch)
        groups = self._num_microbatches
        if groups is not None and rows % groups:
            raise ValueError(
                f"num_microbatches={groups} does not divide this batch's "
                f"size ({rows}); drop the remainder (drop_remainder=True) "
                "or see keras_tempered_dp.privacy.check_microbatches.")
        return groups

    def _denominator(self, batch):
        if self._expected_batch_size is not None:
            return jnp.float32(self._expected_batch_size)
        if self._num_microbatches:
            return jnp.float32(self._num_microbatches)
        return jnp.float32(_rows(batch))

    def _step(self, state, engine_state, settings, batch, rows):
        """One step on a :meth:`_prepared` ``(x, y, sample_weight)`` of
        ``rows`` rows before padding."""
        model = self._model
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = batch
        grads, total, engine_state = self._noised(
            (trainable, non_trainable), engine_state, settings, batch)
        engine_state = dict(
            engine_state,
            examples=engine_state["examples"]
            + total.counted.astype(jnp.int32),
            nonfinite=engine_state["nonfinite"]
            + total.nonfinite.astype(jnp.int32))
        trainable, optimizer_vars = model.optimizer.stateless_apply(
            optimizer_vars, grads, trainable)
        # The logged loss is the compiled (batch-mean) loss, as on
        # TensorFlow, not what the step differentiated.
        loss, (_, _, metrics_vars) = model.stateless_compute_loss(
            trainable, total.non_trainable, metrics_vars, x=x, y=y,
            y_pred=total.y_pred, sample_weight=sample_weight, training=True)
        if self._expected_batch_size is not None:
            logs, metrics_vars = _padded_batch_metrics(
                model, metrics_vars, loss,
                (x, y, total.y_pred, sample_weight), _rows(batch), rows)
        else:
            logs, metrics_vars = model._update_metrics_variables(
                metrics_vars, loss, x, y, total.y_pred, sample_weight)
        return logs, (trainable, total.non_trainable, optimizer_vars,
                      metrics_vars), engine_state

    def _settings(self):
        # One float32 C for the clip bound and the noise: the std is
        # computed from the C the factors use, not from its float64. Kept
        # on the device until C or sigma changes (no transfer per step).
        key = (self._clip, self._sigma)
        if self._device_settings is None or self._device_settings[0] != key:
            clip = float(np.float32(self._clip))
            self._device_settings = (key, (
                jnp.float32(clip),
                jnp.float32(host_noise_stddev(self._sigma, clip))))
        return self._device_settings[1]

    def _prepared(self, data):
        """``((x, y, sample_weight), rows)``: the batch, padded if it is a
        Poisson batch, and its rows before padding."""
        data = keras.utils.unpack_x_y_sample_weight(data)
        rows = _rows(data)
        if self._expected_batch_size is not None:
            data = _padded(data, self._expected_batch_size)
        return data, rows

    def _make_train_function(self, force=False):
        model = self._model
        if model.train_function is not None and not force:
            return
        step = self._step
        if not model.run_eagerly and model.jit_compile:
            step = jax.jit(step, donate_argnums=(0, 1))

        def one_step(state, data):
            sigma = self._sigma
            try:
                self.refuse_after_mismatch()
                logs, state, self._state = step(
                    state, self._state, self._settings(),
                    *self._prepared(data))
            except Exception:
                model.train_function = None  # the next fit starts clean
                _give_back(model, state)
                raise
            self._steps += 1
            self._record(sigma)
            return logs, state

        model.train_function = model._make_function(one_step)

    def refuse_after_mismatch(self):
        """Raises once a step's replay did not reproduce its recorded call
        (that step released only noise, and is accounted)."""
        if bool(self._state["mismatch"]):
            raise RuntimeError(
                "A layer the engine recomputes gave different outputs than "
                "in the forward pass (its call draws random numbers, or "
                "takes an argument whose first axis has the batch's size "
                "without being batched). The clip could not bound such a "
                "layer's contribution, so the last step added only noise "
                "(it is accounted), and training stops here. Register a "
                "norm function for the layer, move the randomness into a "
                "layer of its own, or train with KERAS_BACKEND=tensorflow "
                "(its engine names the layer).")

    def compute_gradients(self, x, y, sample_weight=None):
        """The noised, averaged DP-SGD gradient for one batch, recorded in
        the ledger like a step (the noised gradient is a release) but not
        counted in :attr:`steps_taken`. Returns ``(gradients, y_pred)``."""
        model = self._model
        if not model.built:
            model(x)
        batch, _ = self._prepared((x, y, sample_weight))
        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables])
        sigma = self._sigma

        def gradients(state, engine_state, settings, batch):
            grads, total, engine_state = self._noised(
                state, engine_state, settings, batch)
            return grads, total.y_pred, engine_state

        if self._gradients is None:  # one compilation per input shape
            self._gradients = jax.jit(gradients)
        grads, y_pred, self._state = self._gradients(
            state, self._state, self._settings(), batch)
        self._record(sigma)
        self.refuse_after_mismatch()
        return grads, y_pred


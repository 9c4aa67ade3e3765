"""The clipping engine: exact DP-SGD steps at a few times ordinary cost.

One step, for a batch of B examples split into G groups (G = B unless
microbatches are asked for):

1. forward pass with every trainable layer tapped (:mod:`.tap`);
2. one backward pass of the summed per-example loss to the taps' outputs:
   ``dz`` for every layer, no weight gradients yet;
3. per-group squared gradient norms, layer by layer (:mod:`.registry`),
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
  augmented; the K copies form one group (:mod:`.groups`), so step 4 clips
  the *mean* gradient over an example's copies and the sensitivity is
  unchanged;
* ``clipping="normalize"``: factors ``C / (||g_m|| + gamma)`` instead of
  ``C / max(||g_m||, C)`` (per-example normalization, Bu et al. 2022): every
  contribution has norm below C, nothing to tune but gamma;
* ``physical_batch_size=P``: the (logical) batch is processed in chunks of
  P examples whose clipped sums are accumulated; noise is added once, to the
  whole logical batch's sum, so the update equals the one-batch update;
* the noise multiplier is a variable: a schedule may change it between
  steps (:mod:`keras_tempered_dp.privacy.schedules` accounts for that);
* ``clipping="quantile"``: the clip norm follows a privately estimated
  quantile of the per-example norms (Andrew et al. 2021, as TF Privacy's
  ``QuantileAdaptiveClipSumQuery``). Each step releases the noised count
  ``sum_i (1[||g_i|| <= C] - 1/2) + N(0, s_b^2)`` (sensitivity 1/2) and sets
  ``C <- C * exp(-eta * (fraction - target_quantile))``. The gradient noise
  is raised to ``sigma_g = (sigma^-2 - (2 s_b)^-2)^(-1/2)`` so that the two
  Gaussian releases together cost exactly one Gaussian mechanism with noise
  multiplier ``sigma``: the accounting is unchanged. The clip is never set
  from raw norms.
"""

import contextlib

import numpy as np
import tensorflow as tf

# Importing these modules registers their norm functions.
from keras_tempered_dp.privacy.clipping import layers as _layers  # noqa: F401
from keras_tempered_dp.privacy.clipping import (  # noqa: F401
    normalization as _normalization,
)
from keras_tempered_dp.privacy.clipping import ws_conv as _ws_conv  # noqa

from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.privacy.clipping.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.groups import GroupsOf
from keras_tempered_dp.privacy.clipping.registry import lookup_norm_fn
from keras_tempered_dp.privacy.clipping.tap import find_taps
from keras_tempered_dp.privacy.config import DPConfig
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import attach


def _broadcast_to_rank(weights, rank):
    return tf.reshape(weights, [-1] + [1] * (rank - 1))


class ClippingEngine:
    """Runs DP-SGD steps for one Keras model; install with :meth:`install`.

    Args:
        l2_norm_clip: C.
        noise_multiplier: sigma; the noise std is ``sigma * C``.
        num_microbatches: None (per-example clipping) or G dividing every
            batch; each microbatch's mean gradient is clipped, as in TF
            Privacy.
        expected_batch_size: divide the noised sum by this instead of the
            batch's size (Poisson sampling, where batch sizes vary).
        seed: seeds the noise generator; None draws the seed from the
            operating system. The generator's state advances every step, so
            every step gets fresh noise.
        clipping: "clip" (``C / max(||g||, C)``, TF Privacy's) or
            "normalize" (``C / (||g|| + gamma)``, per-example normalization).
        gamma: the stabilizer of "normalize", > 0.
        augmentation_multiplicity: K >= 1 augmented copies per example,
            averaged before clipping (needs per-example clipping).
        augment: ``fn(images, generator) -> images``; default
            :class:`~keras_tempered_dp.augmentation.RandomCropFlip` when
            K > 1, none when K == 1.
        physical_batch_size: process each batch in chunks of this many
            examples (gradient accumulation); None: all at once.
        target_quantile, clip_learning_rate, count_stddev: for
            ``clipping="quantile"``: the quantile of per-example norms the
            clip tracks (0.5), the geometric step eta (0.2) and the count
            noise s_b (default ``expected_batch_size / 20``).

    Example: a logical batch of 8 in chunks of 4, each example's gradient
    averaged over 2 augmented copies, normalized rather than clipped.

    >>> from keras_tempered_dp.models import digits_cnn
    >>> model = digits_cnn()
    >>> model.compile(optimizer=tf.keras.optimizers.SGD(0.5),
    ...     loss=tf.keras.losses.SparseCategoricalCrossentropy(
    ...         from_logits=True))
    >>> _ = ClippingEngine(1.0, 1.1, clipping="normalize",
    ...     augmentation_multiplicity=2, physical_batch_size=4).install(
    ...     model)
    >>> history = model.fit(tf.zeros([8, 8, 8, 1]), tf.zeros([8]),
    ...                     batch_size=8, verbose=0)
    """

    def __init__(self, l2_norm_clip, noise_multiplier, num_microbatches=None,
                 expected_batch_size=None, seed=None, clipping="clip",
                 gamma=0.01, augmentation_multiplicity=1, augment=None,
                 physical_batch_size=None, target_quantile=0.5,
                 clip_learning_rate=0.2, count_stddev=None):
        self._clip = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                 name="l2_norm_clip")
        self.l2_norm_clip = l2_norm_clip
        self.num_microbatches = num_microbatches
        if expected_batch_size is not None and num_microbatches is not None:
            raise ValueError(
                "expected_batch_size= (Poisson sampling) and "
                "num_microbatches= cannot be combined: use per-example "
                "clipping (num_microbatches=None) with Poisson sampling.")
        if clipping not in ("clip", "normalize", "quantile"):
            raise ValueError(f"clipping={clipping!r}: must be 'clip' "
                             "(C / max(||g||, C)), 'normalize' "
                             "(C / (||g|| + gamma)) or 'quantile' (C "
                             "adapted to a private quantile estimate).")
        if clipping == "quantile":
            if not 0 < target_quantile < 1:
                raise ValueError(f"target_quantile={target_quantile!r}: "
                                 "must be in (0, 1).")
            if not clip_learning_rate > 0:
                raise ValueError(f"clip_learning_rate={clip_learning_rate!r}"
                                 ": must be > 0 (0.2 is Andrew et al.'s).")
            if count_stddev is None:
                if expected_batch_size is None:
                    raise ValueError(
                        "clipping='quantile' needs count_stddev= (Andrew et "
                        "al. suggest batch_size / 20) or "
                        "expected_batch_size=.")
                count_stddev = expected_batch_size / 20
            if not count_stddev >= 0:
                raise ValueError(f"count_stddev={count_stddev!r}: must be "
                                 ">= 0.")
            if num_microbatches is not None:
                raise ValueError("clipping='quantile' needs per-example "
                                 "clipping (num_microbatches=None).")
        self.target_quantile = float(target_quantile)
        self.clip_learning_rate = float(clip_learning_rate)
        self.count_stddev = (None if count_stddev is None
                             else float(count_stddev))
        if not gamma > 0:
            raise ValueError(f"gamma={gamma!r}: must be > 0 (it keeps "
                             "C / (||g|| + gamma) finite; 0.01 is usual).")
        multiplicity = augmentation_multiplicity
        if isinstance(multiplicity, bool) or not isinstance(multiplicity,
                                                            int) \
                or multiplicity < 1:
            raise ValueError(f"augmentation_multiplicity={multiplicity!r}: "
                             "must be an integer >= 1.")
        if physical_batch_size is not None and (
                isinstance(physical_batch_size, bool)
                or not isinstance(physical_batch_size, int)
                or physical_batch_size < 1):
            raise ValueError(f"physical_batch_size={physical_batch_size!r}:"
                             " must be a positive integer or None.")
        if num_microbatches is not None and (
                multiplicity > 1 or physical_batch_size is not None):
            raise ValueError(
                "num_microbatches= cannot be combined with "
                "augmentation_multiplicity= or physical_batch_size=: both "
                "need per-example clipping (num_microbatches=None).")
        self.expected_batch_size = expected_batch_size
        self.clipping, self.gamma = clipping, float(gamma)
        self.augmentation_multiplicity = multiplicity
        if augment is None and multiplicity > 1:
            augment = RandomCropFlip()
        self.augment = augment
        self.physical_batch_size = physical_batch_size
        self.seed = seed
        self.generator = (tf.random.Generator.from_non_deterministic_state()
                          if seed is None else
                          tf.random.Generator.from_seed(seed))
        # Augmentation draws from its own stream: the noise stays the same
        # whether or not the data is augmented.
        self.augment_generator = self.generator.split(1)[0]
        self._noise_multiplier = tf.Variable(0.0, trainable=False,
                                             dtype=tf.float32,
                                             name="noise_multiplier")
        self.noise_multiplier = noise_multiplier
        self.model = None
        self.taps = None

    @property
    def l2_norm_clip(self):
        """C of the next step (adapted each step with "quantile")."""
        return float(self._clip.numpy())

    @l2_norm_clip.setter
    def l2_norm_clip(self, value):
        value = float(value)
        if not value > 0 or value == float("inf"):
            raise ValueError(f"l2_norm_clip={value!r}: must be a finite "
                             "number > 0.")
        self._clip.assign(value)

    def gradient_noise_multiplier(self, noise_multiplier=None):
        """sigma_g: the gradient's share of the step's noise multiplier.

        Equal to sigma except with ``clipping="quantile"``, where the count
        release takes its share: ``(sigma^-2 - (2 s_b)^-2)^(-1/2)``.
        """
        sigma = (self._noise_multiplier if noise_multiplier is None
                 else tf.constant(float(noise_multiplier)))
        if self.clipping != "quantile":
            return sigma
        count_share = (2.0 * self.count_stddev) ** -2 \
            if self.count_stddev else 0.0
        # (1 + 1e-6): float32 rounding in the formula must not lower sigma_g.
        return tf.where(
            sigma > 0,
            tf.math.rsqrt(tf.maximum(sigma ** -2.0 - count_share, 1e-30))
            * (1 + 1e-6), 0.0)

    @property
    def noise_multiplier(self):
        """sigma of the next step; assigning it takes effect at once."""
        return self._noise_value

    @noise_multiplier.setter
    def noise_multiplier(self, value):
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"noise_multiplier={value!r}: must be a finite "
                             "number >= 0.")
        if (getattr(self, "clipping", None) == "quantile" and value > 0
                and self.count_stddev is not None
                and not 2 * self.count_stddev > value):
            raise ValueError(
                f"noise_multiplier={value} with count_stddev="
                f"{self.count_stddev}: the count's noise must be larger "
                "(2 * count_stddev > noise_multiplier, and much larger to "
                "leave the gradient most of the privacy budget).")
        # The float32 variable holds sigma rounded *up*: the noise drawn is
        # never below what the accountant is told.
        stored = np.float32(value)
        if float(stored) < value:
            stored = np.nextafter(stored, np.float32(np.inf))
        self._noise_multiplier.assign(stored)
        self._noise_value = value

    # -- installation ---------------------------------------------------
    def install(self, model, config=None):
        """Makes ``model.fit`` (and ``train_on_batch``) use this engine.

        The model must be compiled. Only the instance's ``train_step`` is
        replaced: the model saves and loads as an ordinary Keras model.
        ``config`` (a :class:`~keras_tempered_dp.privacy.config.DPConfig`)
        is recorded in the model's
        :class:`~keras_tempered_dp.privacy.state.DPState`; by default one is
        made from this engine's settings.
        """
        if model.optimizer is None:
            raise ValueError("Compile the model before installing the "
                             "clipping engine (or use compile_dp).")
        self.model = model
        self.taps = find_taps(model)
        self.loss_fn = per_example_loss(model.loss)
        engine = self

        def train_step(data):
            try:
                return engine.train_step(data)
            except Exception:
                # A step that failed while being traced leaves a half-built
                # tf.function behind; drop it so the next fit starts clean.
                model.train_function = None
                raise

        model.train_step = train_step
        model.train_function = None  # rebuild with the new step
        if config is None:
            config = DPConfig(
                l2_norm_clip=self.l2_norm_clip,
                noise_multiplier=self.noise_multiplier, learning_rate=None,
                num_microbatches=self.num_microbatches, optimizer="fast",
                noise_seed=self.seed)
        attach(model, config, engine=self)
        return model

    # -- one step -------------------------------------------------------
    def per_group_sq_norms(self, records, grad_outputs, num_groups):
        """Summed squared norms ``[G]`` and each layer's clipped-sum fn."""
        total, clipped_sums = 0.0, []
        for tap, (inputs, args, kwargs, _), dz in zip(self.taps, records,
                                                      grad_outputs):
            fn = lookup_norm_fn(tap.layer) or generic_sq_norms

            def call(x, tap=tap, args=args, kwargs=kwargs):
                return tap.linear_call(x, *args, **kwargs)

            sq_norms, clipped_sum = fn(tap.layer, inputs, dz, num_groups,
                                       call)
            total += tf.cast(sq_norms, tf.float32)
            clipped_sums.append(clipped_sum)
        return total, clipped_sums

    def clipped_sum(self, records, grad_outputs, clipped_sums, factors,
                    example_weights):
        """``sum_m factors[m] * grad_m`` for every trainable variable."""
        grads = {}
        for tap, (inputs, args, kwargs, _), dz, layer_sum in zip(
                self.taps, records, grad_outputs, clipped_sums):
            weights = tap.layer.trainable_weights
            if layer_sum is not None:
                layer_grads = layer_sum(factors)
            else:  # recompute the layer with re-weighted output gradients
                scaled = dz * tf.cast(
                    _broadcast_to_rank(example_weights, dz.shape.rank),
                    dz.dtype)
                with tf.GradientTape() as tape:
                    z = tap.linear_call(tf.stop_gradient(inputs), *args,
                                        **kwargs)
                layer_grads = tape.gradient(
                    z, weights, output_gradients=scaled,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for w, g in zip(weights, layer_grads):
                grads[id(w)] = tf.convert_to_tensor(g)  # IndexedSlices too
        return grads

    def _forward(self, x):
        with contextlib.ExitStack() as stack:
            for tap in self.taps:
                stack.enter_context(tap.installed())
            y_pred = self.model(x, training=True)
        records = []
        for tap in self.taps:
            if len(tap.records) != 1:
                raise ValueError(
                    f"Layer {tap.layer.name!r} was called "
                    f"{len(tap.records)} times in one forward pass. The "
                    "clipping engine needs each layer with trainable weights "
                    "to be called exactly once (shared weights make one "
                    "example's gradient a sum over calls). Use "
                    "compile_dp(..., optimizer='dp_keras_sgd') for such "
                    "models.")
            records.append(tap.records[0])
        return y_pred, records

    def _clip_factors(self, norms):
        clip = tf.identity(self._clip)
        if self.clipping == "normalize":
            return clip / (norms + self.gamma)
        return clip / tf.maximum(norms, clip)

    def _copies(self, *tensors):
        """Each row repeated K times, copies side by side (None stays)."""
        k = self.augmentation_multiplicity
        if self.augment is None or k == 1:
            return tensors
        return tuple(None if t is None else tf.repeat(t, k, axis=0)
                     for t in tensors)

    def _expand(self, x, y, sample_weight):
        """Repeats and augments each example K times; its K copies side by
        side form its group."""
        k = self.augmentation_multiplicity
        if self.augment is None:
            return x, y, sample_weight, self.num_microbatches
        x, y, sample_weight = self._copies(x, y, sample_weight)
        x = self.augment(x, self.augment_generator)
        return x, y, sample_weight, (GroupsOf(k) if k > 1
                                     else self.num_microbatches)

    def clipped_sums(self, x, y, sample_weight=None):
        """Sum over this batch's groups of each group's clipped gradient.

        Returns:
            ``(sums, y_pred, y, sample_weight, below)``: sums in the order
            of ``model.trainable_variables``; ``y_pred``, ``y`` and
            ``sample_weight`` for the (possibly augmented) rows seen;
            ``below``: how many groups had a norm <= the clip (for
            ``clipping="quantile"``).
        """
        x, y, sample_weight, num_groups = self._expand(x, y, sample_weight)
        with tf.GradientTape() as tape:
            y_pred, records = self._forward(x)
            losses = self.loss_fn(y, y_pred, sample_weight)
            total = tf.reduce_sum(losses)
        outputs = [record[3] for record in records]
        grad_outputs = tape.gradient(total, outputs)

        batch = tf.shape(losses)[0]
        if isinstance(num_groups, GroupsOf):
            per_group = tf.constant(num_groups.size)
        elif num_groups:
            message = (f"num_microbatches={num_groups} does not "
                       "divide this batch's size; drop the remainder "
                       "(drop_remainder=True) or see keras_tempered_dp."
                       "privacy.check_microbatches")
            static = losses.shape[0]
            if static is not None and static % num_groups:
                raise ValueError(f"{message} ({static}).")
            # Everything below reshapes by groups: make it wait for the check.
            with tf.control_dependencies([tf.debugging.assert_equal(
                    batch % num_groups, 0, message=message)]):
                batch = tf.identity(batch)
                grad_outputs = [tf.identity(g) for g in grad_outputs]
                records = [(tf.identity(inputs), args, kwargs, z)
                           for inputs, args, kwargs, z in records]
            per_group = batch // num_groups
        else:
            per_group = tf.constant(1)
        # None = per example: keeps static shapes, which choose the
        # cheaper norm method per layer even when the batch size varies.
        sq_norms, layer_sums = self.per_group_sq_norms(
            records, grad_outputs, num_groups)
        norms = tf.sqrt(sq_norms)
        factors = self._clip_factors(norms)
        below = tf.reduce_sum(tf.cast(norms <= self._clip, tf.float32))
        example_weights = (tf.repeat(factors, per_group)
                           / tf.cast(per_group, tf.float32))
        grads = self.clipped_sum(records, grad_outputs, layer_sums,
                                 factors, example_weights)
        sums = [grads[id(var)] for var in self.model.trainable_variables]
        return sums, y_pred, y, sample_weight, below

    def _accumulated_sums(self, x, y, sample_weight):
        """:meth:`clipped_sums` over chunks of ``physical_batch_size``."""
        size = self.physical_batch_size
        rows = tf.shape(x)[0]
        chunks = (rows + size - 1) // size
        variables = self.model.trainable_variables

        def chunk(t, i):
            return None if t is None else t[i * size:(i + 1) * size]

        def body(i, sums, below, preds):
            part, y_pred, _, _, part_below = self.clipped_sums(
                chunk(x, i), chunk(y, i), chunk(sample_weight, i))
            return (i + 1, [a + tf.cast(b, a.dtype)
                            for a, b in zip(sums, part)],
                    below + part_below, preds.write(i, y_pred))

        _, sums, below, preds = tf.while_loop(
            lambda i, *_: i < chunks, body,
            (tf.constant(0), [tf.zeros_like(v) for v in variables],
             tf.constant(0.0),
             tf.TensorArray(self.model.outputs[0].dtype if getattr(
                 self.model, "outputs", None) else tf.float32,
                 size=chunks, infer_shape=False)))
        y_pred = preds.concat()
        y_pred.set_shape([None] + list(self.model.output_shape[1:]))
        y, sample_weight = self._copies(y, sample_weight)
        return sums, y_pred, y, sample_weight, below

    def _adapt_clip(self, below, examples):
        """Andrew et al.'s private geometric update of C."""
        expected = (tf.constant(float(self.expected_batch_size))
                    if self.expected_batch_size is not None
                    else tf.cast(examples, tf.float32))
        centered = below - 0.5 * tf.cast(examples, tf.float32)
        noised = centered + self.generator.normal([]) * self.count_stddev
        fraction = noised / expected + 0.5
        return self._clip.assign(self._clip * tf.exp(
            -self.clip_learning_rate * (fraction - self.target_quantile)))

    def gradients_and_outputs(self, x, y, sample_weight=None):
        """Noised averaged gradient, plus the rows the metrics should see."""
        model = self.model
        if model.losses:
            raise ValueError(
                "The model has regularization losses (kernel_regularizer, "
                "activity_regularizer or add_loss). Their gradients are not "
                "per-example losses and the engine does not clip them. Use "
                "the optimizer's weight_decay= instead of kernel "
                "regularizers, and remove activity regularizers.")
        if self.physical_batch_size is None:
            sums, y_pred, y, sample_weight, below = self.clipped_sums(
                x, y, sample_weight)
        else:
            sums, y_pred, y, sample_weight, below = self._accumulated_sums(
                x, y, sample_weight)
        if self.expected_batch_size is not None:
            denominator = tf.constant(float(self.expected_batch_size))
        elif self.num_microbatches:
            denominator = tf.constant(float(self.num_microbatches))
        else:  # one group per (original, unaugmented) example
            denominator = tf.cast(tf.shape(x)[0], tf.float32)
        stddev = self.gradient_noise_multiplier() * tf.identity(self._clip)
        result = []
        for g in sums:
            g = g + tf.cast(self.generator.normal(tf.shape(g)) * stddev,
                            g.dtype)
            result.append(g / tf.cast(denominator, g.dtype))
        if self.clipping == "quantile":
            # After the noise: this step used the clip it clipped with.
            with tf.control_dependencies(result):
                self._adapt_clip(below, tf.shape(x)[0])
        return result, y_pred, y, sample_weight

    def compute_gradients(self, x, y, sample_weight=None):
        """The noised, averaged DP-SGD gradient for one batch.

        Returns:
            ``(gradients, y_pred)``; gradients in the order of
            ``model.trainable_variables``.
        """
        grads, y_pred, _, _ = self.gradients_and_outputs(x, y, sample_weight)
        return grads, y_pred

    def train_step(self, data):
        model = self.model
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        grads, y_pred, y, sample_weight = self.gradients_and_outputs(
            x, y, sample_weight)
        model.optimizer.apply_gradients(zip(grads,
                                            model.trainable_variables))
        model.compiled_loss(y, y_pred, sample_weight)
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
        if self.clipping == "quantile":
            logs = dict(logs, l2_norm_clip=tf.identity(self._clip))
        return logs

"""The clipping engine: exact DP-SGD steps at close to ordinary cost.

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
"""

import contextlib

import tensorflow as tf

# Importing these modules registers their norm functions.
from keras_tempered_dp.privacy.clipping import layers as _layers  # noqa: F401
from keras_tempered_dp.privacy.clipping import (  # noqa: F401
    normalization as _normalization,
)
from keras_tempered_dp.privacy.clipping.generic import generic_sq_norms
from keras_tempered_dp.privacy.clipping.registry import lookup_norm_fn
from keras_tempered_dp.privacy.clipping.tap import find_taps
from keras_tempered_dp.privacy.losses import per_example_loss


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
    """

    def __init__(self, l2_norm_clip, noise_multiplier, num_microbatches=None,
                 expected_batch_size=None, seed=None):
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.num_microbatches = num_microbatches
        if expected_batch_size is not None and num_microbatches is not None:
            raise ValueError(
                "expected_batch_size= (Poisson sampling) and "
                "num_microbatches= cannot be combined: use per-example "
                "clipping (num_microbatches=None) with Poisson sampling.")
        self.expected_batch_size = expected_batch_size
        self.seed = seed
        self.generator = (tf.random.Generator.from_non_deterministic_state()
                          if seed is None else
                          tf.random.Generator.from_seed(seed))
        self.model = None
        self.taps = None

    # -- installation ---------------------------------------------------
    def install(self, model):
        """Makes ``model.fit`` (and ``train_on_batch``) use this engine.

        The model must be compiled. Only the instance's ``train_step`` is
        replaced: the model saves and loads as an ordinary Keras model.
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
        model.dp_engine = self
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

    def compute_gradients(self, x, y, sample_weight=None):
        """The noised, averaged DP-SGD gradient for one batch.

        Returns:
            ``(gradients, y_pred)``; gradients in the order of
            ``model.trainable_variables``.
        """
        model = self.model
        if model.losses:
            raise ValueError(
                "The model has regularization losses (kernel_regularizer, "
                "activity_regularizer or add_loss). Their gradients are not "
                "per-example losses and the engine does not clip them. Use "
                "the optimizer's weight_decay= instead of kernel "
                "regularizers, and remove activity regularizers.")
        with tf.GradientTape() as tape:
            y_pred, records = self._forward(x)
            losses = self.loss_fn(y, y_pred, sample_weight)
            total = tf.reduce_sum(losses)
        outputs = [record[3] for record in records]
        grad_outputs = tape.gradient(total, outputs)

        batch = tf.shape(losses)[0]
        groups = self.num_microbatches or batch
        if self.num_microbatches:
            message = (f"num_microbatches={self.num_microbatches} does not "
                       "divide this batch's size; drop the remainder "
                       "(drop_remainder=True) or see keras_tempered_dp."
                       "privacy.check_microbatches")
            static = losses.shape[0]
            if static is not None and static % self.num_microbatches:
                raise ValueError(f"{message} ({static}).")
            # Everything below reshapes by groups: make it wait for the check.
            with tf.control_dependencies([tf.debugging.assert_equal(
                    batch % groups, 0, message=message)]):
                batch = tf.identity(batch)
                grad_outputs = [tf.identity(g) for g in grad_outputs]
                records = [(tf.identity(inputs), args, kwargs, z)
                           for inputs, args, kwargs, z in records]
        clip = tf.constant(self.l2_norm_clip, tf.float32)
        # None = per example: keeps static shapes, which choose the
        # cheaper norm method per layer even when the batch size varies.
        sq_norms, clipped_sums = self.per_group_sq_norms(
            records, grad_outputs, self.num_microbatches)
        norms = tf.sqrt(sq_norms)
        factors = clip / tf.maximum(norms, clip)
        per_group = batch // groups
        example_weights = (tf.repeat(factors, per_group)
                           / tf.cast(per_group, tf.float32))
        grads = self.clipped_sum(records, grad_outputs, clipped_sums,
                                 factors, example_weights)

        if self.expected_batch_size is not None:
            denominator = tf.constant(float(self.expected_batch_size))
        else:
            denominator = tf.cast(groups, tf.float32)
        stddev = self.noise_multiplier * self.l2_norm_clip
        result = []
        for var in model.trainable_variables:
            g = grads[id(var)]
            if stddev > 0:
                g = g + tf.cast(self.generator.normal(tf.shape(g)) * stddev,
                                g.dtype)
            result.append(g / tf.cast(denominator, g.dtype))
        return result, y_pred

    def train_step(self, data):
        model = self.model
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        grads, y_pred = self.compute_gradients(x, y, sample_weight)
        model.optimizer.apply_gradients(zip(grads,
                                            model.trainable_variables))
        model.compiled_loss(y, y_pred, sample_weight)
        return model.compute_metrics(x, y, y_pred, sample_weight)

"""compile_dp and make_private: the entry points that make ``fit`` DP-SGD.

Both take the engine's options either as one
:class:`~keras_tempered_dp.privacy.config.EngineOptions`
(``engine_options=``) or by their flat keyword names
(:data:`~keras_tempered_dp.privacy.config.ENGINE_OPTIONS`, e.g.
``clipping="normalize", augmentation_multiplicity=4``); their defaults are
written only in ``EngineOptions``.
"""

import math

import keras
import numpy as np

from keras_tempered_dp import stack
from keras_tempered_dp.privacy.checks import (
    check_dp_trainable,
    check_microbatches,
)
from keras_tempered_dp.privacy.clipping import ClippingEngine
from keras_tempered_dp.privacy.clipping.backend.tensorflow import installation
from keras_tempered_dp.privacy.config import (
    ENGINE_OPTIONS,
    DPConfig,
    EngineOptions,
)
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import attach
from keras_tempered_dp.validation import check_type

# TF Privacy's optimizers by name; imported only when asked for, since TF
# Privacy exists only on the legacy stack (keras_tempered_dp.stack).
_TFP_OPTIMIZERS = {
    "dp_keras_sgd": "DPKerasSGDOptimizer",
    "vectorized_dp_keras_sgd": "VectorizedDPKerasSGDOptimizer",
}


def _tf_privacy_optimizer(name):
    module = stack.require_tf_privacy(f"compile_dp(optimizer={name!r})")
    return getattr(module, _TFP_OPTIMIZERS[name])


def compile_dp(model, *, l2_norm_clip=None, noise_multiplier=None,
               learning_rate=None, momentum=None, num_microbatches=None,
               optimizer=None, loss=None, metrics=("accuracy",),
               batch_size=None, num_examples=None, expected_batch_size=None,
               noise_seed=None, config=None, engine_options=None, **kwargs):
    """Compiles ``model`` for DP-SGD training with ``model.fit``.

    Each example's gradient (all layers together) is clipped to
    ``l2_norm_clip``, the clipped gradients are summed, Gaussian noise of std
    ``noise_multiplier * l2_norm_clip`` is added once per step and the sum is
    divided by the batch size; then an SGD step (with ``momentum``).

    Args:
        l2_norm_clip, noise_multiplier, learning_rate, momentum,
        num_microbatches, noise_seed, optimizer: see :class:`DPConfig`
            ("fast", the default, is this package's engine); the first two
            required, or all in one DPConfig as ``config=`` (not both).
        loss: None (sparse categorical cross-entropy on logits) or an
            ordinary Keras loss: the DP step makes it per-example itself.
        batch_size, num_examples: when given, the microbatch split of every
            batch, the last partial one included, is checked now.
        expected_batch_size: "fast" only: divide by this instead of the
            actual batch size (Poisson sampling, where batch sizes vary).
        engine_options: "fast" only: an
            :class:`~keras_tempered_dp.privacy.config.EngineOptions`, or
            its fields by their flat names in ``**kwargs`` (clipping,
            gamma, augmentation_multiplicity, augment, physical_batch_size,
            target_quantile, clip_learning_rate, count_stddev). Every other
            keyword, and ``metrics``, goes to ``model.compile``.

    Returns the :class:`DPConfig` (also kept in the model's ``DPState``);
    raises ValueError, saying what to change, for batch-mixing layers,
    microbatches that do not divide the batches, engine-only settings with
    a TF Privacy optimizer, and invalid settings.

    Example:

    >>> from keras_tempered_dp.models import mnist_cnn
    >>> compile_dp(mnist_cnn(), l2_norm_clip=1.0, noise_multiplier=1.1,
    ...            clipping="normalize").optimizer
    'fast'
    """
    flat = {k: kwargs.pop(k) for k in ENGINE_OPTIONS if k in kwargs}
    config = _dp_config("compile_dp", config, dict(
        l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
        learning_rate=learning_rate, momentum=momentum, optimizer=optimizer,
        num_microbatches=num_microbatches, noise_seed=noise_seed))
    check_dp_trainable(model)
    check_microbatches(config.num_microbatches, batch_size, num_examples)
    compile_args = dict(metrics=list(metrics or []), **kwargs)
    if config.optimizer == "fast":
        _compile_with_engine(model, config, loss, compile_args,
                             expected_batch_size,
                             _engine_options(engine_options, flat))
    else:
        _refuse_engine_only(config.optimizer, expected_batch_size,
                            engine_options, flat)
        _compile_with_tf_privacy(model, config, loss, compile_args)
    return config


def _compile_with_engine(model, config, loss, compile_args,
                         expected_batch_size, options):
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(
        learning_rate=config.learning_rate, momentum=config.momentum),
        loss=loss, **compile_args)
    _install_engine(model, config, expected_batch_size, options)


def _compile_with_tf_privacy(model, config, loss, compile_args):
    _refuse_replicas(model, config.optimizer)
    dp_optimizer = _tf_privacy_optimizer(config.optimizer)(
        l2_norm_clip=config.l2_norm_clip,
        noise_multiplier=config.noise_multiplier,
        num_microbatches=config.num_microbatches,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
    )
    model.compile(optimizer=dp_optimizer, loss=per_example_loss(loss),
                  **compile_args)
    attach(model, config)


def make_private(model, *, l2_norm_clip=None, noise_multiplier=None,
                 num_microbatches=None, expected_batch_size=None,
                 noise_seed=None, config=None, engine_options=None,
                 **options):
    """Makes an already compiled model train with DP-SGD, keeping its optimizer.

    Use it for optimizers other than SGD (DP holds for any optimizer: it
    only post-processes the noised gradient) and to continue training a
    loaded model with its optimizer state. The engine options come as an
    :class:`~keras_tempered_dp.privacy.config.EngineOptions`
    (``engine_options=``) or by their flat names (``**options``: clipping,
    gamma, augmentation_multiplicity, augment, physical_batch_size,
    target_quantile, clip_learning_rate, count_stddev), as in
    :func:`compile_dp`; the DP-SGD settings by keyword (l2_norm_clip and
    noise_multiplier required) or as one :class:`DPConfig` (``config=``,
    with ``learning_rate=None``: the compiled optimizer keeps its own).

    Raises:
        TypeError: for a keyword that is not an engine option, listing them.
        ValueError: for an uncompiled model, a TF Privacy optimizer, an
            optimizer whose learning rate is not a finite number > 0 (a
            schedule's at step 0: finite and >= 0), batch-mixing layers and
            invalid settings.

    Example:

    >>> import tensorflow as tf
    >>> from keras_tempered_dp.models import mnist_cnn
    >>> model = mnist_cnn()
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
    ...               loss=keras.losses.SparseCategoricalCrossentropy(
    ...                   from_logits=True))
    >>> make_private(model, l2_norm_clip=1.0, noise_multiplier=1.1).optimizer
    'fast'
    """
    config = _dp_config("make_private", config, dict(
        l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
        num_microbatches=num_microbatches, noise_seed=noise_seed),
        learning_rate=None)
    if config.learning_rate is not None or config.optimizer != "fast":
        raise ValueError(
            f"make_private(config=DPConfig(learning_rate="
            f"{config.learning_rate!r}, optimizer={config.optimizer!r})): "
            "make_private keeps the model's compiled optimizer and adds "
            "this package's engine; pass a DPConfig with "
            "learning_rate=None and optimizer='fast', or use compile_dp.")
    check_dp_trainable(model)
    if not installation.is_compiled(model):
        raise ValueError("make_private needs a compiled model: call "
                         "model.compile(optimizer=..., loss=...) first, or "
                         "use compile_dp.")
    if type(model.optimizer).__module__.startswith("tensorflow_privacy"):
        raise ValueError(
            "The model is compiled with a TF Privacy DP optimizer, which "
            "already clips and noises: adding the engine would do both "
            "twice. Compile with an ordinary optimizer first.")
    _check_learning_rate(model.optimizer)
    _install_engine(model, config, expected_batch_size,
                    _engine_options(engine_options, options))
    return config


def _dp_config(caller, config, given, **fixed):
    """The DPConfig: ``config`` as it is, or one made from the keywords
    given (None: DPConfig's default), validated once, by DPConfig."""
    given = {k: v for k, v in given.items() if v is not None}
    if config is not None:
        if given:
            raise ValueError(
                f"{caller}: DP settings given twice: config= and "
                f"{', '.join(sorted(given))}=. Put them all in the "
                "DPConfig, or pass them all by name.")
        return check_type("config", config, DPConfig, "a DPConfig")
    missing = [k for k in ("l2_norm_clip", "noise_multiplier")
               if k not in given]
    if missing:
        raise TypeError(
            f"{caller}() needs {' and '.join(missing)}= (or config=, a "
            "DPConfig).")
    return DPConfig(**given, **fixed)


def _check_learning_rate(optimizer):
    """Raises unless the compiled optimizer's learning rate is finite and
    > 0: with NaN every weight becomes NaN, with 0 or less the model does
    not learn (or climbs the loss), and either way the run spends its
    privacy budget and reports an epsilon.

    A ``LearningRateSchedule`` is checked at step 0 (a pure function,
    cheap), where 0 is allowed: warm-up schedules start there. A plain
    callable learning rate (Keras accepts one) is left alone: calling it
    may not be cheap or side-effect free.
    """
    # Keras 2 and 3 keep the rate as given (a variable or a schedule) in
    # `_learning_rate`; Keras 3's `learning_rate` evaluates a schedule.
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None:
        rate = getattr(optimizer, "learning_rate", None)
    schedule = isinstance(rate,
                          keras.optimizers.schedules.LearningRateSchedule)
    if schedule:
        rate = rate(0)
    elif rate is None or (callable(rate) and not hasattr(rate, "numpy")):
        return
    value = float(np.asarray(rate.numpy() if hasattr(rate, "numpy")
                             else rate))
    if not math.isfinite(value) or value < 0 or (value == 0
                                                 and not schedule):
        at = " (the schedule's value at step 0)" if schedule else ""
        raise ValueError(
            f"learning_rate={value!r}{at}: the model's optimizer "
            f"({type(optimizer).__name__}) must have a finite learning "
            "rate > 0; with this one DP-SGD would spend privacy on steps "
            "that leave the weights NaN, unchanged or moving uphill. "
            "Compile the model with a valid learning rate, then call "
            "make_private.")


def _engine_options(engine_options, flat):
    """One EngineOptions, from the object or from the flat names."""
    if engine_options is None:
        return EngineOptions.from_flat(**flat)
    if flat:
        raise ValueError(
            f"Engine options given twice: engine_options= and "
            f"{', '.join(sorted(flat))}=. Put them all in engine_options, "
            "or pass them all by name.")
    return check_type("engine_options", engine_options, EngineOptions,
                      "an EngineOptions")


def _refuse_engine_only(optimizer, expected_batch_size, engine_options,
                        flat):
    """Raises if an engine-only setting is given with a TF Privacy optimizer,
    whatever its value: TF Privacy would silently ignore it."""
    given = sorted(flat) + (["engine_options"]
                            if engine_options is not None else [])
    if given:
        raise ValueError(
            f"{', '.join(given)}: only this package's clipping engine "
            f"(optimizer='fast') offers them; TF Privacy's optimizer="
            f"{optimizer!r} would ignore them. Drop them, or use "
            "optimizer='fast'.")
    if expected_batch_size is not None:
        raise ValueError(
            "expected_batch_size= needs optimizer='fast': TF Privacy's "
            "optimizers always divide by the actual number of microbatches.")


def _refuse_replicas(model, optimizer):
    """TF Privacy's optimizers under several replicas: every replica adds
    the whole noise before the replicas' gradients are summed; refused."""
    replicas = model.distribute_strategy.num_replicas_in_sync
    if replicas > 1:
        raise ValueError(
            f"optimizer={optimizer!r} under a tf.distribute strategy with "
            f"{replicas} replicas: TF Privacy adds the full noise on every "
            "replica before the replicas' gradients are summed (R times "
            "the noise variance the accountant needs), and averages over "
            "one replica's microbatches only. Use "
            "optimizer='fast', which adds the noise once per global step "
            "(docs/distributed.md).")


def _install_engine(model, config, expected_batch_size, options):
    # The TensorFlow engine, or the JAX one on Keras 3's JAX backend.
    ClippingEngine.from_config(
        config, expected_batch_size=expected_batch_size,
        options=options).install(model, config)

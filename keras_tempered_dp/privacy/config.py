"""The settings of private training, frozen and validated on creation.

:class:`DPConfig` holds DP-SGD's own settings (TF Privacy's names);
:class:`EngineOptions` and :class:`QuantileClipping` what only this
package's clipping engine offers. Each default is written once, here.
"""

import dataclasses
import math
import numbers

from keras_tempered_dp.augmentation import Augment, RandomCropFlip

# Names a user can pass as `optimizer=` to compile_dp: the package's own
# clipping engine (default) and TF Privacy's two Keras optimizers.
OPTIMIZERS = ("fast", "dp_keras_sgd", "vectorized_dp_keras_sgd")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r}: must be a real number.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be finite.")
    return value


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings, in TF Privacy's names.

    Each example's gradient is clipped to ``l2_norm_clip`` in L2 norm, the
    clipped gradients are summed, Gaussian noise of standard deviation
    ``noise_multiplier * l2_norm_clip`` is added once per step and the result
    is divided by the batch size (or ``num_microbatches``, see below).

    Args:
        l2_norm_clip: clipping norm C, > 0.
        noise_multiplier: sigma, >= 0 (0 means no privacy, only clipping).
        learning_rate: SGD learning rate, > 0; None when the model was
            compiled with an optimizer of the user's choice (make_private).
        momentum: SGD momentum in [0, 1).
        num_microbatches: None for per-example clipping; otherwise the batch
            is split into this many microbatches whose mean gradients are
            clipped (TF Privacy's semantics). Must divide every batch.
        optimizer: which implementation runs the step: "fast" (this
            package's clipping engine), "dp_keras_sgd" or
            "vectorized_dp_keras_sgd" (TF Privacy).
        noise_seed: seeds the engine's noise generator; None (default) seeds
            it from the operating system. TF Privacy's optimizers ignore it.

    Raises:
        ValueError: naming the field and the bad value.

    Example:

    >>> DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1, learning_rate=0.15)
    ... # doctest: +ELLIPSIS
    DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1, ...)
    """

    l2_norm_clip: float
    noise_multiplier: float
    learning_rate: float | None = 0.15
    momentum: float = 0.0
    num_microbatches: int | None = None
    optimizer: str = OPTIMIZERS[0]
    noise_seed: int | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("l2_norm_clip", _number("l2_norm_clip", self.l2_norm_clip))
        if self.l2_norm_clip <= 0:
            raise ValueError(
                f"l2_norm_clip={self.l2_norm_clip!r}: must be > 0; it bounds "
                "each example's gradient norm (typical values 0.1 to 1.0)."
            )
        set_("noise_multiplier",
             _number("noise_multiplier", self.noise_multiplier))
        if self.noise_multiplier < 0:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier!r}: must be >= 0; "
                "it is the noise standard deviation in units of l2_norm_clip."
            )
        if self.learning_rate is not None:
            set_("learning_rate",
                 _number("learning_rate", self.learning_rate))
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate={self.learning_rate!r}: must be > 0.")
        set_("momentum", _number("momentum", self.momentum))
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum!r}: must be in [0, 1).")
        if self.num_microbatches is not None:
            if (isinstance(self.num_microbatches, bool)
                    or not isinstance(self.num_microbatches, numbers.Integral)
                    or self.num_microbatches < 1):
                raise ValueError(
                    f"num_microbatches={self.num_microbatches!r}: must be a "
                    "positive integer, or None for per-example clipping."
                )
            set_("num_microbatches", int(self.num_microbatches))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}: must be one of "
                f"{', '.join(OPTIMIZERS)}."
            )


def _positive_int(name, value, *, optional=False):
    if optional and value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 1):
        raise ValueError(f"{name}={value!r}: must be a positive integer"
                         + (" or None." if optional else "."))
    return int(value)


@dataclasses.dataclass(frozen=True)
class QuantileClipping:
    """Adaptive clipping (Andrew et al. 2021): C tracks a private quantile.

    Each step releases the noised count of examples whose gradient norm is
    at most C and moves C geometrically towards the ``target_quantile``.

    Args:
        target_quantile: the quantile of per-example norms C tracks, in
            (0, 1).
        clip_learning_rate: the geometric step eta, > 0 (0.2 is Andrew et
            al.'s).
        count_stddev: the count's noise s_b, >= 0; None: the expected batch
            size / 20 (:meth:`count_stddev_for`, the only place that default
            is decided).

    Raises:
        ValueError: naming the field and the bad value.

    Example:

    >>> QuantileClipping(target_quantile=0.7).count_stddev_for(100)
    5.0
    """

    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_stddev: float | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("target_quantile",
             _number("target_quantile", self.target_quantile))
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile={self.target_quantile!r}: "
                             "must be in (0, 1); 0.5 tracks the median.")
        set_("clip_learning_rate",
             _number("clip_learning_rate", self.clip_learning_rate))
        if not self.clip_learning_rate > 0:
            raise ValueError(
                f"clip_learning_rate={self.clip_learning_rate!r}: must be > "
                "0 (0.2 is Andrew et al.'s).")
        if self.count_stddev is not None:
            set_("count_stddev", _number("count_stddev", self.count_stddev))
            if self.count_stddev < 0:
                raise ValueError(f"count_stddev={self.count_stddev!r}: must "
                                 "be >= 0.")

    def count_stddev_for(self, expected_batch_size):
        """s_b: ``count_stddev``, or ``expected_batch_size / 20`` if None.

        Raises:
            ValueError: when both are None.
        """
        if self.count_stddev is not None:
            return self.count_stddev
        if expected_batch_size is None:
            raise ValueError(
                "clipping='quantile' needs count_stddev= (the noise of the "
                "released count; Andrew et al. suggest batch_size / 20) or "
                "expected_batch_size= (then count_stddev defaults to "
                "expected_batch_size / 20).")
        return expected_batch_size / 20


CLIPPING_MODES = ("clip", "normalize", "quantile")


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How the clipping engine clips, augments and batches; validated.

    Args:
        clipping: "clip" (``C / max(||g||, C)``, TF Privacy's),
            "normalize" (``C / (||g|| + gamma)``, per-example normalization)
            or "quantile" (C adapted to a private quantile estimate).
        gamma: the stabilizer of "normalize", > 0.
        augmentation_multiplicity: K >= 1 augmented copies per example,
            averaged before clipping.
        augment: ``fn(images, generator) -> images``
            (:class:`~keras_tempered_dp.augmentation.Augment`); None:
            :class:`~keras_tempered_dp.augmentation.RandomCropFlip` when
            K > 1 (decided here only), no augmentation when K == 1.
        physical_batch_size: process each batch in chunks of this many
            examples (gradient accumulation); None: all at once.
        quantile: the :class:`QuantileClipping` settings; only with
            ``clipping="quantile"``, which defaults it to
            ``QuantileClipping()``.

    Raises:
        ValueError: naming the field and the bad value.

    Example:

    >>> options = EngineOptions.from_flat(clipping="quantile",
    ...                                   target_quantile=0.6)
    >>> options.quantile.target_quantile, options.gamma
    (0.6, 0.01)
    >>> EngineOptions(augmentation_multiplicity=4).augment
    RandomCropFlip(padding=4, flip=True, mode='REFLECT')
    """

    clipping: str = "clip"
    gamma: float = 0.01
    augmentation_multiplicity: int = 1
    augment: Augment | None = None
    physical_batch_size: int | None = None
    quantile: QuantileClipping | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(
                f"clipping={self.clipping!r}: must be 'clip' "
                "(C / max(||g||, C)), 'normalize' (C / (||g|| + gamma)) or "
                "'quantile' (C adapted to a private quantile estimate).")
        set_("gamma", _number("gamma", self.gamma))
        if not self.gamma > 0:
            raise ValueError(f"gamma={self.gamma!r}: must be > 0 (it keeps "
                             "C / (||g|| + gamma) finite; 0.01 is usual).")
        set_("augmentation_multiplicity", _positive_int(
            "augmentation_multiplicity", self.augmentation_multiplicity))
        set_("physical_batch_size", _positive_int(
            "physical_batch_size", self.physical_batch_size, optional=True))
        if self.augment is not None and not callable(self.augment):
            raise ValueError(f"augment={self.augment!r}: must be a function "
                             "(images, generator) -> images, or None.")
        if self.augment is None and self.augmentation_multiplicity > 1:
            set_("augment", RandomCropFlip())
        if self.quantile is not None \
                and not isinstance(self.quantile, QuantileClipping):
            raise ValueError(f"quantile={self.quantile!r}: must be a "
                             "QuantileClipping(...) or None.")
        if self.quantile is not None and self.clipping != "quantile":
            raise ValueError(
                f"quantile={self.quantile!r} with clipping="
                f"{self.clipping!r}: the quantile settings only apply to "
                "clipping='quantile'; pass that, or drop them.")
        if self.clipping == "quantile" and self.quantile is None:
            set_("quantile", QuantileClipping())

    @classmethod
    def from_flat(cls, **options):
        """Builds the options from the flat names of :data:`ENGINE_OPTIONS`.

        The names of :class:`QuantileClipping`'s fields go to ``quantile``.

        Raises:
            TypeError: for a name that is not an engine option, listing them.
            ValueError: for a bad value (see the classes).
        """
        unknown = sorted(set(options) - set(ENGINE_OPTIONS))
        if unknown:
            raise TypeError(f"Unknown engine options {unknown}; the engine "
                            f"options are {list(ENGINE_OPTIONS)}.")
        quantile = {k: options.pop(k) for k in _QUANTILE_FIELDS
                    if k in options}
        if quantile:
            options["quantile"] = QuantileClipping(**quantile)
        return cls(**options)


_QUANTILE_FIELDS = tuple(f.name for f in dataclasses.fields(QuantileClipping))

# The flat keyword names compile_dp, make_private, train() and the CLI take.
ENGINE_OPTIONS = tuple(
    f.name for f in dataclasses.fields(EngineOptions) if f.name != "quantile"
) + _QUANTILE_FIELDS

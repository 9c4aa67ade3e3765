"""The settings of private training, frozen and validated on creation.

:class:`DPConfig` holds DP-SGD's own settings (TF Privacy's names);
:class:`EngineOptions` and :class:`QuantileClipping` what only this
package's clipping engine offers. Each default is written once, here.
"""

import dataclasses

from keras_tempered_dp.augmentation import Augment, RandomCropFlip
from keras_tempered_dp.validation import (
    check_choice,
    check_number,
    check_type,
)

# Names a user can pass as `optimizer=` to compile_dp: the package's own
# clipping engine (default) and TF Privacy's two Keras optimizers.
OPTIMIZERS = ("fast", "dp_keras_sgd", "vectorized_dp_keras_sgd")


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
        noise_seed: seeds the engine's noise generator, an integer >= 0;
            None (default) seeds it from the operating system. TF Privacy's optimizers ignore it.

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
        for name, check in {
            "l2_norm_clip": dict(
                low=0, low_open=True, hint="It bounds each example's "
                "gradient norm (typical values 0.1 to 1.0)."),
            "noise_multiplier": dict(
                low=0, hint="It is the noise standard deviation in units "
                "of l2_norm_clip."),
            "learning_rate": dict(low=0, low_open=True, allow_none=True),
            "momentum": dict(low=0, high=1, high_open=True),
            "num_microbatches": dict(
                low=1, integer=True, allow_none=True,
                hint="None clips per example."),
            # >= 0: a run's seed also seeds its Poisson sampling (numpy).
            "noise_seed": dict(low=0, integer=True, allow_none=True),
        }.items():
            object.__setattr__(self, name,
                               check_number(name, getattr(self, name),
                                            **check))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)


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
            size / 20 (:meth:`default_count_stddev`, the only place that
            default is written).

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
        for name, check in {
            "target_quantile": dict(low=0, high=1, low_open=True,
                                    high_open=True,
                                    hint="0.5 tracks the median."),
            "clip_learning_rate": dict(low=0, low_open=True,
                                       hint="0.2 is Andrew et al.'s."),
            "count_stddev": dict(low=0, allow_none=True),
        }.items():
            object.__setattr__(self, name,
                               check_number(name, getattr(self, name),
                                            **check))

    @staticmethod
    def default_count_stddev(batch_size):
        """Andrew et al.'s s_b for a batch of ``batch_size``: ``B / 20``."""
        return batch_size / 20

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
        return self.default_count_stddev(expected_batch_size)


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
        check_choice("clipping", self.clipping, CLIPPING_MODES, hint=(
            "'clip': C / max(||g||, C); 'normalize': C / (||g|| + gamma); "
            "'quantile': C adapted to a private quantile estimate."))
        set_("gamma", check_number(
            "gamma", self.gamma, low=0, low_open=True, hint="It keeps "
            "C / (||g|| + gamma) finite; 0.01 is usual."))
        set_("augmentation_multiplicity", check_number(
            "augmentation_multiplicity", self.augmentation_multiplicity,
            low=1, integer=True))
        set_("physical_batch_size", check_number(
            "physical_batch_size", self.physical_batch_size, low=1,
            integer=True, allow_none=True))
        if self.augment is not None and not callable(self.augment):
            raise ValueError(f"augment={self.augment!r}: must be a function "
                             "(images, generator) -> images, or None.")
        check_type("quantile", self.quantile, QuantileClipping,
                   "a QuantileClipping(...)", allow_none=True)
        if self.augment is None and self.augmentation_multiplicity > 1:
            set_("augment", RandomCropFlip())
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

"""RunConfig: one training run's settings, as a small validated tree.

Each section is a frozen dataclass whose fields carry their default (written
here once) and the help text the command line shows; ``keras-tempered-dp
train`` makes one flag per field (:func:`flag_fields`), so a new option is
one field here. A field's name is its flag's name and its keyword in
:func:`keras_tempered_dp.training.train`, unique across sections.

    RunConfig
      data       dataset, folders, sampling, seed
      model      network and activation (s, T, o)
      optimizer  epochs, batch size, SGD learning rate and momentum
      privacy    clip, noise or target epsilon, delta, noise schedule
      engine     clipping mode, its settings, gradient accumulation
      recipe     augmentation multiplicity and its crops, EMA
      output     folder, resume, verbosity
      distribute where it trains: one device or a tf.distribute strategy

Example:

>>> config = RunConfig.from_flat(dataset="digits", epochs=3,
...                              target_epsilon=2.0)
>>> config.optimizer.epochs, config.privacy.noise_multiplier
(3, None)
>>> RunConfig.from_flat(epoch=3)
Traceback (most recent call last):
...
TypeError: Unknown setting 'epoch'. Did you mean epochs?
"""

import dataclasses
import difflib
import inspect
import os

from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.data import DATASETS
from keras_tempered_dp.privacy.config import (
    CLIPPING_MODES,
    DPConfig,
    EngineOptions,
    QuantileClipping,
)
from keras_tempered_dp.privacy.accounting import ACCOUNTANTS
from keras_tempered_dp.privacy.schedules import SCHEDULES
from keras_tempered_dp.validation import check_choice, check_number

SAMPLINGS = ("poisson", "shuffle")


def _default(owner, name):
    """The default of ``owner``'s field or argument ``name``: the run's
    settings reuse the engine's defaults instead of writing them again."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner)}[name]
    return inspect.signature(owner).parameters[name].default


def _field(default, help, choices=None):
    return dataclasses.field(default=default,
                             metadata={"help": help, "choices": choices})


class _Section:
    """Validation in ``__post_init__`` via ``_checks``: name -> checker."""

    def __post_init__(self):
        for name, check in self._checks().items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    def _checks(self):
        return {}


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """Which data, how batches are drawn, and the initialization seed."""

    dataset: str = _field("digits", "Dataset.", tuple(DATASETS))
    data_dir: str | None = _field(None, "TFDS data folder.")
    manual_dir: str | None = _field(
        None, "Folder with the dataset's original files (offline "
        "preparation).")
    download: bool = _field(True, "Allow TFDS downloads (--nodownload: "
                            "offline only).")
    sampling: str = _field(
        "poisson", "poisson: what the accountant assumes; shuffle: Keras' "
        "fixed-size batches (epsilon then by convention).", SAMPLINGS)
    seed: int = _field(0, "Seed for initialization and shuffling.")
    num_classes: int | None = _field(
        None, "Classes of the model's output (default: the dataset's "
        "declared number; never read off the labels).")

    def _checks(self):
        return {"num_classes": lambda n, v: check_number(
                    n, v, low=2, integer=True, allow_none=True),
                "dataset": lambda n, v: check_choice(n, v, DATASETS),
                "sampling": lambda n, v: check_choice(n, v, SAMPLINGS),
                "seed": lambda n, v: check_number(n, v, low=0,
                                                   integer=True)}


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The network and its activation."""

    model: str | None = _field(
        None, "mnist_cnn, cifar10_cnn, digits_cnn, wrn16_4, "
        "scatternet_linear, scatternet_cnn, vit or sequence_lstm; default: "
        "the paper's model for the dataset.")
    activation: str = _field(
        "tempered_sigmoid", "tempered_sigmoid (with --s --T --o), tanh, "
        "relu, gelu, or any registered name.")
    s: float = _field(2.0, "Tempered sigmoid scale s > 0.")
    T: float = _field(2.0, "Tempered sigmoid inverse temperature T > 0.")
    o: float = _field(1.0, "Tempered sigmoid offset o.")
    precompute_features: bool = _field(
        True, "ScatterNet models only: compute the fixed front end "
        "(scattering and its normalization) once over the data instead of "
        "every step (--noprecompute_features: every step).")

    def _checks(self):
        from keras_tempered_dp.activations import (
            check_tempered_sigmoid_parameters,
            get_activation,
        )
        from keras_tempered_dp.models import MODELS

        def model(name, value):
            if value is not None:
                check_choice(name, value, tuple(MODELS))
            return value

        def activation(name, value):
            get_activation(value)  # unknown names fail, listing known ones
            check_tempered_sigmoid_parameters(self.s, self.T, self.o)
            return value

        return {"model": model, "activation": activation,
                **{k: lambda n, v: check_number(n, v) for k in "sTo"}}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """SGD with momentum over ``epochs`` passes of ``batch_size``."""

    epochs: int = _field(15, "Epochs (passes over the data).")
    batch_size: int = _field(64, "(Expected) batch size.")
    learning_rate: float = _field(0.05, "SGD learning rate.")
    momentum: float = _field(0.9, "SGD momentum in [0, 1).")

    # learning_rate and momentum are validated once, by the run's DPConfig
    # (RunConfig.dp), where they are used.

    def _checks(self):
        return {"epochs": lambda n, v: check_number(n, v, low=1,
                                                     integer=True),
                "batch_size": lambda n, v: check_number(n, v, low=1,
                                                         integer=True)}


@dataclasses.dataclass(frozen=True)
class PrivacyConfig(_Section):
    """Clip, noise (or the epsilon to calibrate it for), delta, schedule."""

    l2_norm_clip: float = _field(1.0, "Per-example clipping norm C.")
    noise_multiplier: float | None = _field(
        None, "Noise std in units of C; default 1.0 unless "
        "--target_epsilon is given (give one or the other).")
    target_epsilon: float | None = _field(
        None, "Calibrate the noise so the run ends at this epsilon.")
    delta: float | None = _field(
        None, "delta; default min(1e-5, 1/(10 N)); must be below 1/N.")
    noise_seed: int | None = _field(
        None, "Seed of the noise and the Poisson sampling (tests and exact "
        "reproductions only: a known seed makes the noise predictable).")
    noise_schedule: str = _field(
        "constant", "Noise multiplier by epoch; epsilon is composed "
        "exactly.", tuple(SCHEDULES))
    noise_decay: float | None = _field(
        None, "step: factor in (0, 1]; exponential / time: rate >= 0.")
    noise_decay_period: int = _field(1, "step: epochs per decay.")
    accountant: str = _field(
        "rdp", "rdp or pld (dp_accounting's privacy loss distribution: a "
        "smaller epsilon for the same noise, so less noise for a "
        "--target_epsilon). Both analyse Poisson sampling; with "
        "--sampling=shuffle either gives the Poisson number by "
        "convention.", ACCOUNTANTS)

    DEFAULT_NOISE_MULTIPLIER = 1.0

    # l2_norm_clip, noise_multiplier's range and noise_seed are validated
    # once, by the run's DPConfig (RunConfig.dp).

    def _checks(self):
        positive = dict(low=0, low_open=True)
        return {
            "noise_multiplier": self._noise,
            "target_epsilon": lambda n, v: check_number(
                n, v, allow_none=True, **positive),
            "delta": lambda n, v: check_number(
                n, v, allow_none=True, high=1, high_open=True, **positive),
            "noise_schedule": self._schedule,
            "noise_decay": lambda n, v: check_number(
                n, v, allow_none=True, low=0),
            "noise_decay_period": lambda n, v: check_number(
                n, v, low=1, integer=True),
            "accountant": lambda n, v: check_choice(n, v, ACCOUNTANTS),
        }

    def _noise(self, name, value):
        if value is not None and self.target_epsilon is not None:
            raise ValueError(
                f"noise_multiplier={value!r} and target_epsilon="
                f"{self.target_epsilon!r}: give one or the other, not both "
                "(target_epsilon calibrates the noise multiplier).")
        return value

    def _schedule(self, name, value):
        check_choice(name, value, tuple(SCHEDULES))
        if value != "constant" and self.noise_decay is None:
            raise ValueError(
                f"noise_schedule={value!r} needs noise_decay= (the step "
                "factor in (0, 1], or the decay rate >= 0).")
        return value

    def resolved_noise_multiplier(self):
        """The noise multiplier given, or the default when no target is."""
        if self.noise_multiplier is None and self.target_epsilon is None:
            return self.DEFAULT_NOISE_MULTIPLIER
        return self.noise_multiplier


@dataclasses.dataclass(frozen=True)
class EngineConfig(_Section):
    """The clipping engine's options (defaults: the engine's own); with
    the recipe's augmentation they make :attr:`RunConfig.engine_options`."""

    clipping: str = _field(
        _default(EngineOptions, "clipping"),
        "clip: C / max(||g||, C); normalize: C / (||g|| + gamma); "
        "quantile: C follows a private quantile estimate (Andrew et al.), "
        "starting at --l2_norm_clip.", CLIPPING_MODES)
    gamma: float = _field(_default(EngineOptions, "gamma"),
                          "Stabilizer of --clipping=normalize.")
    target_quantile: float = _field(
        _default(QuantileClipping, "target_quantile"),
        "--clipping=quantile: the quantile of per-example norms C tracks.")
    physical_batch_size: int | None = _field(
        _default(EngineOptions, "physical_batch_size"),
        "Accumulate the clipped sums over chunks of this many examples "
        "(large logical batches in little memory).")

    # No checks of its own: RunConfig turns this section and the recipe's
    # into the engine's EngineOptions, which validates every value once.


@dataclasses.dataclass(frozen=True)
class RecipeConfig(_Section):
    """De et al.'s additions: augmentation multiplicity and an EMA."""

    augmentation_multiplicity: int = _field(
        _default(EngineOptions, "augmentation_multiplicity"),
        "K augmented copies per example, averaged before clipping (De et "
        "al.); 1: no augmentation.")
    crop_padding: int = _field(_default(RandomCropFlip, "padding"),
                               "Random-crop padding (pixels) for "
                               "augmentation multiplicity.")
    flip: bool = _field(_default(RandomCropFlip, "flip"),
                        "Random horizontal flips for augmentation "
                        "multiplicity (--noflip: none).")
    ema_decay: float | None = _field(
        None, "Keep an EMA of the weights with this decay (e.g. 0.9999) and "
        "evaluate and save it.")

    def _checks(self):
        # augmentation_multiplicity and crop_padding: validated by the
        # engine's options (RunConfig.engine_options), where they are used.
        return {"ema_decay": lambda n, v: check_number(
            n, v, allow_none=True, low=0, high=1, high_open=True)}


@dataclasses.dataclass(frozen=True)
class OutputConfig(_Section):
    """Where the run writes, and whether it continues an earlier one."""

    output_dir: str = _field("runs/train", "Where results go.")
    resume: bool = _field(False, "Continue from the last epoch checkpoint "
                          "in --output_dir.")
    change_privacy: bool = _field(
        False, "With --resume: continue with privacy settings that differ "
        "from the checkpoint's; epsilon composes both parts exactly.")
    overwrite: bool = _field(
        False, "Start over in an --output_dir that holds an earlier run's "
        "checkpoint (it is deleted).")
    verbose: int = _field(1, "Keras' progress output: 0, 1 or 2.")

    def _checks(self):
        def output_dir(name, value):
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError(f"{name}={value!r}: must be a folder path.")
            if os.path.exists(value) and not os.path.isdir(value):
                raise ValueError(
                    f"{name}={str(value)!r} is a file, not a folder: choose "
                    "another --output_dir or move the file away.")
            return str(value)

        return {"output_dir": output_dir,
                "verbose": lambda n, v: check_choice(n, v, (0, 1, 2))}


STRATEGIES = ("none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class DistributeConfig(_Section):
    """Where the run trains (docs/distributed.md)."""

    strategy: str = _field(
        "none", "none: one device; mirrored: every local GPU (or the "
        "--cpu_devices); multi_worker: every worker of TF_CONFIG's cluster "
        "(run the same command on each).", STRATEGIES)
    cpu_devices: int | None = _field(
        None, "Split the CPU into this many logical devices, one replica "
        "each (to try --strategy=mirrored without GPUs; no speed-up).")

    def _checks(self):
        return {"strategy": lambda n, v: check_choice(n, v, STRATEGIES),
                "cpu_devices": lambda n, v: check_number(
                    n, v, low=1, integer=True, allow_none=True)}


_SECTIONS = {"data": DataConfig, "model": ModelConfig,
             "optimizer": OptimizerConfig, "privacy": PrivacyConfig,
             "engine": EngineConfig, "recipe": RecipeConfig,
             "output": OutputConfig, "distribute": DistributeConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: one section per concern (see the module docstring)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=OptimizerConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    recipe: RecipeConfig = dataclasses.field(default_factory=RecipeConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    distribute: DistributeConfig = dataclasses.field(
        default_factory=DistributeConfig)
    #: The engine's options, made (and so validated) once from the engine
    #: and recipe sections: what compile_dp takes as ``engine_options=``.
    engine_options: EngineOptions = dataclasses.field(
        init=False, repr=False, compare=False)
    #: DP-SGD's settings, made (and so validated) once from the optimizer
    #: and privacy sections: what compile_dp takes as ``config=``. Its
    #: noise_multiplier is the one given (or the default); with
    #: target_epsilon it is 0.0 until the run's plan calibrates it, and the
    #: run always passes the plan's (``dataclasses.replace``).
    dp: DPConfig = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "dp", self._dp())
        object.__setattr__(self, "engine_options", self._engine_options())
        self._check_distribution()
        self._check_precompute()
        if (self.engine.clipping == "quantile"
                and self.privacy.noise_schedule != "constant"):
            raise ValueError(
                "clipping='quantile' with noise_schedule="
                f"{self.privacy.noise_schedule!r}: the count's share of the "
                "noise is fixed for a constant noise multiplier; use one or "
                "the other.")

    def _dp(self):
        privacy, optimizer = self.privacy, self.optimizer
        noise = privacy.resolved_noise_multiplier()
        return DPConfig(
            l2_norm_clip=privacy.l2_norm_clip,
            noise_multiplier=0.0 if noise is None else noise,
            learning_rate=optimizer.learning_rate,
            momentum=optimizer.momentum, noise_seed=privacy.noise_seed)

    def _engine_options(self):
        engine, recipe = self.engine, self.recipe
        # Made whatever the mode, so a bad value is refused even where it
        # would go unused.
        crops = RandomCropFlip(padding=recipe.crop_padding, flip=recipe.flip)
        quantile = QuantileClipping(
            target_quantile=engine.target_quantile,
            # With fixed-size batches the engine has no expected batch size
            # to default it from: the run's batch size is what it would be.
            count_stddev=QuantileClipping.default_count_stddev(
                self.optimizer.batch_size))
        return EngineOptions(
            clipping=engine.clipping, gamma=engine.gamma,
            physical_batch_size=engine.physical_batch_size,
            augmentation_multiplicity=recipe.augmentation_multiplicity,
            augment=crops if recipe.augmentation_multiplicity > 1 else None,
            quantile=quantile if engine.clipping == "quantile" else None)

    def _check_precompute(self):
        from keras_tempered_dp.models import FIXED_FRONT_MODELS
        if (self.model.model in FIXED_FRONT_MODELS
                and self.model.precompute_features
                and self.recipe.augmentation_multiplicity > 1):
            raise ValueError(
                f"model={self.model.model!r} with augmentation_multiplicity="
                f"{self.recipe.augmentation_multiplicity} and "
                "precompute_features=True: augmentation crops and flips "
                "images, and precomputed features are no longer images. "
                "Pass --noprecompute_features (the scattering then runs every "
                "step, on the augmented copies) or drop the augmentation.")

    def _check_distribution(self):
        strategy = self.distribute.strategy
        if self.distribute.cpu_devices is not None and strategy != "mirrored":
            raise ValueError(
                f"cpu_devices={self.distribute.cpu_devices} needs "
                f"strategy='mirrored' (strategy={strategy!r}).")
        if strategy != "multi_worker":
            return
        if self.data.sampling != "poisson":
            raise ValueError(
                "strategy='multi_worker' with sampling="
                f"{self.data.sampling!r}: every worker would shuffle on its "
                "own and one example could join a step twice. Use "
                "sampling='poisson' (each replica samples its own shard).")
        if self.output.resume:
            raise ValueError(
                "strategy='multi_worker' with resume=True is not supported: "
                "only the chief keeps a checkpoint. Resume with "
                "--strategy=mirrored or none (epsilon does not depend on it).")

    @classmethod
    def from_flat(cls, **settings):
        """A RunConfig from flat field names (the flags' and train()'s)."""
        owner = flat_names()
        unknown = [k for k in settings if k not in owner]
        if unknown:
            close = difflib.get_close_matches(unknown[0], owner, n=1)
            hint = f" Did you mean {close[0]}?" if close else (
                f" Known: {', '.join(sorted(owner))}.")
            raise TypeError(f"Unknown setting {unknown[0]!r}.{hint}")
        parts = {name: {} for name in _SECTIONS}
        for key, value in settings.items():
            parts[owner[key]][key] = value
        return cls(**{name: _SECTIONS[name](**values)
                      for name, values in parts.items()})

    def replace(self, **settings):
        """A copy with some flat fields changed."""
        return RunConfig.from_flat(**dict(self.flat(), **settings))

    def flat(self):
        """``{field: value}`` over every section."""
        return {k: v for name in _SECTIONS
                for k, v in dataclasses.asdict(getattr(self, name)).items()}


def flat_names():
    """``{field name: section name}`` for every field of every section."""
    return {f.name: name for name, section in _SECTIONS.items()
            for f in dataclasses.fields(section)}


def flag_fields(*sections):
    """``(field, default)`` pairs of ``sections`` (all by default), for the
    command line."""
    for name in sections or _SECTIONS:
        yield from dataclasses.fields(_SECTIONS[name])

"""What both backends' engines share: their settings, validated alone and
together, and their construction from arguments or a DPConfig."""

from keras_tempered_dp.privacy.config import DPConfig, EngineOptions
from keras_tempered_dp.privacy.state import attach
from keras_tempered_dp.validation import check_number, check_type


def _check_combination(options, num_microbatches, expected_batch_size):
    """Raises for settings that are valid alone but not together."""
    if num_microbatches is None:
        return
    if expected_batch_size is not None:
        raise ValueError(
            "expected_batch_size= (Poisson sampling) and num_microbatches= "
            "cannot be combined: use per-example clipping "
            "(num_microbatches=None) with Poisson sampling.")
    if options.augmentation_multiplicity > 1 \
            or options.physical_batch_size is not None:
        raise ValueError(
            "num_microbatches= cannot be combined with "
            "augmentation_multiplicity= or physical_batch_size=: both need "
            "per-example clipping (num_microbatches=None).")
    if options.clipping == "quantile":
        raise ValueError("clipping='quantile' needs per-example clipping "
                         "(num_microbatches=None).")


def checked_settings(config, expected_batch_size, options):
    """``(options, expected_batch_size)`` validated, alone and together
    with ``config``'s microbatches (both backends' engines)."""
    options = check_type(
        "options", EngineOptions() if options is None else options,
        EngineOptions, "an EngineOptions",
        hint="EngineOptions.from_flat(...) builds one from keyword names.")
    expected_batch_size = check_number(
        "expected_batch_size", expected_batch_size, low=0, low_open=True,
        allow_none=True)
    _check_combination(options, config.num_microbatches, expected_batch_size)
    return options, expected_batch_size


class EngineBase:
    """Construction, shared by both backends' engines: from the arguments
    or from a validated :class:`~keras_tempered_dp.privacy.config.DPConfig`;
    a subclass validates and keeps the settings in ``_setup``."""

    def __init__(self, l2_norm_clip, noise_multiplier, *,
                 num_microbatches=None, expected_batch_size=None, seed=None,
                 options=None):
        self._setup(DPConfig(l2_norm_clip=l2_norm_clip,
                             noise_multiplier=noise_multiplier,
                             learning_rate=None,
                             num_microbatches=num_microbatches,
                             noise_seed=seed),
                    expected_batch_size, options)

    @classmethod
    def from_config(cls, config, *, expected_batch_size=None, options=None):
        check_type("config", config, DPConfig, "a DPConfig")
        engine = object.__new__(cls)
        engine._setup(config, expected_batch_size, options)
        return engine

    def _setup(self, config, expected_batch_size, options):
        raise NotImplementedError

    def _attach(self, model, config):
        """Records ``config`` (by default this engine's settings) and the
        engine in the model's DPState; returns the model."""
        if config is None:
            config = DPConfig(
                l2_norm_clip=self.l2_norm_clip,
                noise_multiplier=self.noise_multiplier, learning_rate=None,
                num_microbatches=self.num_microbatches, optimizer="fast",
                noise_seed=self.seed)
        attach(model, config, engine=self)
        return model

"""RunConfig: one validated tree, defaults written once, flags from fields."""

import dataclasses

import pytest

from keras_tempered_dp.training import RunConfig
from keras_tempered_dp.training.config import flag_fields, flat_names


def test_every_field_is_one_flat_name_with_help():
    names = [f.name for f in flag_fields()]
    assert len(names) == len(set(names)) == len(flat_names())
    assert all(f.metadata["help"] for f in flag_fields())


def test_frozen_and_round_trips_through_flat():
    config = RunConfig.from_flat(dataset="digits", epochs=3,
                                 clipping="normalize", ema_decay=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimizer.epochs = 4
    assert RunConfig.from_flat(**config.flat()) == config
    assert config.replace(epochs=5).optimizer.epochs == 5
    assert config.replace(epochs=5).engine.clipping == "normalize"


def test_default_noise_only_without_a_target():
    assert RunConfig().privacy.resolved_noise_multiplier() == 1.0
    target = RunConfig.from_flat(target_epsilon=2.0)
    assert target.privacy.resolved_noise_multiplier() is None


def test_dp_settings_made_once_as_one_dp_config():
    """RunConfig.dp is what compile_dp takes as config=: the sections'
    clip, learning rate, momentum and seed, the given noise multiplier."""
    config = RunConfig.from_flat(l2_norm_clip=0.5, noise_multiplier=2.0,
                                 learning_rate=0.1, momentum=0.5,
                                 noise_seed=7)
    dp = config.dp
    assert (dp.l2_norm_clip, dp.noise_multiplier, dp.learning_rate,
            dp.momentum, dp.noise_seed, dp.optimizer) == (
                0.5, 2.0, 0.1, 0.5, 7, "fast")
    assert RunConfig().dp.noise_multiplier == 1.0  # the default
    # With a target the plan calibrates the noise; the run passes it.
    assert RunConfig.from_flat(target_epsilon=2.0).dp.noise_multiplier == 0


@pytest.mark.parametrize("settings, match", [
    (dict(noise_multiplier=-1.0), "noise_multiplier=-1.0"),
    (dict(noise_seed=-1), "noise_seed=-1"),
    (dict(learning_rate=0.0), "learning_rate=0.0: must be > 0"),
    (dict(momentum=1.0), r"momentum=1.0: must be in \[0, 1\)"),
    (dict(s=0.0), "s=0.0: must be > 0"),
    (dict(activation="swishy"), "not a known activation"),
    (dict(sampling="random"), "sampling='random'"),
    (dict(clipping="quantile", noise_schedule="step", noise_decay=0.5),
     "quantile"),
    (dict(target_quantile=1.0), "target_quantile=1.0"),
    (dict(gamma=0.0), "gamma=0.0: must be > 0"),
    (dict(physical_batch_size=0), "physical_batch_size=0"),
    (dict(batch_size=True), "batch_size=True: must be an integer"),
    (dict(epochs=2.5), "epochs=2.5: must be an integer"),
    (dict(l2_norm_clip=float("nan")), "l2_norm_clip=nan: must be finite"),
    (dict(ema_decay=1.0), "ema_decay=1.0"),
])
def test_bad_values_name_the_field(settings, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_flat(**settings)

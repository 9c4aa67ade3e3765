import dataclasses

import pytest

from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.privacy.config import (
    ENGINE_OPTIONS,
    DPConfig,
    EngineOptions,
    QuantileClipping,
)


def test_valid_config_normalizes_numbers():
    config = DPConfig(l2_norm_clip=1, noise_multiplier=0, learning_rate=2,
                      num_microbatches=4)
    assert config.l2_norm_clip == 1.0 and config.noise_multiplier == 0.0
    assert config.num_microbatches == 4
    assert type(config.l2_norm_clip) is float


@pytest.mark.parametrize("field,value,message", [
    ("l2_norm_clip", 0, "must be > 0"),
    ("l2_norm_clip", -1.0, "must be > 0"),
    ("l2_norm_clip", float("nan"), "finite"),
    ("noise_multiplier", -1.0, "must be >= 0"),
    ("noise_multiplier", float("inf"), "finite"),
    ("learning_rate", 0.0, "must be > 0"),
    ("momentum", 1.0, r"\[0, 1\)"),
    ("num_microbatches", 0, "must be >= 1"),
    ("num_microbatches", 2.5, "must be an integer or None"),
    ("optimizer", "adam", "must be one of"),
])
def test_bad_field_is_named_with_its_value(field, value, message):
    kwargs = dict(l2_norm_clip=1.0, noise_multiplier=1.0)
    kwargs[field] = value
    with pytest.raises(ValueError, match=rf"^{field}=.*{message}"):
        DPConfig(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: DPConfig(l2_norm_clip=1.0, noise_multiplier=1.0),
    lambda: EngineOptions(),
    lambda: QuantileClipping(),
], ids=["dp_config", "engine_options", "quantile"])
def test_frozen(make):
    config = make()
    field = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, None)


def test_engine_option_defaults_and_flat_names():
    assert ENGINE_OPTIONS == (
        "clipping", "gamma", "augmentation_multiplicity", "augment",
        "physical_batch_size", "target_quantile", "clip_learning_rate",
        "count_stddev")
    assert EngineOptions.from_flat() == EngineOptions(
        clipping="clip", gamma=0.01, augmentation_multiplicity=1,
        augment=None, physical_batch_size=None, quantile=None)
    assert EngineOptions(clipping="quantile").quantile == QuantileClipping(
        target_quantile=0.5, clip_learning_rate=0.2, count_stddev=None)


def test_from_flat_routes_quantile_names():
    options = EngineOptions.from_flat(clipping="quantile", gamma=0.1,
                                      target_quantile=0.6, count_stddev=3)
    assert options.gamma == 0.1
    assert options.quantile == QuantileClipping(target_quantile=0.6,
                                                count_stddev=3.0)


def test_from_flat_refuses_unknown_names_listing_the_known_ones():
    with pytest.raises(TypeError, match=r"\['gama'\].*'gamma'.*"
                       r"'count_stddev'"):
        EngineOptions.from_flat(gama=0.1)


def test_quantile_settings_need_quantile_clipping():
    with pytest.raises(ValueError, match="clipping='quantile'"):
        EngineOptions.from_flat(clipping="normalize", target_quantile=0.3)


def test_default_augmentation_decided_once():
    assert EngineOptions(augmentation_multiplicity=1).augment is None
    default = EngineOptions(augmentation_multiplicity=4).augment
    assert isinstance(default, RandomCropFlip)
    assert (default.padding, default.flip) == (4, True)
    mine = RandomCropFlip(padding=2)
    assert EngineOptions(augmentation_multiplicity=4,
                         augment=mine).augment is mine


def test_count_stddev_default_is_the_expected_batch_over_20():
    assert QuantileClipping().count_stddev_for(256) == 12.8
    assert QuantileClipping(count_stddev=1.0).count_stddev_for(256) == 1.0
    with pytest.raises(ValueError, match="expected_batch_size"):
        QuantileClipping().count_stddev_for(None)


@pytest.mark.parametrize("cls,field,value,message", [
    (EngineOptions, "clipping", "auto", "must be one of clip, normalize"),
    (EngineOptions, "gamma", 0.0, "must be > 0"),
    (EngineOptions, "gamma", "big", "must be a number"),
    (EngineOptions, "augmentation_multiplicity", 0, "must be >= 1"),
    (EngineOptions, "augmentation_multiplicity", True, "must be an integer"),
    (EngineOptions, "physical_batch_size", 2.0,
     "must be an integer or None"),
    (EngineOptions, "augment", "flip", "must be a function"),
    (QuantileClipping, "target_quantile", 1.0, r"must be in \(0, 1\)"),
    (QuantileClipping, "clip_learning_rate", 0.0, "must be > 0"),
    (QuantileClipping, "count_stddev", -1.0, "must be >= 0"),
])
def test_bad_engine_option_is_named_with_its_value(cls, field, value,
                                                    message):
    with pytest.raises(ValueError, match=rf"^{field}={value!r}: {message}"):
        cls(**{field: value})


def test_quantile_must_be_a_quantile_clipping():
    with pytest.raises(TypeError, match="^quantile=.*QuantileClipping"):
        EngineOptions(clipping="quantile", quantile={"target_quantile": 0.3})

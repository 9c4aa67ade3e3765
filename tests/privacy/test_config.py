import pytest

from keras_tempered_dp.privacy.config import DPConfig


def test_valid_config_normalizes_numbers():
    config = DPConfig(l2_norm_clip=1, noise_multiplier=0, learning_rate=2,
                      num_microbatches=4)
    assert config.l2_norm_clip == 1.0 and config.noise_multiplier == 0.0
    assert config.num_microbatches == 4


@pytest.mark.parametrize("field,value,message", [
    ("l2_norm_clip", 0, "must be > 0"),
    ("l2_norm_clip", -1.0, "must be > 0"),
    ("l2_norm_clip", float("nan"), "finite"),
    ("noise_multiplier", -1.0, "must be >= 0"),
    ("noise_multiplier", float("inf"), "finite"),
    ("learning_rate", 0.0, "must be > 0"),
    ("momentum", 1.0, r"\[0, 1\)"),
    ("num_microbatches", 0, "positive integer"),
    ("num_microbatches", 2.5, "positive integer"),
    ("optimizer", "adam", "must be one of"),
])
def test_bad_field_is_named_with_its_value(field, value, message):
    kwargs = dict(l2_norm_clip=1.0, noise_multiplier=1.0)
    kwargs[field] = value
    with pytest.raises(ValueError, match=rf"^{field}=.*{message}"):
        DPConfig(**kwargs)


def test_frozen():
    config = DPConfig(l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(Exception):
        config.noise_multiplier = 0.0

"""The ViT, the token encoder and the sequential LSTM: shapes, parameter
counts, refusals, and one DP step of each against the per-example
reference (tests/privacy/reference.py)."""

import keras
import numpy as np
import pytest

from keras_tempered_dp import TemperedSigmoid
from keras_tempered_dp.activations import get_activation
from keras_tempered_dp.models import (
    MODELS,
    sequence_lstm,
    transformer_encoder,
    vit,
)
from keras_tempered_dp.privacy.traversal import clip_units, walk_layers
from tests.privacy.clipping.support import _assert_matches_reference


def test_registered_for_the_command_line():
    assert MODELS["vit"] is vit and MODELS["sequence_lstm"] is sequence_lstm


def test_vit_tokens_and_count():
    model = vit("gelu")
    assert model.count_params() == 71946
    assert tuple(model.get_layer("positions").output.shape) == (None, 16, 64)
    assert model.output.shape[-1] == 10
    # no BatchNorm; attention's own Dropout at rate 0
    layers = [layer for _, layer in walk_layers(model)]
    assert not any("BatchNorm" in type(layer).__name__ for layer in layers)
    assert all(layer.rate == 0 for layer in layers
               if isinstance(layer, keras.layers.Dropout))


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh",
                                        TemperedSigmoid(s=2, T=2, o=1)])
def test_vit_activation_in_every_mlp(activation):
    model = vit(activation, depth=3)
    acts = [layer for layer in model.layers if layer.name.endswith("_act")]
    assert len(acts) == 3
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1))
    assert np.all(np.isfinite(model(x)))


def test_bad_shapes_refused_with_the_argument():
    with pytest.raises(ValueError, match="width=30, heads=4"):
        vit(width=30)
    with pytest.raises(ValueError, match="patch_size=40"):
        vit(patch_size=40)
    with pytest.raises(ValueError, match="depth=0"):
        transformer_encoder(depth=0)
    with pytest.raises(ValueError, match="register_activation"):
        sequence_lstm(TemperedSigmoid(s=3, T=1, o=1))


def test_lstm_activation_by_name():
    model = sequence_lstm(TemperedSigmoid(s=2, T=2, o=1), width=8)
    lstm = model.get_layer("lstm")
    function = get_activation("tempered_sigmoid")
    assert lstm.cell.activation is function
    # the activation is saved by its registered name and comes back
    again = keras.layers.LSTM.from_config(lstm.get_config())
    assert again.cell.activation is function
    assert tuple(model.get_layer("rows").output.shape) == (None, 28, 28)


def test_attention_is_clipped_through_its_projections():
    names = [unit.name for unit in clip_units(vit(depth=1))]
    assert names == ["patch_embedding", "positions", "block1_ln1", "query",
                     "key", "value", "attention_output", "block1_ln2",
                     "block1_mlp1", "block1_mlp2", "final_ln", "logits"]


def _images(shape, n=6):
    return np.random.default_rng(0).normal(size=(n,) + shape).astype(
        "float32")


@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("build, x", [
    (lambda: vit("tempered_sigmoid", input_shape=(8, 8, 1), patch_size=4,
                 width=8, heads=2, mlp_dim=8), _images((8, 8, 1))),
    (lambda: transformer_encoder("gelu", sequence_length=5,
                                 vocabulary_size=11, num_classes=3, width=8,
                                 depth=2, heads=2),
     np.random.default_rng(1).integers(0, 11, (6, 5)).astype("int32")),
    (lambda: sequence_lstm("tanh", input_shape=(5, 4, 1), num_classes=3,
                           width=4), _images((5, 4, 1))),
], ids=["vit", "encoder", "lstm"])
def test_one_step_matches_per_example_reference(build, x, num_groups):
    keras.utils.set_random_seed(0)
    model = build()
    y = (np.arange(6) % 3).astype("int32")
    # attention's key bias has gradient 0 exactly: compared on the scale
    # of the other weights.
    _assert_matches_reference(model, x, y, num_groups, floor=1e-2)

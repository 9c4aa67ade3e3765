"""KerasHub backbones, built offline from tiny configs with random weights.

Each backbone under a small head (a sequence classifier, or a language
model whose output layer is the token embedding reversed: tied weights),
trained in full or with ``backbone.enable_lora(r)`` so that only the
adapters (and the adapted layers' biases) train, matches the independent
per-example reference (tests/privacy/reference.py) per example and per
microbatch. The adapters are set to random values first: ``lora_kernel_b``
starts at zero, which would make the adapters' first gradient 0 for
``A`` and hide a wrong one.

Presets download weights and are out of reach offline; their recipe is in
docs/engine.md. KerasHub needs Keras 3: skipped on the legacy stack.
"""

import keras
import numpy as np
import pytest

from tests.privacy.clipping.support import L, _assert_matches_reference

keras_hub = pytest.importorskip("keras_hub")

V, S, N = 40, 6, 6  # vocabulary, sequence length, batch
TINY = dict(num_layers=2, hidden_dim=8, intermediate_dim=16)


def bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=V, num_heads=2, max_sequence_length=S, dropout=0.0,
        **TINY)


def gpt2():
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=V, num_heads=2, max_sequence_length=S, dropout=0.0,
        **TINY)


def gemma():
    # grouped-query attention (2 query heads share 1 key/value head), RMS
    # norms, gated feed-forward
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=V, num_query_heads=2, num_key_value_heads=1,
        head_dim=4, dropout=0.0, **TINY)


def vit():
    return keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 1), patch_size=4, num_layers=2, num_heads=2,
        hidden_dim=8, mlp_dim=16)


def _token_inputs(backbone):
    names = ["token_ids", "padding_mask"]
    if isinstance(backbone, keras_hub.models.BertBackbone):
        names.append("segment_ids")
    return {name: keras.Input((S,), dtype="int32", name=name)
            for name in names}


def _token_data(backbone, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((N, S), "int32")
    mask[::2, -2:] = 0  # padded examples
    data = {"token_ids": rng.integers(0, V, (N, S)).astype("int32"),
            "padding_mask": mask}
    if isinstance(backbone, keras_hub.models.BertBackbone):
        data["segment_ids"] = (rng.random((N, S)) < 0.5).astype("int32")
    return data


def _sequence_output(backbone, inputs):
    out = backbone(inputs)
    return out["sequence_output"] if isinstance(out, dict) else out


def classifier(backbone):
    """Mean-pooled sequence (or image tokens) under a Dense head; a BERT's
    pooler is then unused (its gradient is 0 on both sides)."""
    if isinstance(backbone, keras_hub.models.ViTBackbone):
        inputs = keras.Input((8, 8, 1))
    else:
        inputs = _token_inputs(backbone)
    h = L.GlobalAveragePooling1D()(_sequence_output(backbone, inputs))
    return keras.Model(inputs, L.Dense(3)(h))


def tied_lm(backbone):
    """A language model over the last position whose output layer is the
    token embedding reversed (GPT-2's and Gemma's own heads): one
    ReversibleEmbedding called twice, its gradient the sum of both calls."""
    inputs = _token_inputs(backbone)
    h = _sequence_output(backbone, inputs)[:, -1]
    return keras.Model(inputs, backbone.token_embedding(h, reverse=True))


def _with_random_adapters(backbone, rank=2, seed=1):
    backbone.enable_lora(rank)
    rng = np.random.default_rng(seed)
    adapters = [v for v in backbone.trainable_weights if "lora" in v.path]
    assert adapters, "enable_lora added no adapters"
    for v in adapters:
        v.assign(0.3 * rng.normal(size=v.shape).astype("float32"))
    return backbone


def _data(model, backbone, classes):
    if isinstance(backbone, keras_hub.models.ViTBackbone):
        x = np.random.default_rng(0).normal(size=(N, 8, 8, 1))
        x = x.astype("float32")
    else:
        x = _token_data(backbone)
    return x, (np.arange(N) % classes).astype("int32")


CASES = [(bert, classifier), (gpt2, classifier), (gemma, classifier),
         (vit, classifier), (gpt2, tied_lm), (gemma, tied_lm)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("make, head", CASES,
                         ids=lambda f: getattr(f, "__name__", ""))
def test_backbone_matches_per_example_reference(make, head, num_groups,
                                                lora):
    keras.utils.set_random_seed(0)
    backbone = make()
    if lora:
        backbone = _with_random_adapters(backbone)
    model = head(backbone)
    classes = V if head is tied_lm else 3
    x, y = _data(model, backbone, classes)
    # attention's key bias has gradient 0 exactly (softmax is shift
    # invariant): compared on the scale of the other weights.
    _assert_matches_reference(model, x, y, num_groups, floor=1e-2)


def test_lora_trains_only_the_adapters_and_biases():
    keras.utils.set_random_seed(0)
    model = classifier(_with_random_adapters(gpt2()))
    names = {v.path.split("/")[-1] for v in model.trainable_weights}
    assert names == {"lora_kernel_a", "lora_kernel_b", "bias", "kernel"}
    # the only trainable kernel is the head's
    kernels = [v.path for v in model.trainable_weights
               if v.path.endswith("/kernel")]
    assert kernels == [model.layers[-1].kernel.path]


@pytest.mark.parametrize("make", [bert, gpt2, gemma],
                         ids=lambda f: f.__name__)
def test_embeddings_and_norms_take_their_norm_functions(make, caplog):
    """Token, position and tied embeddings and RMS norms are clipped by
    their registered functions (norms/keras_hub.py,
    norms/reversible_embedding.py), not by per-example recomputation."""
    from tests.privacy.clipping.support import _install

    keras.utils.set_random_seed(0)
    backbone = make()
    model = tied_lm(backbone) if make is not bert else classifier(backbone)
    x, y = _data(model, backbone, V if make is not bert else 3)
    engine = _install(model)
    with caplog.at_level("INFO", logger="keras_tempered_dp"):
        engine.compute_gradients(
            {k: keras.ops.convert_to_tensor(v) for k, v in x.items()},
            keras.ops.convert_to_tensor(y))
    generic = " ".join(r.getMessage() for r in caplog.records
                       if "generic route" in r.getMessage())
    for kind in ("ReversibleEmbedding", "PositionEmbedding",
                 "RMSNormalization", "Embedding"):
        assert f"({kind})" not in generic, generic


def _sequence_model(layer_between):
    inputs = keras.Input((S, 4))
    h = layer_between(L.Dense(4, activation="tanh")(inputs))
    return keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))


@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("layer", [
    # a table longer than the sequence: its last rows get gradient 0
    lambda: _Added(keras_hub.layers.PositionEmbedding(S + 3)),
    lambda: keras_hub.layers.RMSNormalization(input_dim=4),
], ids=["position_embedding_longer_table", "rms_normalization"])
def test_hub_layers_match_per_example_reference(layer, num_groups, caplog):
    keras.utils.set_random_seed(0)
    model = _sequence_model(layer())
    x = np.random.default_rng(0).normal(size=(N, S, 4)).astype("float32")
    with caplog.at_level("INFO", logger="keras_tempered_dp"):
        _assert_matches_reference(model, x,
                                  (np.arange(N) % 3).astype("int32"),
                                  num_groups)
    # their own norm functions, not the generic route
    assert not [r for r in caplog.records if "generic" in r.getMessage()]


@pytest.mark.parametrize("num_groups", [None, 2])
def test_position_embedding_broadcast_over_more_axes(num_groups):
    """Inputs ``[B, X, S, D]``: the table is broadcast over X, and one
    example's gradient sums its X rows (not X examples)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2, 3, 5))
    h = _Added(keras_hub.layers.PositionEmbedding(6))(inputs)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 5)).astype("float32")
    _assert_matches_reference(model, x, (np.arange(4) % 3).astype("int32"),
                              num_groups)


def test_position_embedding_norms_with_unknown_sequence_length():
    """The norm function traced with the sequence length unknown (batches
    padded per batch) gives each example's ``||dz_b||^2``."""
    import tensorflow as tf

    from keras_tempered_dp.privacy.clipping.backend.tensorflow.norms.keras_hub import (
        position_table_sq_norms,
    )

    class _NoArguments:
        arguments = ((), {})

    layer = keras_hub.layers.PositionEmbedding(6)
    layer.build((None, None, 5))

    @tf.function(input_signature=[tf.TensorSpec([None, None, 5])])
    def norms(dz):
        result = position_table_sq_norms(layer, dz, dz, None, _NoArguments())
        return result.sq_norms, result.clipped_sum(tf.ones_like(
            result.sq_norms))[0]

    dz = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    sq_norms, table = norms(dz)
    np.testing.assert_allclose(sq_norms, (dz ** 2).sum(axis=(1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(table[:3], dz.sum(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(table[3:], 0)


class _Added(L.Layer):
    """``x + PositionEmbedding(x)``, as KerasHub's embeddings use it."""

    def __init__(self, positions, **kwargs):
        super().__init__(**kwargs)
        self.positions = positions

    def call(self, x):
        return x + self.positions(x)


@pytest.mark.jax_backend
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("make, head", CASES,
                         ids=lambda f: getattr(f, "__name__", ""))
def test_backbone_matches_per_example_reference_on_jax(make, head, lora):
    """The backbones on JAX, in microbatches: the shared Dense, EinsumDense,
    LayerNormalization functions for their units, the replay for the rest
    (KerasHub's own layers are TensorFlow-registered; the tied embedding,
    called twice, is replayed with its cross terms)."""
    if keras.backend.backend() != "jax":
        pytest.skip("on TensorFlow: test_backbone_matches_per_example_"
                    "reference")
    test_backbone_matches_per_example_reference(make, head, 3, lora)

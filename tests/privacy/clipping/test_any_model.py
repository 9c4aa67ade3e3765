"""Any Keras model: attention, recurrent, wrapped, shared and composite layers.

Each model's clipped mean gradient (noise 0) equals the independent
per-example reference (tests/privacy/reference.py: one tape per example on
the whole model), per example and per microbatch, with examples on both
sides of the clip. The units each model is clipped through
(privacy/traversal.py) are checked too.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.privacy.traversal import clip_units
from tests.privacy.clipping.support import (
    L,
    _assert_matches_reference,
    _install,
)

T, D = 5, 6  # sequence length, features


def _sequences(n=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, T, D)).astype(
        "float32")


def _labels(n=6):
    return (np.arange(n) % 3).astype("int32")


def _classifier(body):
    inputs = keras.Input((T, D))
    return keras.Model(inputs, L.Dense(3)(body(inputs)))


def attention(x):
    a = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    return L.GlobalAveragePooling1D()(L.LayerNormalization()(x + a))


def cross_attention(x):
    # query, key and value from different tensors: the key's projection
    # sees another input than the query's.
    other = L.Dense(D, activation="tanh")(x)
    a = L.MultiHeadAttention(3, 2, value_dim=4, name="mha")(x, other, other)
    return L.Flatten()(a)


def einsum_projection(x):
    # attention's own equation, heads split out, bias on two axes
    h = L.EinsumDense("abc,cde->abde", (T, 2, 3), bias_axes="de",
                      activation="tanh")(x)
    return L.Flatten()(L.EinsumDense("...de,def->...f", 4, bias_axes="f")(h))


def lstm(x):
    return L.LSTM(4)(x)


def gru_sequence(x):
    return L.Flatten()(L.GRU(3, return_sequences=True)(x))


def simple_rnn(x):
    return L.SimpleRNN(3, activation="tanh")(x)


def lstm_sequence_relu_no_bias(x):
    return L.Flatten()(L.LSTM(3, activation="relu", use_bias=False,
                              return_sequences=True)(x))


def gru_last(x):
    return L.GRU(4, activation="tempered_sigmoid")(x)


def rnn_stack(x):
    # two recurrent units, the second reading the first's sequence
    return L.LSTM(3)(L.GRU(4, return_sequences=True)(x))


def lstm_backwards(x):
    return L.LSTM(3, go_backwards=True)(x)


def bidirectional_sum_sequence(x):
    return L.Flatten()(L.Bidirectional(
        L.GRU(3, return_sequences=True), merge_mode="sum")(x))


def bidirectional_mul(x):
    return L.Bidirectional(L.LSTM(3), merge_mode="mul")(x)


def gru_reset_before(x):
    return L.GRU(3, reset_after=False)(x)


def bidirectional(x):
    return L.Bidirectional(L.SimpleRNN(3))(x)


def time_distributed(x):
    return L.Flatten()(L.TimeDistributed(L.Dense(2, activation="tanh"))(x))


def shared_dense(x):
    # one layer called twice: its gradient is the sum over both calls
    shared = L.Dense(D, activation="tanh", name="shared")
    return L.Flatten()(shared(shared(x)))


class _Gated(L.Layer):
    """A composite layer: a weight of its own and a sublayer."""

    def build(self, shape):
        self.inner = L.Dense(shape[-1])
        self.gate = self.add_weight(name="gate", shape=(shape[-1],),
                                    initializer="ones")

    def call(self, x):
        # keras.ops on Keras 3 (any backend), tf on Keras 2
        tanh = keras.ops.tanh if hasattr(keras, "ops") else tf.tanh
        return self.inner(x) * tanh(self.gate)


def composite(x):
    return L.Flatten()(_Gated()(x))


BODIES = [attention, cross_attention, einsum_projection, lstm, gru_sequence,
          simple_rnn, lstm_sequence_relu_no_bias, gru_last, rnn_stack,
          lstm_backwards, gru_reset_before, bidirectional,
          bidirectional_sum_sequence, bidirectional_mul, time_distributed,
          shared_dense, composite]


RECURRENT = [lstm, gru_sequence, simple_rnn, lstm_sequence_relu_no_bias,
             gru_last, rnn_stack, lstm_backwards, gru_reset_before,
             bidirectional, bidirectional_sum_sequence, bidirectional_mul]


@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
@pytest.mark.jax_backend
def test_matches_per_example_reference(body, num_groups):
    if body is cross_attention and keras.backend.backend() == "jax":
        pytest.skip("Keras 3.15's MultiHeadAttention with value_dim != "
                    "key_dim fails on JAX itself, in any training step "
                    "(jax.nn.dot_product_attention checks the shapes)")
    keras.utils.set_random_seed(0)
    model = _classifier(body)
    if body in RECURRENT:
        # biases start at zero: a bias put in the wrong place of a cell's
        # formula would not change the outputs the route checks.
        rng = np.random.default_rng(0)
        for w in model.trainable_weights:
            w.assign(0.5 * rng.normal(size=w.shape).astype("float32"))
    # attention's key bias has gradient 0 exactly (softmax is shift
    # invariant): compare it on the scale of the other weights.
    _assert_matches_reference(model, _sequences(), _labels(), num_groups,
                              floor=1e-2 if "attention" in body.__name__
                              else 0.0)


@pytest.mark.jax_backend
def test_units_of_each_model():
    def units(body):
        return [type(u).__name__ for u in clip_units(_classifier(body))]

    # attention through its four projections, whatever nests them
    assert units(attention) == ["EinsumDense"] * 4 + [
        "LayerNormalization", "Dense"]
    # recurrent and wrapped layers as wholes; composite layers too
    assert units(lstm) == ["LSTM", "Dense"]
    assert units(bidirectional) == ["Bidirectional", "Dense"]
    assert units(time_distributed) == ["TimeDistributed", "Dense"]
    assert units(composite) == ["_Gated", "Dense"]
    # a shared layer is one unit
    assert units(shared_dense) == ["Dense", "Dense"]


def _lora_model(layer, flat):
    inputs = keras.Input((T, D))
    h = layer(L.Flatten()(inputs) if flat else inputs)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))
    layer.enable_lora(2)
    rng = np.random.default_rng(1)
    # lora_kernel_b starts at 0, which would make A's gradient 0
    layer.lora_kernel_a.assign(rng.normal(size=layer.lora_kernel_a.shape))
    layer.lora_kernel_b.assign(rng.normal(size=layer.lora_kernel_b.shape))
    return model


@pytest.mark.skipif(not hasattr(L.Dense, "enable_lora"),
                    reason="LoRA layers are Keras 3's")
@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("make, flat", [
    # a sequence: materialized outer products
    (lambda: L.Dense(4, activation="tanh"), False),
    # one position: the ghost norm of the adapters' outer products
    (lambda: L.Dense(5, use_bias=False), True),
    (lambda: L.EinsumDense("abc,cde->abde", (T, 2, 3), bias_axes="de"),
     False),
], ids=["dense_sequence", "dense_flat_no_bias", "einsum"])
@pytest.mark.jax_backend
def test_lora_layers_match_per_example_reference(make, flat, num_groups):
    keras.utils.set_random_seed(0)
    layer = make()
    model = _lora_model(layer, flat)
    assert not layer._kernel.trainable
    _assert_matches_reference(model, _sequences(), _labels(), num_groups)


@pytest.mark.skipif(not hasattr(L.Dense, "enable_lora"),
                    reason="a variable's trainable flag is settable on "
                    "Keras 3 only")
@pytest.mark.jax_backend
def test_frozen_bias_dense_matches_per_example_reference():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, D))
    layer = L.Dense(4, activation="tanh")
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(layer(inputs))))
    layer.bias.trainable = False
    _assert_matches_reference(model, _sequences(), _labels())


def test_generic_route_is_logged_once_per_layer(caplog):
    keras.utils.set_random_seed(0)
    shared = L.Dense(D, activation="tanh", name="shared")
    model = _classifier(lambda x: L.Flatten()(
        shared(shared(x)) + L.TimeDistributed(L.Dense(D),
                                              name="rnn")(x)))
    engine = _install(model)
    x, y = tf.constant(_sequences()), tf.constant(_labels())
    with caplog.at_level("INFO", logger="keras_tempered_dp"):
        engine.compute_gradients(x, y)
        engine.compute_gradients(x, y)
    lines = [r.getMessage() for r in caplog.records
             if "generic route" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "'shared' (Dense)" in lines[0] and "called 2 times" in lines[0]
    assert "'rnn' (TimeDistributed)" in lines[1]
    assert "no norm function" in lines[1]


def test_recurrent_layers_take_the_time_step_route(caplog):
    """LSTM, GRU and SimpleRNN are clipped from one batched backward pass
    (norms/recurrent.py); options outside its formulas go to the generic
    route, and say so."""
    keras.utils.set_random_seed(0)
    model = _classifier(lambda x: L.Concatenate()([
        L.LSTM(2, name="fast_lstm")(x), L.GRU(2, name="fast_gru")(x),
        L.SimpleRNN(2, name="fast_rnn")(x),
        L.Bidirectional(L.LSTM(2), name="fast_bidirectional")(x),
        L.GRU(2, reset_after=False, name="reset_before")(x)]))
    engine = _install(model)
    with caplog.at_level("INFO", logger="keras_tempered_dp"):
        engine.compute_gradients(tf.constant(_sequences()),
                                 tf.constant(_labels()))
    lines = [r.getMessage() for r in caplog.records
             if "generic route" in r.getMessage()]
    assert len(lines) == 1 and "'reset_before' (GRU)" in lines[0], lines
    assert "reset_after=False" in lines[0]


def test_time_step_route_checks_its_recomputation(monkeypatch):
    """The unrolled recomputation is compared with the recorded outputs: a
    cell whose arithmetic differed from the route's formulas would fail
    the step, not be clipped with another function's norms."""
    from keras_tempered_dp.privacy.clipping.backend.tensorflow.norms import (
        recurrent,
    )

    def forget_gate_swapped(cell, x_proj, h_proj, state):
        i, f, g, o = tf.split(x_proj + h_proj, 4, axis=-1)
        swapped = tf.concat([f, i, g, o], axis=-1)
        return recurrent._lstm_step(cell, swapped, tf.zeros_like(swapped),
                                    state)

    monkeypatch.setitem(recurrent._STEPS, L.LSTM, (forget_gate_swapped, 2))
    keras.utils.set_random_seed(0)
    engine = _install(_classifier(lambda x: L.LSTM(3)(x)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="time-step recomputation differs"):
        engine.compute_gradients(tf.constant(_sequences()),
                                 tf.constant(_labels()))


def test_relu_lstm_with_large_outputs_matches_per_example_reference():
    """A ReLU LSTM whose outputs grow into the hundreds amplifies round-off
    step after step: the route adds in Keras' order, (x K + h R) + b, so
    its recomputation is Keras' to the last bit, and the gradients match
    the reference. In another order the Fashion-MNIST run drifted by
    1.3e-4 of the outputs and the gradients here by 3%."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28))
    lstm = L.LSTM(16, activation="relu")
    model = keras.Model(inputs, L.Dense(3)(lstm(inputs)))
    rng = np.random.default_rng(1)
    for w in model.trainable_weights:
        w.assign(0.5 * rng.normal(size=w.shape).astype("float32"))
    x = np.random.default_rng(0).normal(size=(64, 28, 28)).astype("float32")
    assert np.abs(lstm(x)).max() > 50  # large outputs
    _assert_matches_reference(model, x, _labels(64))


def _tied_language_model(cap, tie, last_only):
    """Tokens looked up, mixed, and turned into logits by the same table
    reversed (tied) or by its own reverse table; logits of every position
    (a sequence loss) or of the last one."""
    inputs = keras.Input((T,), dtype="int32")
    table = L.ReversibleEmbedding(7, 4, tie_weights=tie,
                                  logit_soft_cap=cap, name="table")
    h = L.Dense(4, activation="tanh")(table(inputs))
    if last_only:
        return keras.Model(inputs, table(h[:, -1], reverse=True))
    return keras.Model(inputs, L.Flatten()(table(h, reverse=True)))


@pytest.mark.skipif(not hasattr(L, "ReversibleEmbedding"),
                    reason="ReversibleEmbedding is Keras 3's")
@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("cap, tie, last_only", [
    (None, True, True), (None, True, False), (0.1, True, True),
    (None, False, False)], ids=["tied_last", "tied_sequence",
                                "tied_soft_cap", "untied"])
@pytest.mark.jax_backend
def test_reversible_embedding_matches_per_example_reference(
        cap, tie, last_only, num_groups, caplog):
    keras.utils.set_random_seed(0)
    model = _tied_language_model(cap, tie, last_only)
    # few tokens, so that ids repeat within an example
    x = np.random.default_rng(0).integers(0, 7, (6, T)).astype("int32")
    y = np.random.default_rng(1).integers(0, 7 if last_only else 7 * T,
                                          6).astype("int32")
    with caplog.at_level("INFO", logger="keras_tempered_dp"):
        _assert_matches_reference(model, x, y, num_groups)
    assert not [r for r in caplog.records if "'table'" in r.getMessage()]

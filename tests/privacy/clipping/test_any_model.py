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
from tests.privacy.clipping.support import L, _assert_matches_reference

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
        return self.inner(x) * tf.tanh(self.gate)


def composite(x):
    return L.Flatten()(_Gated()(x))


BODIES = [attention, cross_attention, einsum_projection, lstm, gru_sequence,
          simple_rnn, bidirectional, time_distributed, shared_dense, composite]


@pytest.mark.parametrize("num_groups", [None, 3])
@pytest.mark.parametrize("body", BODIES, ids=lambda f: f.__name__)
def test_matches_per_example_reference(body, num_groups):
    keras.utils.set_random_seed(0)
    model = _classifier(body)
    # attention's key bias has gradient 0 exactly (softmax is shift
    # invariant): compare it on the scale of the other weights.
    _assert_matches_reference(model, _sequences(), _labels(), num_groups,
                              floor=1e-2 if "attention" in body.__name__
                              else 0.0)


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

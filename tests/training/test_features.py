"""The precomputed features: the same numbers as kymatio and as the layer's
own call, whatever the chunking, and a cache that only ever returns the
features of the same images."""

import os

import keras
import numpy as np

from keras_tempered_dp.layers import Scattering2D
from keras_tempered_dp.training import features

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                         "layers", "reference", "scattering_kymatio.npz")


def _front(shape, **kwargs):
    return keras.Sequential([keras.Input(shape), Scattering2D(**kwargs)])


def test_precomputed_scattering_matches_kymatio():
    """Through scatter()'s compiled path (XLA on the current stack): within
    1e-6 of the largest coefficient of kymatio 0.3.0's, as the layer."""
    with np.load(REFERENCE) as ref:
        x = ref["grey28_J2_L8/x"][..., None].astype("float32")
        S = ref["grey28_J2_L8/S"].transpose(0, 2, 3, 1)  # [3, 7, 7, 81]
    features.clear_feature_cache()
    train, test, _ = features.precompute(_front((28, 28, 1)), x[:2], x[2:])
    np.testing.assert_allclose(np.concatenate([train, test]), S, rtol=0,
                               atol=1e-6 * np.abs(S).max())


def test_chunks_padding_and_order_do_not_change_the_result():
    x = np.random.default_rng(0).normal(size=(7, 12, 12, 2)).astype(
        "float32")
    layer = Scattering2D(J=2, L=4)
    direct = np.asarray(layer(x))
    for chunk in (1, 3, 7, 16):
        np.testing.assert_allclose(features.scatter(layer, x, chunk=chunk),
                                   direct, atol=1e-6)


def test_cache_returns_only_the_same_images(capsys):
    rng = np.random.default_rng(1)
    x = rng.random((6, 8, 8, 1)).astype("float32")
    other = rng.random((6, 8, 8, 1)).astype("float32")  # same shape
    front = _front((8, 8, 1))
    features.clear_feature_cache()
    first, _, _ = features.precompute(front, x[:4], x[4:], verbose=1)
    again, _, _ = features.precompute(front, x[:4], x[4:], verbose=1)
    fresh, _, _ = features.precompute(front, other[:4], other[4:],
                                      verbose=1)
    out = capsys.readouterr().out
    assert out.count("reused from the previous run") == 1
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(fresh, np.asarray(Scattering2D()(other[:4])),
                               atol=1e-6)
    # The same images split elsewhere: the cache serves, the split moves.
    train, test, _ = features.precompute(front, other[:1], other[1:])
    assert train.shape[0] == 1 and test.shape[0] == 5
    np.testing.assert_allclose(np.concatenate([train, test]),
                               np.asarray(Scattering2D()(other)), atol=1e-6)

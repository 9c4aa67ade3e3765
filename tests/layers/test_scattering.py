"""Scattering2D against kymatio 0.3.0, the scattering library Tramer and
Boneh used, and against identities that hold for any scattering transform.

Two references:

* ``reference/scattering_kymatio.npz``: kymatio's NumPy frontend on fixed
  images (grey and colour, J 1-3, L 4-8, a non-square size, the smallest
  size 2^J), written by
  ``reference/make_scattering_reference.py`` in an environment where kymatio
  imports (SciPy < 1.15). Checked on both stacks.
* kymatio itself, on fresh random images and sizes, where it imports (the
  legacy stack's test extra pins it with SciPy < 1.15; current SciPy removed
  ``scipy.special.sph_harm``, which kymatio 0.3.0 imports).

Tolerance: kymatio builds its filters in float32 (complex64), so its
coefficients carry float32 rounding whatever the input's dtype; we compare
at ``atol = 1e-6 * max|S|`` (seen: 1e-7 to 3e-7 of max|S|).
"""

import os

import keras
import numpy as np
import pytest

from keras_tempered_dp.layers import Scattering2D
from keras_tempered_dp.layers.scattering import num_coefficients

REFERENCE = os.path.join(os.path.dirname(__file__), "reference",
                         "scattering_kymatio.npz")
RTOL_OF_MAX = 1e-6


def _scatter(x_nchw, J, L, dtype="float32"):
    """Our layer on kymatio's layout: [B, C, H, W] -> [B, C, K, H', W']."""
    B, C = x_nchw.shape[:2]
    out = np.asarray(Scattering2D(J=J, L=L, dtype=dtype)(
        np.transpose(x_nchw, [0, 2, 3, 1]).astype(dtype)))
    K = num_coefficients(J, L)
    assert out.shape[-1] == C * K
    return out.reshape(B, out.shape[1], out.shape[2], C, K).transpose(
        0, 3, 4, 1, 2)


def _assert_matches(ours, kymatio):
    assert ours.shape == kymatio.shape
    np.testing.assert_allclose(ours, kymatio, rtol=0,
                               atol=RTOL_OF_MAX * np.abs(kymatio).max())


with np.load(REFERENCE) as _ref:
    CASES = [str(c) for c in _ref["cases"]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_matches_kymatio_stored_coefficients(case, dtype):
    with np.load(REFERENCE) as ref:
        x, S = ref[f"{case}/x"], ref[f"{case}/S"]
        J, L = int(ref[f"{case}/J"]), int(ref[f"{case}/L"])
    if x.ndim == 3:  # grey: kymatio [B, H, W] -> [B, 1, H, W]
        x, S = x[:, None], S[:, None]
    _assert_matches(_scatter(x, J, L, dtype), S)


@pytest.mark.parametrize("shape,J,L", [((1, 29, 31), 2, 8),
                                       ((3, 32, 40), 3, 8),
                                       ((2, 16, 16), 2, 5),
                                       ((1, 4, 5), 2, 8)])
def test_matches_kymatio_live(shape, J, L):
    kymatio = pytest.importorskip(
        "kymatio.numpy", reason="kymatio 0.3.0 imports only with SciPy "
        "< 1.15 (the legacy stack's test extra)")
    x = np.random.default_rng(7).normal(size=(2,) + shape)
    S = kymatio.Scattering2D(J=J, shape=shape[1:], L=L)(x)
    _assert_matches(_scatter(x, J, L, "float64"), S)


def test_constant_image_has_only_the_low_pass():
    """Morlet wavelets have zero mean: a constant image has no order-1 or
    order-2 energy, and its order-0 map is the constant times phi's
    mean (kymatio's 1.0000293, from its 3.1415 for pi)."""
    S = _scatter(np.full((1, 1, 28, 28), 3.0), 2, 8, "float64")[0, 0]
    np.testing.assert_allclose(S[0], 3.0 * 2 * np.pi / (2 * 3.1415),
                               rtol=1e-9)
    np.testing.assert_allclose(S[1:], 0, atol=1e-12)


def test_colour_channels_are_scattered_independently():
    """Channel c of a colour image gives the grey coefficients of that
    channel at c * K ... (c + 1) * K - 1."""
    rng = np.random.default_rng(3)
    colour = rng.normal(size=(2, 16, 16, 3))
    K = num_coefficients(2, 4)
    layer = Scattering2D(J=2, L=4, dtype="float64")
    both = np.asarray(layer(colour))
    for c in range(3):
        grey = np.asarray(Scattering2D(J=2, L=4, dtype="float64")(
            colour[..., c:c + 1]))
        np.testing.assert_allclose(both[..., c * K:(c + 1) * K], grey,
                                   atol=1e-12)


def test_scattering_is_linear_in_scale_and_one_example_at_a_time():
    """S(a x) = a S(x) for a > 0 (every step is linear or a modulus), and
    an example's features do not depend on the rest of the batch: what
    makes features computed once over a dataset cost no privacy."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 20, 20, 1))
    layer = Scattering2D(J=2, L=8, dtype="float64")
    S = np.asarray(layer(x))
    np.testing.assert_allclose(np.asarray(layer(2.5 * x)), 2.5 * S,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(layer(x[2:3])), S[2:3],
                               atol=1e-13)


def test_has_no_weights_and_takes_no_gradient_step():
    layer = Scattering2D()
    model = keras.Sequential([keras.Input((28, 28, 1)), layer])
    assert layer.weights == [] and model.count_params() == 0
    assert layer.trainable is False


@pytest.mark.parametrize("kwargs,match", [
    (dict(J=0), "^J=0: must be >= 1"),
    (dict(J=2.0), "^J=2.0: must be an integer"),
    (dict(J=True), "^J=True: must be an integer"),
    (dict(L=0), "^L=0: must be >= 1"),
    (dict(L="8"), "^L='8': must be an integer"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scattering2D(**kwargs)


@pytest.mark.parametrize("shape,match", [
    ((7, 7, 1), r"J=3\) needs images of at least 2\^J = 8 pixels a side; "
                "got 7 x 7"),
    ((28, 28), r"takes images \[batch, H, W, C\]"),
])
def test_rejects_inputs_it_cannot_scatter(shape, match):
    with pytest.raises(ValueError, match=match):
        Scattering2D(J=3)(np.zeros((1,) + shape, "float32"))

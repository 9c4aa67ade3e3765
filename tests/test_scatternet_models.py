"""The ScatterNet models (Tramer and Boneh, ICLR 2021): shapes, the
per-example normalization against NumPy, and the split into the fixed front
that train() precomputes and the head that trains."""

import keras
import numpy as np
import pytest

from keras_tempered_dp.layers import Scattering2D
from keras_tempered_dp.models import (
    FIXED_FRONT_MODELS,
    MODELS,
    join_front,
    mnist_cnn,
    scatternet_cnn,
    scatternet_linear,
    split_fixed_front,
)


def test_parameter_counts_pinned():
    # Linear: 81 * 7 * 7 features -> 10 logits. CNN: 81 -> 16 -> 32 maps,
    # then 4 * 4 * 32 -> 32 -> 10.
    assert scatternet_linear().count_params() == 81 * 49 * 10 + 10 == 39700
    assert scatternet_cnn("tanh").count_params() == (
        81 * 9 * 16 + 16 + 16 * 9 * 32 + 32 + 512 * 32 + 32 + 330) == 33066
    # Colour (CIFAR-10): 243 channels on 8 x 8, their CIFAR-10 head.
    colour = scatternet_cnn("tanh", input_shape=(32, 32, 3))
    assert colour.count_params() == (243 * 9 * 64 + 64 + 64 * 9 * 64 + 64
                                     + 4 * 4 * 64 * 10 + 10)


def test_feature_normalization_is_per_example_group_norm():
    """GN(S x): each example's 27 groups of 3 channels over the 7 x 7 grid
    standardized with the group's own mean and variance (eps 1e-5), no
    learned scale or offset; checked against NumPy."""
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    front, _ = split_fixed_front(scatternet_linear())
    S = np.asarray(Scattering2D()(x), "float64")        # [3, 7, 7, 81]
    groups = S.reshape(3, 7, 7, 27, 3)
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    var = groups.var(axis=(1, 2, 4), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(3, -1)
    np.testing.assert_allclose(front.predict(x, verbose=0), expected,
                               atol=2e-4)
    # One example's features do not depend on the batch it is in.
    np.testing.assert_allclose(front.predict(x[1:2], verbose=0),
                               front.predict(x, verbose=0)[1:2], atol=1e-5)


@pytest.mark.parametrize("name", FIXED_FRONT_MODELS)
def test_split_and_join_give_the_same_function(name):
    model = MODELS[name]("tanh")
    front, head = split_fixed_front(model)
    assert front.weights == [] and isinstance(front.layers[0], Scattering2D)
    assert head.trainable_weights and \
        len(head.trainable_weights) == len(model.trainable_weights)
    x = np.random.default_rng(1).random((4, 28, 28, 1)).astype("float32")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        head.predict(front.predict(x, verbose=0), verbose=0), expected,
        atol=1e-5)
    joined = join_front(front, head)
    np.testing.assert_allclose(joined.predict(x, verbose=0), expected,
                               atol=1e-6)
    assert joined.name == name


def test_only_fixed_front_models_split():
    assert split_fixed_front(mnist_cnn())[0] is None
    for name in MODELS:
        front, _ = split_fixed_front(MODELS[name](
            "tanh", input_shape=(32, 32, 3) if "wrn" in name or
            "cifar" in name else (28, 28, 1)))
        assert (front is not None) == (name in FIXED_FRONT_MODELS), name


def test_linear_head_ignores_the_activation():
    a, b = scatternet_linear("relu"), scatternet_linear("tanh")
    assert [type(layer) for layer in a.layers] == \
        [type(layer) for layer in b.layers]


@pytest.mark.parametrize("groups,must", [
    (0, r"be >= 1\. It must divide"), (4, "divide"),
    (2.0, r"be an integer\. It must divide"),
    (True, r"be an integer\. It must divide")])
def test_groups_must_divide_the_scattering_channels(groups, must):
    with pytest.raises(ValueError, match=rf"^groups={groups!r}: must {must} "
                       "the 81 scattering channels"):
        scatternet_linear(groups=groups)


def test_digits_sized_images_fit():
    """8 x 8 images (the embedded digits) scatter to 2 x 2 and both heads
    build on them."""
    for builder in (scatternet_linear, scatternet_cnn):
        model = builder("tanh", input_shape=(8, 8, 1))
        assert model.output_shape == (None, 10)
        assert isinstance(model, keras.Sequential)

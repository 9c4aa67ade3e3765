import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import cifar10_cnn, digits_cnn, mnist_cnn
from keras_tempered_dp.privacy.traversal import walk_layers
from tests.layer_harness import (
    check_fresh_job,
    predict_job,
    run_fresh_jobs,
    training_resumes_job,
)


def test_parameter_counts_pinned():
    assert mnist_cnn().count_params() == 26010
    assert cifar10_cnn().count_params() == 550570
    assert digits_cnn().count_params() == 9258


def test_mnist_architecture_shapes():
    model = mnist_cnn("relu")
    # layer.output.shape: Keras 3 dropped layer.output_shape.
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes[0] == (14, 14, 16)
    assert (13, 13, 16) in shapes and (5, 5, 32) in shapes
    assert (4, 4, 32) in shapes and shapes[-1] == (10,)


@pytest.mark.parametrize("builder", [mnist_cnn, cifar10_cnn, digits_cnn])
def test_no_normalization_or_dropout(builder):
    for _, layer in walk_layers(builder()):
        assert "Normalization" not in type(layer).__name__
        assert "Dropout" not in type(layer).__name__


@pytest.mark.parametrize("activation", [
    "tanh", "relu", "tempered_sigmoid", tf.nn.tanh,
    TemperedSigmoid(s=2, T=2, o=1)])
def test_tanh_equivalent_activations_agree(activation):
    # All tanh spellings give the same function on the same weights.
    reference = mnist_cnn("tanh")
    model = mnist_cnn(activation)
    model.set_weights(reference.get_weights())
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1))
    if activation == "relu":
        assert not np.allclose(model(x), reference(x), atol=1e-4)
    else:
        np.testing.assert_allclose(model(x), reference(x), atol=1e-5)


def test_activation_layer_is_copied_per_position():
    act = TemperedSigmoid(s=3, T=1, o=1)
    model = mnist_cnn(act)
    copies = [layer for layer in model.layers
              if isinstance(layer, TemperedSigmoid)]
    assert len(copies) == 3 and len({id(c) for c in copies}) == 3
    assert all(c.s == 3 for c in copies)


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="not a known activation"):
        mnist_cnn("swishy")


FORMATS = ["keras", "savedmodel"]
RESUMING = {
    "mnist_cnn": lambda: mnist_cnn("tempered_sigmoid", input_shape=(16, 16, 1),
                                   num_classes=3),
    "wide_resnet": lambda: _small_wrn(),
}


def _registered_name_job(fmt, folder):
    model = mnist_cnn("tempered_sigmoid")
    x = np.random.default_rng(1).uniform(size=(2, 28, 28, 1))
    if fmt == "savedmodel":
        x = x.astype("float32")  # an exported SavedModel's input dtype
    return predict_job(model, x, fmt, folder, exact=True)


@pytest.fixture(scope="module")
def fresh_jobs(tmp_path_factory, fresh_python):
    """This module's fresh-process checks, run together
    (tests/layer_harness.py, run_fresh_jobs)."""
    folder = tmp_path_factory.mktemp("fresh_jobs")
    jobs = {f"registered-{fmt}": _registered_name_job(
        fmt, folder / f"registered-{fmt}") for fmt in FORMATS}
    for name, builder in RESUMING.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        model = builder()
        shape = tuple(model.input_shape[1:])
        x = rng.uniform(size=(8,) + shape).astype("float32")
        jobs[f"resumes-{name}"] = training_resumes_job(
            model, x, rng.integers(0, 3, 8), folder / f"resumes-{name}")
    return jobs, run_fresh_jobs(jobs, fresh_python)


@pytest.mark.parametrize("fmt", FORMATS)
def test_registered_name_model_saves_and_loads(fresh_jobs, fmt):
    check_fresh_job(*fresh_jobs, f"registered-{fmt}")


def test_registered_names_saved_qualified_by_package():
    """Keras writes a registered activation as "keras_tempered_dp>name",
    which no other package's function of the same name can take over."""
    model = mnist_cnn("tempered_sigmoid")
    config = keras.layers.serialize(model.get_layer("act1"))["config"]
    activation = config["activation"]
    if isinstance(activation, dict):
        activation = activation["config"]
    assert activation == "keras_tempered_dp>tempered_sigmoid"


@pytest.mark.parametrize("name", list(RESUMING))
def test_training_resumes_after_load_in_fresh_process(fresh_jobs, name):
    check_fresh_job(*fresh_jobs, f"resumes-{name}")


def _small_wrn():
    from keras_tempered_dp.models import wide_resnet
    return wide_resnet(10, 1, "tempered_sigmoid", input_shape=(8, 8, 3),
                       num_classes=3)


def test_wrn16_4_as_de_et_al(tmp_path):
    from keras_tempered_dp.layers import WSConv2D
    from keras_tempered_dp.models import MODELS, wide_resnet

    model = MODELS["wrn16_4"](TemperedSigmoid())
    assert model.count_params() == 2753402
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "BatchNormalization" not in kinds and "Dropout" not in kinds
    convs = [l for l in model.layers if isinstance(l, WSConv2D)]
    assert len(convs) == 1 + 3 * 2 * 2 + 3  # stem, block convs, shortcuts
    assert {l.groups for l in model.layers
            if isinstance(l, keras.layers.GroupNormalization)} == {16}
    small = wide_resnet(10, 1, "tempered_sigmoid", input_shape=(8, 8, 3))
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    small.save(tmp_path / "wrn.keras")
    loaded = keras.models.load_model(tmp_path / "wrn.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               small.predict(x, verbose=0), atol=1e-6)


def test_wide_resnet_depth_checked():
    from keras_tempered_dp.models import wide_resnet
    with pytest.raises(ValueError, match="depth"):
        wide_resnet(12, 4)

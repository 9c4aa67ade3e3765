import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import mnist_cnn
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.config import DPConfig, EngineOptions
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.state import get_dp_state
from tests.privacy.reference import clipped_mean, per_group_gradients
from tests.privacy.stacks import (
    compiled,
    needs_tf_privacy,
    without_tf_privacy,
)


@needs_tf_privacy
def test_compile_dp_uses_tf_privacy_and_per_example_loss():
    from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import (
        GenericDPSGDOptimizer,
    )
    model = mnist_cnn()
    config = compile_dp(model, l2_norm_clip=0.5, noise_multiplier=1.3,
                        learning_rate=0.1, momentum=0.9,
                        optimizer="dp_keras_sgd")
    assert isinstance(model.optimizer, GenericDPSGDOptimizer)
    assert model.loss.reduction == "none"
    assert get_dp_state(model).config is config and config.noise_multiplier == 1.3
    assert model.optimizer._dp_sum_query._stddev == pytest.approx(0.65)


def test_fast_engine_is_the_default():
    model = mnist_cnn()
    config = compile_dp(model, l2_norm_clip=0.5, noise_multiplier=1.3,
                        learning_rate=0.1, momentum=0.9)
    assert config.optimizer == "fast"
    assert type(model.optimizer).__name__ == "SGD"
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    assert get_dp_state(model).engine.noise_multiplier == 1.3
    assert get_dp_state(model).engine.l2_norm_clip == 0.5


def test_make_private_refuses_uncompiled():
    model = mnist_cnn()
    with pytest.raises(ValueError, match="needs a compiled model"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@needs_tf_privacy
def test_make_private_refuses_tf_privacy_optimizer():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer="dp_keras_sgd")
    with pytest.raises(ValueError, match="twice"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize("options", [
    dict(gamma=0.01), dict(clipping="clip"),
    dict(augmentation_multiplicity=1, physical_batch_size=None),
    dict(count_stddev=None), dict(engine_options=EngineOptions()),
], ids=["gamma", "clipping", "two", "count_stddev", "object"])
@pytest.mark.parametrize("optimizer", ["dp_keras_sgd",
                                       "vectorized_dp_keras_sgd"])
def test_engine_options_with_tf_privacy_refused_even_at_defaults(options,
                                                                 optimizer):
    model = mnist_cnn()
    names = ", ".join(sorted(options))
    with pytest.raises(ValueError, match=rf"^{names}: only this package's "
                       r"clipping engine \(optimizer='fast'\)"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer=optimizer, **options)
    assert not compiled(model)


def test_flat_engine_options_reach_the_engine_and_the_rest_compile():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               clipping="normalize", gamma=0.05, augmentation_multiplicity=2,
               physical_batch_size=4, run_eagerly=True)
    options = get_dp_state(model).engine.options
    assert (options.clipping, options.gamma, options.augmentation_multiplicity,
            options.physical_batch_size) == ("normalize", 0.05, 2, 4)
    assert model.run_eagerly  # not an engine option: went to model.compile


def test_engine_options_object_or_names_not_both():
    options = EngineOptions(clipping="normalize")
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               engine_options=options)
    assert get_dp_state(model).engine.options is options
    with pytest.raises(ValueError, match="given twice.*gamma="):
        compile_dp(mnist_cnn(), l2_norm_clip=1.0, noise_multiplier=1.0,
                   engine_options=options, gamma=0.1)


def test_dp_config_object_or_keywords_not_both():
    """The DPConfig travels as it is; keywords are the other way in, and
    the two are never mixed (no setting validated twice)."""
    dp = DPConfig(l2_norm_clip=0.5, noise_multiplier=1.3, learning_rate=0.1,
                  momentum=0.9, noise_seed=3)
    model = mnist_cnn()
    assert compile_dp(model, config=dp) is dp
    engine = get_dp_state(model).engine
    assert (engine.l2_norm_clip, engine.noise_multiplier) == (0.5, 1.3)
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="given twice.*noise_multiplier="):
        compile_dp(mnist_cnn(), config=dp, noise_multiplier=1.0)
    with pytest.raises(TypeError, match="needs noise_multiplier="):
        compile_dp(mnist_cnn(), l2_norm_clip=1.0)
    with pytest.raises(TypeError, match="config.*DPConfig"):
        compile_dp(mnist_cnn(), config={"l2_norm_clip": 1.0})
    compiled = mnist_cnn()
    compiled.compile(optimizer="adam", loss="mse")
    # make_private keeps the compiled optimizer: a DPConfig that names a
    # learning rate or TF Privacy's optimizer would be silently ignored.
    with pytest.raises(ValueError, match="learning_rate=None"):
        make_private(compiled, config=dp)
    kept = DPConfig(l2_norm_clip=0.5, noise_multiplier=1.3,
                    learning_rate=None)
    assert make_private(compiled, config=kept) is kept


def test_negative_noise_seed_refused():
    with pytest.raises(ValueError, match="noise_seed"):
        compile_dp(mnist_cnn(), l2_norm_clip=1.0, noise_multiplier=1.0,
                   noise_seed=-1)


def test_make_private_takes_flat_options_and_refuses_unknown_names():
    model = mnist_cnn()
    model.compile(optimizer="adam", loss="mse")
    make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                 clipping="normalize", gamma=0.2)
    assert get_dp_state(model).engine.options.gamma == 0.2
    with pytest.raises(TypeError, match=r"\['gama'\].*'gamma'"):
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                     gama=0.2)


def test_expected_batch_size_needs_fast():
    with pytest.raises(ValueError, match="needs optimizer='fast'"):
        compile_dp(mnist_cnn(), l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer="dp_keras_sgd", expected_batch_size=64)


@needs_tf_privacy
def test_vectorized_selectable():
    model = mnist_cnn()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer="vectorized_dp_keras_sgd")
    assert "vectorized" in type(model.optimizer).__module__


@pytest.mark.parametrize("kwargs,message", [
    (dict(noise_multiplier=-0.5), "^noise_multiplier=-0.5"),
    (dict(l2_norm_clip=0.0), "^l2_norm_clip=0.0"),
    (dict(num_microbatches=3, batch_size=32), "does not divide batch_size=32"),
    (dict(num_microbatches=8, batch_size=32, num_examples=100),
     "last batch of each epoch holds 4"),
])
def test_refusals(kwargs, message):
    args = dict(l2_norm_clip=1.0, noise_multiplier=1.0)
    args.update(kwargs)
    model = mnist_cnn()
    with pytest.raises(ValueError, match=message):
        compile_dp(model, **args)
    assert not compiled(model)  # nothing half-done


def test_batchnorm_refused():
    model = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(2),
                                 keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="GroupNormalization"):
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)


@without_tf_privacy
@pytest.mark.parametrize("optimizer", ["dp_keras_sgd",
                                       "vectorized_dp_keras_sgd"])
def test_tf_privacy_optimizer_without_tf_privacy_says_which_stack(optimizer):
    model = mnist_cnn()
    with pytest.raises(ImportError) as raised:
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
                   optimizer=optimizer)
    message = str(raised.value)
    assert f"compile_dp(optimizer={optimizer!r}) needs TF Privacy" in message
    assert ("supports only TensorFlow <= 2.15 with Keras 2" in message)
    assert 'pip install "keras-tempered-dp[tf-privacy]"' in message
    assert "optimizer='fast'" in message  # the way out on this stack
    # Refused before anything happened to the model.
    assert not compiled(model)
    assert get_dp_state(model) is None


@pytest.mark.parametrize("loss", ["mse", keras.losses.MeanSquaredError(),
                                  keras.losses.mean_squared_error])
def test_per_example_loss_shapes(loss):
    fn = per_example_loss(loss)
    value = fn(tf.zeros((5, 3)), tf.ones((5, 3)))
    assert value.shape == (5,)
    np.testing.assert_allclose(value, np.ones(5))


@needs_tf_privacy
def test_users_own_compile_with_tf_privacy_and_epsilon():
    from tensorflow_privacy import DPKerasSGDOptimizer
    # The design's usage, verbatim in spirit: model.add(TemperedSigmoid),
    # the user's own DPKerasSGDOptimizer, epsilon in the logs.
    model = keras.Sequential([keras.Input((28, 28, 1)),
                                 keras.layers.Conv2D(4, 3, strides=2)])
    model.add(TemperedSigmoid(s=2, T=2, o=1))
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(10))
    model.compile(
        optimizer=DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=1.1,
                                      num_microbatches=None,
                                      learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    x = np.random.default_rng(0).uniform(size=(64, 28, 28, 1))
    y = np.arange(64) % 10
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(64, 16)])
    # Directly from dp_accounting: 4 Poisson-sampled steps per epoch,
    # q = 16 / 64, sigma = 1.1, delta = 1e-5 (other RDP orders: 2 %).
    import dp_accounting
    for epoch, eps in enumerate(history.history["epsilon"], start=1):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                0.25, dp_accounting.GaussianDpEvent(1.1)), 4 * epoch))
        assert eps == pytest.approx(accountant.get_epsilon(1e-5), rel=0.02)


def test_paper_model_step_with_compile_dp_is_the_reference_step():
    """Noise 0: one fit step moves the weights by -lr * the per-example
    reference's clipped mean, with examples on both sides of the clip."""
    model = mnist_cnn("tempered_sigmoid")
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(
        "float32")
    y = (np.arange(8) % 10).astype("int32")
    loss_fn = per_example_loss(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads))
             for grads in per_group_gradients(model, loss_fn, x, y)]
    clip = float(np.median(norms))
    want, scales = clipped_mean(model, loss_fn, x, y, clip)
    compile_dp(model, l2_norm_clip=clip, noise_multiplier=0.0,
               learning_rate=0.05, batch_size=8, num_examples=8)
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for b, a, w, scale in zip(before, model.trainable_variables, want,
                              scales):
        np.testing.assert_allclose((b - a.numpy()) / 0.05 / scale,
                                   w / scale, rtol=0, atol=1e-4)

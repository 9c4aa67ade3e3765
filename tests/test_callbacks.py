import csv
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tempered_dp.callbacks import EpsilonCallback
from keras_tempered_dp.privacy.accounting import (
    RDP_ORDERS,
    Segment,
    compose_epsilon,
    compute_epsilon,
)
from keras_tempered_dp.privacy.compile import compile_dp
from keras_tempered_dp.privacy.state import get_dp_state
from keras_tempered_dp.stack import tf_privacy_available

# A user's own TF Privacy optimizer runs only on the legacy stack (TF 2.15,
# Keras 2): TF Privacy 0.9.0 does not install beside Keras 3.
needs_tf_privacy = pytest.mark.skipif(
    not tf_privacy_available(),
    reason="TF Privacy is not installed: its optimizers run only on the "
           "legacy stack (TensorFlow 2.15, Keras 2)")


def _model():
    return keras.Sequential([keras.Input((6,)),
                                keras.layers.Dense(4, activation="tanh"),
                                keras.layers.Dense(3)])


def test_epsilon_every_epoch_in_history_csv_and_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 6)), rng.integers(0, 3, 100)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5,
               learning_rate=0.1)
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x, y, batch_size=20, epochs=3, verbose=0,
        callbacks=[EpsilonCallback(num_examples=100, batch_size=20,
                                   delta=1e-3),
                   keras.callbacks.CSVLogger(str(csv_path)),
                   keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    expected = [compute_epsilon(100, 20, 1.5, steps=5 * e, delta=1e-3)
                for e in (1, 2, 3)]
    np.testing.assert_allclose(history.history["epsilon"], expected)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["epsilon"]) for r in rows], expected)
    tags = set()
    for event_file in (tmp_path / "tb" / "train").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert "epoch_epsilon" in tags


@needs_tf_privacy
def test_noise_read_from_tf_privacy_optimizer():
    from tensorflow_privacy import DPKerasSGDOptimizer
    model = _model()
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=2.0, noise_multiplier=0.9, num_microbatches=None,
        learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    callback = EpsilonCallback(num_examples=40, batch_size=10)
    model.fit(np.zeros((40, 6)), np.zeros(40), batch_size=10, epochs=1,
              verbose=0, callbacks=[callback])
    assert callback.epsilon_after(4) == pytest.approx(
        compute_epsilon(40, 10, 0.9, steps=4))


def test_microbatching_inferred_and_accounted():
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               num_microbatches=5)
    callback = EpsilonCallback(num_examples=100, batch_size=20)
    callback.set_model(model)
    assert callback.epsilon_after(10) == pytest.approx(
        compute_epsilon(100, 20, 1.0, steps=10))


def test_unknown_noise_is_a_clear_error():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="does not train with DP-SGD"):
        model.fit(np.zeros((4, 6)), np.zeros((4, 3)), epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(4, 4)])


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="delta=2"):
        EpsilonCallback(100, 10, noise_multiplier=1.0, delta=2)


# -- the callback reports only what it can vouch for (issue 9) ---------------

def _data(rng, n=100):
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def test_model_without_dp_refused_even_with_explicit_noise(rng, tmp_path):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1)
    model.save(str(tmp_path / "m.keras"))
    reloaded = keras.models.load_model(str(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match="does not train with DP-SGD.*"
                       "make_private"):
        reloaded.fit(x, y, batch_size=20, epochs=1, verbose=0,
                     callbacks=[EpsilonCallback(100, 20,
                                                noise_multiplier=1.1)])


def test_explicit_noise_that_the_model_does_not_run_refused(rng):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    with pytest.raises(ValueError, match="noise_multiplier=1.0.*"
                       "noise_multiplier=1.5"):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(100, 20, noise_multiplier=1.0)])


@pytest.mark.parametrize("told", [dict(num_examples=100, batch_size=10),
                                  dict(num_examples=250, batch_size=20)])
def test_steps_per_epoch_that_fit_does_not_run_refused(rng, told):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    with pytest.raises(ValueError, match="fit runs 5 steps per epoch"):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(**told)])


def test_microbatching_denied_but_used_refused(rng):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0,
               num_microbatches=5)
    with pytest.raises(ValueError, match="used_microbatching=False"):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(100, 20,
                                             used_microbatching=False)])


@needs_tf_privacy
def test_batchnorm_model_with_users_tf_privacy_optimizer_refused(rng):
    from tensorflow_privacy import DPKerasSGDOptimizer
    x, y = _data(rng)
    model = keras.Sequential([keras.Input((6,)),
                                 keras.layers.Dense(4),
                                 keras.layers.BatchNormalization(
                                     name="bn"),
                                 keras.layers.Dense(3)])
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=1.0, noise_multiplier=1.1, num_microbatches=None,
        learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    with pytest.raises(ValueError, match="'bn'.*every other example"):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(100, 20)])


@pytest.mark.parametrize("delta", [0.01, 0.5])
def test_delta_at_or_above_one_over_n_refused_at_construction(delta):
    with pytest.raises(ValueError, match=r"delta=.*1/\(10N\)"):
        EpsilonCallback(100, 10, delta=delta)


@pytest.mark.parametrize("kwargs,name", [
    (dict(noise_multiplier=float("inf")), "noise_multiplier=inf"),
    (dict(initial_steps=-1), "initial_steps=-1"),
    (dict(steps_per_epoch=2.5), "steps_per_epoch=2.5"),
    (dict(used_microbatching="no"), "used_microbatching='no'"),
    (dict(previous_segments=[(100, 10, 5, 1.0)]), "previous_segments"),
])
def test_bad_arguments_named_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EpsilonCallback(100, 10, **kwargs)


def _count_engine_steps(model):
    """The engine's step and example counters; a stand-in that counts like
    them (examples with sample weight > 0) when the engine has none yet."""
    engine = get_dp_state(model).engine
    if getattr(engine, "steps_taken", None) is not None:
        return
    engine.steps_taken = tf.Variable(0, dtype=tf.int64, trainable=False)
    engine.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False)
    step = engine.train_step

    def counting(data):
        x, _, weight = keras.utils.unpack_x_y_sample_weight(data)
        seen = (tf.shape(x)[0] if weight is None
                else tf.reduce_sum(tf.cast(weight > 0, tf.int32)))
        engine.steps_taken.assign_add(1)
        engine.examples_seen.assign_add(tf.cast(seen, tf.int64))
        return step(data)

    engine.train_step = counting


def test_batches_larger_than_told_refused(rng):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    _count_engine_steps(model)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(20).repeat()
    with pytest.raises(RuntimeError, match="saw 100 examples in 5 steps.*"
                       "batch_size=10"):
        model.fit(data, steps_per_epoch=5, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(100, 10, steps_per_epoch=5)])


def _poisson_model(rng, n, batch_size):
    from keras_tempered_dp.privacy.sampling import poisson_batches
    x, y = _data(rng, n)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.2,
               expected_batch_size=batch_size)
    _count_engine_steps(model)
    return model, poisson_batches(x, y, batch_size,
                                  seed=int(rng.integers(2 ** 31)))


def test_poisson_run_accounted_when_honest(rng):
    model, data = _poisson_model(rng, 1000, 50)
    callback = EpsilonCallback(1000, 50, steps_per_epoch=20)
    history = model.fit(data, steps_per_epoch=20, epochs=2, verbose=0,
                        callbacks=[callback])
    np.testing.assert_allclose(
        history.history["epsilon"],
        [compute_epsilon(1000, 50, 1.2, steps=20 * e) for e in (1, 2)],
        rtol=1e-12)
    assert callback.segments() == (Segment(1000, 50, 40, 1.2),)


@pytest.mark.parametrize("told", [dict(num_examples=1000, batch_size=25),
                                  dict(num_examples=1000, batch_size=100)])
def test_poisson_batch_size_off_by_a_factor_refused(rng, told):
    # The dataset's own mark says B=50 of N=1000: refused before any step.
    model, data = _poisson_model(rng, 1000, 50)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="samples batches of 50 from 1000"):
        model.fit(data, steps_per_epoch=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(**told, steps_per_epoch=20)])
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("told", [dict(num_examples=1000, batch_size=25),
                                  dict(num_examples=1000, batch_size=100)])
def test_unmarked_poisson_batch_size_off_by_a_factor_refused(rng, told):
    # A sampler the package did not make, marked by hand: the counts of
    # what the engine saw still catch a batch size off by a factor.
    model, data = _poisson_model(rng, 1000, 50)
    from keras_tempered_dp.privacy.sampling import mark_sampling
    mark_sampling(data, "poisson", told["num_examples"], told["batch_size"])
    get_dp_state(model).engine._expected_batch_size = told["batch_size"]
    with pytest.raises(RuntimeError, match="Poisson-sampled steps"):
        model.fit(data, steps_per_epoch=20, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(**told, steps_per_epoch=20)])


def test_previous_segments_composed_exactly(rng):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    earlier = (Segment(100, 10, 30, 0.9), Segment(100, 25, 8, 2.0))
    callback = EpsilonCallback(100, 20, delta=1e-3,
                               previous_segments=earlier)
    history = model.fit(x, y, batch_size=20, epochs=2, verbose=0,
                        callbacks=[callback])
    import dp_accounting
    for epochs, eps in zip((1, 2), history.history["epsilon"]):
        direct = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
        for b, steps, sigma in [(10, 30, 0.9), (25, 8, 2.0),
                                (20, 5 * epochs, 1.5)]:
            direct.compose(dp_accounting.PoissonSampledDpEvent(
                b / 100, dp_accounting.GaussianDpEvent(sigma)), steps)
        assert eps == pytest.approx(direct.get_epsilon(1e-3), rel=1e-9)
    segments = callback.segments()
    assert segments == earlier + (Segment(100, 20, 10, 1.5),)
    # A checkpoint stores them as dictionaries; a resumed run rebuilds them.
    stored = [dataclasses.asdict(s) for s in segments]
    resumed = EpsilonCallback(100, 20, noise_multiplier=1.5, delta=1e-3,
                              previous_segments=[Segment(**d)
                                                 for d in stored])
    assert resumed.epsilon_after(0) == pytest.approx(
        compose_epsilon(segments, delta=1e-3), rel=1e-12)


def test_pld_accountant_logs_the_pld_epsilon(rng):
    import dp_accounting
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    history = model.fit(x, y, batch_size=20, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(100, 20, delta=1e-3,
                                                   accountant="pld")])
    for epochs, eps in zip((1, 2), history.history["epsilon"]):
        direct = dp_accounting.pld.PLDAccountant(
            value_discretization_interval=1e-4)
        direct.compose(dp_accounting.PoissonSampledDpEvent(
            0.2, dp_accounting.GaussianDpEvent(1.5)), 5 * epochs)
        assert eps == pytest.approx(direct.get_epsilon(1e-3), rel=1e-9)
        assert eps < compute_epsilon(100, 20, 1.5, steps=5 * epochs,
                                     delta=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(accountant="prv"), "accountant='prv'"),
    (dict(accountant="pld", sampling="without_replacement"),
     "Poisson subsampling only"),
])
def test_bad_accountant_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpsilonCallback(100, 20, delta=1e-3, **kwargs)


@needs_tf_privacy
def test_schedule_claimed_above_a_tf_privacy_optimizers_noise_not_believed(
        rng):
    # The callback is told sigma 3 by a schedule; the optimizer adds 1.0.
    # The ledger records what ran: epsilon is the sigma-1.0 number.
    from keras_tempered_dp.privacy.schedules import ConstantNoise
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               optimizer="dp_keras_sgd")
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(
                            100, 20, delta=1e-3,
                            noise_schedule=ConstantNoise(3.0))])
    assert history.history["epsilon"][0] == pytest.approx(
        compute_epsilon(100, 20, 1.0, steps=5, delta=1e-3), rel=1e-12)


@needs_tf_privacy
@pytest.mark.parametrize("optimizer", ["dp_keras_sgd",
                                       "vectorized_dp_keras_sgd"])
def test_tf_privacy_optimizers_chosen_by_name_are_read(rng, optimizer):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=0.7, noise_multiplier=1.3,
               optimizer=optimizer)
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(100, 20, delta=1e-3)])
    assert history.history["epsilon"][0] == pytest.approx(
        compute_epsilon(100, 20, 1.3, steps=5, delta=1e-3), rel=1e-9)


def test_a_second_fit_with_the_same_callback_adds_its_steps(rng):
    x, y = _data(rng)
    model = _model()
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.5)
    callback = EpsilonCallback(100, 20, delta=1e-3)
    model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback])
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0,
                        callbacks=[callback])
    assert history.history["epsilon"][0] == pytest.approx(
        compute_epsilon(100, 20, 1.5, steps=10, delta=1e-3), rel=1e-12)
    assert callback.segments() == (Segment(100, 20, 10, 1.5),)


def test_initial_steps_keep_the_noise_they_ran_with():
    """A later change of the engine's noise does not re-price steps already
    taken (raising the noise must not lower the reported epsilon)."""
    from keras_tempered_dp import compile_dp
    x = np.zeros((100, 4), "float32")
    y = np.zeros(100)
    model = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(2)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    callback = EpsilonCallback(100, 10, delta=1e-3, initial_steps=50,
                               steps_per_epoch=10)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[callback])
    before = compose_epsilon(callback.segments(), delta=1e-3)
    get_dp_state(model).engine.noise_multiplier = 4.0
    assert compose_epsilon(callback.segments(), delta=1e-3) == before
    assert callback.segments()[0].noise_multiplier == 1.0


def test_noise_scheduler_refuses_microbatches():
    from keras_tempered_dp import NoiseScheduler, compile_dp
    from keras_tempered_dp.privacy.schedules import StepDecay
    model = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(2)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0,
               num_microbatches=2)
    with pytest.raises(ValueError, match="per-example clipping"):
        model.fit(np.zeros((8, 4), "float32"), np.zeros(8), batch_size=4,
                  verbose=0, callbacks=[NoiseScheduler(StepDecay(1.0))])

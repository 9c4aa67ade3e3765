"""The model's privacy ledger: every epsilon from the steps that really ran.

Each test builds a sequence of fits, callbacks, schedules, resumes and
hand-made noise changes and checks the reported epsilon against a
composition computed directly with dp_accounting from the steps known to
have run (the reference below), on both stacks.
"""

import collections
import math

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tempered_dp as kdp
from keras_tempered_dp import EpsilonCallback, NoiseScheduler, compile_dp
from keras_tempered_dp.privacy.accounting import RDP_ORDERS, Segment
from keras_tempered_dp.privacy.ledger import Ledger, UnattributedStepsError
from keras_tempered_dp.privacy.sampling import poisson_batches
from keras_tempered_dp.privacy.schedules import StepDecay
from keras_tempered_dp.privacy.state import get_dp_state
from keras_tempered_dp.stack import tf_privacy_available

N, B, DELTA = 1400, 56, 1e-4  # 25 steps per epoch


def reference_epsilon(steps, delta=DELTA, n=N):
    """dp_accounting directly: ``steps`` is [(batch_size, sigma), ...] per
    step, in order; each step one Poisson-subsampled Gaussian."""
    if any(sigma == 0 for _, sigma in steps):
        return math.inf
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    # Composition is commutative: equal steps as one self-composed event
    # (the same composition, computed once per kind of step).
    for (b, sigma), count in collections.Counter(steps).items():
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            b / n, dp_accounting.GaussianDpEvent(sigma)), count)
    return accountant.get_epsilon(delta)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, 4)).astype("float32"),
            rng.integers(0, 3, N))


def _model(noise=1.0, **kwargs):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=noise,
               learning_rate=0.1, **kwargs)
    return model


def test_second_fit_with_a_new_callback_reports_the_whole_history(data):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=B, epochs=2, verbose=0,
              callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    # 100 steps in all: the 2.724, not the 2.138 of 50 steps.
    assert history.history["epsilon"][-1] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 100), rel=1e-9)
    assert round(history.history["epsilon"][-1], 3) == 2.724
    assert kdp.privacy_ledger(model).segments == (Segment(N, B, 100, 1.0),)


class _LowerNoiseOnce(keras.callbacks.Callback):
    """Sets sigma to ``low`` for batch ``at`` of epoch 0 only, restoring
    it before the epoch ends: the hole the per-epoch check could not see."""

    def __init__(self, low, at=0, bypass_setter=False):
        super().__init__()
        self.low, self.at, self.bypass = low, at, bypass_setter

    def on_train_batch_begin(self, batch, logs=None):
        engine = get_dp_state(self.model).engine
        if batch == self.at and not hasattr(self, "old"):
            self.old = engine.noise_multiplier
            if self.bypass:  # the variable itself, past every Python check
                engine._noise.variable.assign(self.low)
            else:
                engine.noise_multiplier = self.low

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at and hasattr(self, "old") and not hasattr(
                self, "restored"):
            get_dp_state(self.model).engine.noise_multiplier = self.old
            self.restored = True


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_noise_lowered_inside_an_epoch_is_recorded(data, run_eagerly):
    x, y = data
    model = _model()
    model.run_eagerly = run_eagerly
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[
        _LowerNoiseOnce(0.0), EpsilonCallback(N, B, delta=DELTA)])
    assert history.history["epsilon"] == [math.inf, math.inf]


@pytest.mark.parametrize("bypass_setter", [False, True])
def test_a_lower_noise_for_one_step_is_composed_exactly(data, bypass_setter):
    x, y = data
    model = _model()
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0, callbacks=[
        _LowerNoiseOnce(0.5, at=3, bypass_setter=bypass_setter),
        EpsilonCallback(N, B, delta=DELTA)])
    steps = [(B, 1.0)] * 3 + [(B, 0.5)] + [(B, 1.0)] * 21
    assert history.history["epsilon"][0] == pytest.approx(
        reference_epsilon(steps), rel=1e-9)
    assert history.history["epsilon"][1] == pytest.approx(
        reference_epsilon(steps + [(B, 1.0)] * 25), rel=1e-9)


@pytest.mark.parametrize("epsilon_first", [True, False])
def test_a_resumed_schedule_is_accounted_whatever_the_callback_order(
        data, epsilon_first):
    x, y = data
    schedule = StepDecay(sigma0=2.0, factor=0.5, period=1)
    model = _model(noise=2.0)
    callbacks = [EpsilonCallback(N, B, delta=DELTA, initial_steps=50),
                 NoiseScheduler(schedule)]
    if not epsilon_first:
        callbacks.reverse()
    history = model.fit(x, y, batch_size=B, epochs=3, initial_epoch=2,
                        verbose=0, callbacks=callbacks)
    # Epochs 0 and 1 ran before (sigma 2 and 1), epoch 2 now (sigma 0.5).
    want = reference_epsilon([(B, 2.0)] * 25 + [(B, 1.0)] * 25
                             + [(B, 0.5)] * 25)
    assert history.history["epsilon"][0] == pytest.approx(want, rel=1e-9)


def test_poisson_batches_need_the_expected_batch_denominator(data):
    x, y = data
    model = _model()  # divides by the drawn batch size
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="expected_batch_size=56"):
        model.fit(poisson_batches(x, y, B, seed=0), steps_per_epoch=25,
                  epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    assert kdp.privacy_ledger(model).steps == 0


def test_a_poisson_claim_on_fixed_batches_is_refused(data):
    x, y = data
    model = _model(expected_batch_size=B)
    with pytest.raises(ValueError, match="Poisson batches"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    unmarked = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
    with pytest.raises(ValueError, match="not marked"):
        model.fit(unmarked, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    assert kdp.privacy_ledger(model).steps == 0


def test_poisson_batches_with_the_denominator_are_accounted(data):
    x, y = data
    model = _model(expected_batch_size=B)
    history = model.fit(poisson_batches(x, y, B, seed=0), steps_per_epoch=25,
                        epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    assert history.history["epsilon"][-1] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 50), rel=1e-9)


def test_an_n_larger_than_the_arrays_is_refused(data):
    x, y = data
    model = _model()
    with pytest.raises(ValueError, match="fit trains on 700 examples"):
        model.fit(x[:700], y[:700], batch_size=B, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA,
                                             steps_per_epoch=13)])


def test_steps_without_a_callback_are_unattributed_until_declared(data):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    ledger = kdp.privacy_ledger(model)
    assert ledger.unattributed[0].steps == 25
    assert ledger.unattributed[0].max_batch_size == B
    with pytest.raises(UnattributedStepsError, match="25 DP-SGD steps"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    with pytest.raises(ValueError, match="saw 56 examples"):
        ledger.attribute(num_examples=N, batch_size=B - 1)
    ledger.attribute(num_examples=N, batch_size=B)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    assert history.history["epsilon"][0] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 50), rel=1e-9)


def test_compiling_again_keeps_the_ledger(data):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0,
              callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                        callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    assert history.history["epsilon"][0] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 25 + [(B, 2.0)] * 25), rel=1e-9)


def test_the_ledger_is_saved_with_the_model(data, tmp_path, fresh_python):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0,
              callbacks=[EpsilonCallback(N, B, delta=DELTA)])
    path = str(tmp_path / "m.keras")
    kdp.save_model(model, path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = fresh_python(f"""
        import numpy as np
        import keras_tempered_dp as kdp
        model = kdp.load_model({path!r})
        kdp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
        x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load(
            {str(tmp_path / 'y.npy')!r})
        h = model.fit(x, y, batch_size={B}, epochs=1, verbose=0,
                      callbacks=[kdp.EpsilonCallback({N}, {B},
                                                     delta={DELTA})])
        print(repr(h.history["epsilon"][0]))
        print(kdp.privacy_statement(model, delta={DELTA}))
    """)
    lines = out.strip().splitlines()
    assert float(lines[-2]) == pytest.approx(
        reference_epsilon([(B, 1.0)] * 50), rel=1e-9)
    assert "50 steps as the model recorded them" in lines[-1]


def test_ledger_round_trip_and_refusals():
    ledger = Ledger([Segment(100, 10, 5, 1.0), Segment(100, 10, 5, 1.0),
                     Segment(100, 20, 3, 2.0)])
    assert ledger.segments == (Segment(100, 10, 10, 1.0),
                               Segment(100, 20, 3, 2.0))
    assert Ledger.from_dict(ledger.to_dict()) == ledger
    with pytest.raises(ValueError, match="format"):
        Ledger.from_dict({"format": 99})
    mixed = Ledger([Segment(100, 10, 5, 1.0),
                    Segment(100, 10, 5, 1.0, "without_replacement")])
    with pytest.raises(ValueError, match="mixes sampling"):
        mixed.epsilon(delta=1e-3)


@pytest.mark.skipif(not tf_privacy_available(),
                    reason="TF Privacy runs on the legacy stack only")
def test_tf_privacy_optimizer_second_fit_and_poisson(data):
    from tensorflow_privacy import DPKerasSGDOptimizer
    n = 280  # 5 steps per epoch: TF Privacy's optimizer is slow on CPU
    x, y = data[0][:n], data[1][:n]
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=None,
        learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.NONE))
    model.fit(x, y, batch_size=B, epochs=2, verbose=0,
              callbacks=[EpsilonCallback(n, B, delta=DELTA)])
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0,
                        callbacks=[EpsilonCallback(n, B, delta=DELTA)])
    assert history.history["epsilon"][-1] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 20, n=n), rel=1e-9)
    with pytest.raises(ValueError, match="divides the noised sum"):
        model.fit(poisson_batches(x, y, B, seed=0), steps_per_epoch=5,
                  epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(n, B, delta=DELTA)])


class _NoisePlan(keras.callbacks.Callback):
    """Sets sigma before every batch from a plan, through the setter or
    the variable itself; remembers what each step was given."""

    def __init__(self, plan, ran):
        super().__init__()
        self.plan, self.ran = plan, ran

    def on_train_batch_begin(self, batch, logs=None):
        sigma, bypass = self.plan[len(self.ran)]
        engine = get_dp_state(self.model).engine
        if bypass:
            engine._noise.variable.assign(
                np.float32(sigma))  # exactly representable values only
        else:
            engine.noise_multiplier = sigma
        self.ran.append(sigma)


@pytest.mark.parametrize("seed", [0, 1])
def test_any_sequence_of_fits_noise_changes_and_saves_is_composed_exactly(
        seed, tmp_path):
    """Random fits (1-2 epochs each), a fresh or the same callback, a
    random noise multiplier for every step (a few values, so runs repeat),
    and a save/load in the middle: the last epsilon equals dp_accounting's
    composition of exactly the steps that ran."""
    rng = np.random.default_rng(seed)
    n, b = 200, 20
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.integers(0, 3, n)
    plan = [(float(rng.choice([0.75, 1.0, 1.5, 2.0])), bool(rng.random() < .3))
            for _ in range(200)]
    ran = []
    model = _model()
    same = EpsilonCallback(n, b, delta=1e-3)
    for fit in range(4):
        if fit == 2:  # a save and a load, the ledger kept
            path = str(tmp_path / "m.keras")
            kdp.save_model(model, path)
            model = kdp.load_model(path)
            kdp.make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
        callback = same if rng.random() < 0.5 else EpsilonCallback(
            n, b, delta=1e-3)
        order = [_NoisePlan(plan, ran), callback]
        if rng.random() < 0.5:
            order.reverse()
        history = model.fit(x, y, batch_size=b, epochs=int(rng.integers(1, 3)),
                            verbose=0, callbacks=order)
    assert history.history["epsilon"][-1] == pytest.approx(
        reference_epsilon([(b, sigma) for sigma in ran], delta=1e-3, n=n),
        rel=1e-9)


class _Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3:
            raise KeyboardInterrupt("interrupted")


def test_an_interrupted_fit_does_not_lend_its_data_to_later_steps(data):
    # fit raised: its callbacks' on_train_end never ran. Its context must
    # not be used for the steps of a later fit that declared nothing.
    x, y = data
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=B, epochs=2, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA), _Boom()])
    model.fit(x[:700], y[:700], batch_size=2 * B, epochs=1, verbose=0)
    ledger = kdp.privacy_ledger(model)
    assert ledger.segments == ()
    assert sum(u.steps for u in ledger.unattributed) == 4 + 7
    assert max(u.max_batch_size for u in ledger.unattributed) == 2 * B


def test_compiling_again_keeps_steps_no_callback_declared(data):
    # The old engine's record is drained before a new engine replaces it.
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    compile_dp(model, l2_norm_clip=1.0, noise_multiplier=2.0)
    assert kdp.privacy_ledger(model).unattributed[0].steps == 25
    with pytest.raises(UnattributedStepsError):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(N, B, delta=DELTA)])


def test_compute_gradients_is_recorded_as_a_release(data):
    x, y = data
    model = _model()
    engine = get_dp_state(model).engine
    for _ in range(3):
        engine.compute_gradients(tf.constant(x[:B]), tf.constant(y[:B]))
    run = kdp.privacy_ledger(model).unattributed[0]
    assert (run.steps, run.max_batch_size, run.noise_multiplier) == (3, B, 1.0)


def test_steps_that_failed_a_check_are_not_attributed(data):
    # fit's default batch of 32 where the callback was told 16 (and the
    # steps per epoch fit runs): refused at the epoch's end, and those
    # steps stay unattributed rather than accounted at batch 16.
    x, y = data
    model = _model()
    with pytest.raises(RuntimeError, match="more than batch_size=16"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[EpsilonCallback(
            N, 16, delta=DELTA, steps_per_epoch=44)])
    ledger = kdp.privacy_ledger(model)
    assert ledger.segments == ()
    assert ledger.unattributed[0].steps == 44


def test_two_epsilon_callbacks_in_one_fit_report_the_same(data):
    x, y = data
    model = _model()
    first, second = (EpsilonCallback(N, B, delta=DELTA),
                     EpsilonCallback(N, B, delta=DELTA))
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0,
                        callbacks=[first, second])
    assert history.history["epsilon"][-1] == pytest.approx(
        reference_epsilon([(B, 1.0)] * 50), rel=1e-9)
    assert first.epsilon() == second.epsilon()


def test_unattributed_microbatches_keep_their_halved_accounting(data):
    x, y = data
    model = _model(num_microbatches=8)
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    ledger = kdp.privacy_ledger(model)
    assert ledger.unattributed[0].used_microbatching
    ledger.attribute(num_examples=N, batch_size=B)
    assert ledger.segments[0].used_microbatching


@pytest.mark.skipif(not tf_privacy_available(),
                    reason="TF Privacy runs on the legacy stack only")
def test_tf_privacy_steps_no_callback_saw_are_unattributed(data):
    from tensorflow_privacy import DPKerasSGDOptimizer
    n = 280
    x, y = data[0][:n], data[1][:n]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=DPKerasSGDOptimizer(
        l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=None,
        learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.NONE))
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)  # no callback
    with pytest.raises(UnattributedStepsError, match="5 DP-SGD steps"):
        model.fit(x, y, batch_size=B, epochs=1, verbose=0,
                  callbacks=[EpsilonCallback(n, B, delta=DELTA)])

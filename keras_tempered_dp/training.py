"""One DP training run, end to end: data, model, DP-SGD, epsilon, outputs.

:func:`train` is what ``keras-tempered-dp train`` runs; it is importable and
takes keyword arguments only. It writes into ``output_dir``:

    results.json     configuration, per-epoch loss / accuracy / epsilon,
                     final test accuracy, wall time, the privacy statement
    log.csv          Keras CSVLogger (epsilon included)
    tensorboard/     TensorBoard logs (epoch_epsilon included)
    model.keras      the trained model (the averaged weights with
                     ``ema_decay``)
    checkpoint/      the last finished epoch, for --resume

Beyond the paper (De et al. 2022, a sound Auto DP-SGD):
``augmentation_multiplicity``, ``ema_decay``, ``physical_batch_size``,
``clipping="normalize"`` and ``noise_schedule``; none changes what epsilon
means, and the schedule's epsilon is composed exactly.
"""

import json
import os
import time

import tensorflow as tf

import numpy as np

from keras_tempered_dp.activations import get_activation
from keras_tempered_dp.augmentation import RandomCropFlip
from keras_tempered_dp.averaging import ParameterAveraging
from keras_tempered_dp.callbacks import EpsilonCallback, NoiseScheduler
from keras_tempered_dp.data import DATASETS, load_dataset
from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import MODELS
from keras_tempered_dp.privacy.accounting import (
    calibrate_noise_multiplier,
    privacy_statement,
)
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.state import get_dp_state
from keras_tempered_dp.privacy.sampling import (
    poisson_batches,
    shuffled_batches,
    steps_per_epoch,
)
from keras_tempered_dp.privacy.schedules import (
    SCHEDULES,
    calibrate_schedule,
    schedule_epsilon,
)

DEFAULT_MODEL = {"digits": "digits_cnn", "mnist": "mnist_cnn",
                 "fashion_mnist": "mnist_cnn", "cifar10": "cifar10_cnn"}


def make_activation(activation, s=2.0, T=2.0, o=1.0):
    """"tempered_sigmoid" with (s, T, o) -> a layer; other names as they are."""
    if activation == "tempered_sigmoid":
        return TemperedSigmoid(s=s, T=T, o=o)
    get_activation(activation)  # unknown names fail here, listing known ones
    return activation


class _EpochState(tf.keras.callbacks.Callback):
    """Saves the model (with optimizer state) and the epoch after each epoch."""

    def __init__(self, folder, averaging=None):
        super().__init__()
        self.folder = folder
        self.averaging = averaging

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        self.model.save(os.path.join(self.folder, "model.keras"))
        if self.averaging is not None:
            state = self.averaging.get_state()
            np.savez(os.path.join(self.folder, "ema.npz"),
                     updates=state["updates"], *state["average"])
        state = {"epochs_done": epoch + 1}
        engine = get_dp_state(self.model).engine
        if engine is not None and engine.clipping == "quantile":
            # The adapted clip is DP output (it follows noised counts).
            state["l2_norm_clip"] = engine.l2_norm_clip
        with open(os.path.join(self.folder, "state.json"), "w") as f:
            json.dump(state, f)


def resumed_seed(seed, epochs_done):
    """A fresh seed for the part of a seeded run after ``epochs_done``.

    >>> resumed_seed(3, 0), resumed_seed(3, 2) != 3
    (3, True)
    """
    if epochs_done == 0:
        return seed
    return int(np.random.SeedSequence([seed, epochs_done]).generate_state(
        1)[0])


def _load_ema(path):
    with np.load(path) as data:
        average = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
        return {"updates": int(data["updates"]), "average": average}


def make_schedule(name, sigma0, decay=None, period=1):
    """A noise schedule by name: constant, step, exponential or time."""
    if name not in SCHEDULES:
        raise ValueError(f"noise_schedule={name!r}: must be one of "
                         f"{', '.join(SCHEDULES)}.")
    if name == "constant":
        return SCHEDULES[name](sigma0)
    if decay is None:
        raise ValueError(f"noise_schedule={name!r} needs noise_decay= (the "
                         "step factor in (0, 1], or the decay rate >= 0).")
    if name == "step":
        return SCHEDULES[name](sigma0, factor=decay, period=period)
    return SCHEDULES[name](sigma0, rate=decay)


def train(*, dataset="digits", model=None, activation="tempered_sigmoid",
          s=2.0, T=2.0, o=1.0, epochs=15, batch_size=64, learning_rate=0.05,
          momentum=0.9, l2_norm_clip=1.0, noise_multiplier=None,
          target_epsilon=None, delta=None, sampling="poisson", seed=0,
          noise_seed=None, output_dir="runs/train", resume=False,
          data_dir=None, manual_dir=None, download=True, verbose=1,
          data=None, augmentation_multiplicity=1, crop_padding=4,
          flip=True, ema_decay=None, physical_batch_size=None,
          clipping="clip", gamma=0.01, target_quantile=0.5,
          noise_schedule="constant",
          noise_decay=None, noise_decay_period=1):
    """Trains one model with DP-SGD and writes its outputs.

    Give ``noise_multiplier`` or ``target_epsilon`` (the noise is then
    calibrated so the whole run ends at that epsilon). ``delta`` defaults to
    1e-5, or ``1 / (10 N)`` when that is smaller (it must stay below 1 / N).
    ``seed`` seeds initialization; noise and Poisson sampling draw from the
    operating system unless ``noise_seed`` is given (for tests and exact
    reproductions only: a known seed makes the noise predictable).

    ``augmentation_multiplicity`` K > 1 averages each example's gradient
    over K random crops (``crop_padding``) and flips (``flip``) before
    clipping; ``ema_decay`` keeps an EMA of the weights, which validation,
    the test accuracy and the saved model use; ``physical_batch_size``
    accumulates the clipped sums of chunks; ``clipping="normalize"``
    normalizes per example (``C / (||g|| + gamma)``), ``clipping="quantile"``
    adapts C to a private estimate of the ``target_quantile`` of the
    per-example norms, starting from ``l2_norm_clip``; ``noise_schedule``
    ("step", "exponential" or "time", with ``noise_decay`` and
    ``noise_decay_period``) decays the noise each epoch, its starting value
    calibrated for ``target_epsilon`` under the schedule.

    Returns:
        The results dictionary also written to ``results.json``.
    """
    start = time.time()
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("Give exactly one of noise_multiplier= and "
                         "target_epsilon=.")
    if sampling not in ("poisson", "shuffle"):
        raise ValueError(f"sampling={sampling!r}: must be 'poisson' or "
                         "'shuffle'.")
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: must be one of "
                         f"{', '.join(DATASETS)}.")
    tf.keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = data or load_dataset(
        dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
    n = len(x)
    if delta is None:
        delta = min(1e-5, 1 / (10 * n))
    steps = steps_per_epoch(n, batch_size, sampling)
    schedule = None
    if noise_schedule != "constant":
        schedule = make_schedule(noise_schedule, noise_multiplier or 1.0,
                                 noise_decay, noise_decay_period)
        if target_epsilon is not None:
            schedule = calibrate_schedule(
                target_epsilon, n, batch_size, schedule,
                steps_per_epoch=steps, epochs=epochs, delta=delta)
        noise_multiplier = schedule.sigma0
    elif target_epsilon is not None:  # Poisson accounting, results.privacy
        noise_multiplier = calibrate_noise_multiplier(
            target_epsilon, n, batch_size, steps=steps * epochs, delta=delta)
    model_name = model or DEFAULT_MODEL[dataset]
    augment = (RandomCropFlip(padding=crop_padding, flip=flip)
               if augmentation_multiplicity > 1 else None)
    dp = dict(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
              noise_seed=noise_seed, clipping=clipping, gamma=gamma,
              augmentation_multiplicity=augmentation_multiplicity,
              augment=augment, physical_batch_size=physical_batch_size)
    if clipping == "quantile":  # Andrew et al.'s defaults
        dp.update(target_quantile=target_quantile,
                  count_stddev=batch_size / 20)
    averaging = (ParameterAveraging(decay=ema_decay)
                 if ema_decay is not None else None)
    expected = batch_size if sampling == "poisson" else None

    checkpoint = os.path.join(output_dir, "checkpoint")
    state_file = os.path.join(checkpoint, "state.json")
    epochs_done = 0
    if resume and os.path.exists(state_file):
        with open(state_file) as f:
            state = json.load(f)
        epochs_done = state["epochs_done"]
        if noise_seed is not None:
            # A resumed run must not replay the first epochs' noise (equal
            # noise on two steps cancels in their difference) or batches.
            noise_seed = resumed_seed(noise_seed, epochs_done)
            dp["noise_seed"] = noise_seed
        network = tf.keras.models.load_model(
            os.path.join(checkpoint, "model.keras"))
        make_private(network, expected_batch_size=expected, **dp)
        if "l2_norm_clip" in state:  # continue the adaptive clip
            get_dp_state(network).engine.l2_norm_clip = state["l2_norm_clip"]
        if averaging is not None:
            averaging.set_state(network, _load_ema(
                os.path.join(checkpoint, "ema.npz")))
    else:
        if resume:
            print(f"No checkpoint in {checkpoint}: starting from epoch 0.")
        network = MODELS[model_name](
            activation=make_activation(activation, s, T, o),
            input_shape=x.shape[1:], num_classes=int(y.max()) + 1)
        compile_dp(network, learning_rate=learning_rate, momentum=momentum,
                   expected_batch_size=expected, **dp)

    batches = (poisson_batches(x, y, batch_size, seed=noise_seed)
               if sampling == "poisson" else
               shuffled_batches(x, y, batch_size, seed=seed))
    os.makedirs(output_dir, exist_ok=True)
    epsilon = EpsilonCallback(n, batch_size, delta=delta,
                              steps_per_epoch=steps,
                              initial_steps=epochs_done * steps)
    extra = [NoiseScheduler(schedule)] if schedule is not None else []
    if averaging is not None:
        extra.append(averaging)
    network.fit(
        batches, epochs=epochs, initial_epoch=epochs_done,
        steps_per_epoch=steps, validation_data=(x_test, y_test),
        verbose=verbose,
        callbacks=extra + [
            epsilon,
            tf.keras.callbacks.CSVLogger(os.path.join(output_dir, "log.csv"),
                                         append=epochs_done > 0),
            tf.keras.callbacks.TensorBoard(
                os.path.join(output_dir, "tensorboard")),
            _EpochState(checkpoint, averaging),
        ])
    if averaging is not None:
        averaging.apply()  # the averaged weights are the result
    _, test_accuracy = network.evaluate(x_test, y_test, verbose=0)
    network.save(os.path.join(output_dir, "model.keras"))

    per_epoch = _read_log(os.path.join(output_dir, "log.csv"))
    results = {
        "config": dict(
            dataset=dataset, model=model_name, activation=activation,
            s=s, T=T, o=o, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, momentum=momentum,
            l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
            target_epsilon=target_epsilon, delta=delta, sampling=sampling,
            seed=seed, num_examples=n,
            augmentation_multiplicity=augmentation_multiplicity,
            crop_padding=crop_padding if augment else None,
            flip=flip if augment else None, ema_decay=ema_decay,
            physical_batch_size=physical_batch_size, clipping=clipping,
            gamma=gamma if clipping == "normalize" else None,
            target_quantile=(target_quantile if clipping == "quantile"
                             else None),
            noise_schedule=repr(schedule) if schedule else "constant"),
        "epochs": per_epoch,
        "epsilon": epsilon.epsilon_after(epochs * steps),
        "test_accuracy": float(test_accuracy),
        "privacy": _statement(n, batch_size, noise_multiplier, schedule,
                              steps, epochs, delta) + (
            "" if sampling == "poisson" else
            " Training used shuffled fixed-size batches: this epsilon is "
            "the Poisson number by convention, not a proof for shuffling."),
        "wall_time_s": time.time() - start,
        "resumed_from_epoch": epochs_done,
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _statement(n, batch_size, noise_multiplier, schedule, steps, epochs,
               delta):
    if schedule is None:
        return privacy_statement(n, batch_size, noise_multiplier,
                                 steps=epochs * steps, delta=delta)
    eps = schedule_epsilon(n, batch_size, schedule, steps_per_epoch=steps,
                           epochs=epochs, delta=delta)
    return (f"({eps:.3f}, {delta:g})-DP for each example: DP-SGD, "
            f"{epochs * steps} steps, N={n}, batch_size={batch_size}, noise "
            f"multiplier by epoch {schedule!r} (last "
            f"{schedule(epochs - 1):.4g}); each step's subsampled Gaussian "
            "event composed with dp_accounting's RDP accountant assuming "
            "Poisson subsampling with q = batch_size / N, add-or-remove-one "
            "neighbours.")


def _read_log(path):
    import csv
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) for k, v in row.items()} for row in rows]

"""The search over (s, T, o, learning rate, clip): plain or private.

Both run every trial as a DP-SGD training run on the training split
(:mod:`.trials`) with hyperparameters drawn at random from
:class:`~.hypermodel.TemperedSigmoidHyperModel`'s space, and write
``results.json`` and the best model, ``model.keras`` (with its ledger), to
``output_dir`` once the search has finished; nothing before.

- **Private** (``private=True``): ``target_epsilon`` covers the whole
  search and the released model and score. K, the number of trials, is
  random and secret (:class:`.oracle.SecretTrialsOracle`); each trial's
  noise is calibrated so that the best of K is ``(target_epsilon,
  delta)``-DP (:mod:`keras_tempered_dp.privacy.selection`); trials are
  ranked by a noised validation score, or by the exact accuracy on a
  public validation set. Only the best model, its values and its score
  come out; no count, index or timing of trials is written or printed
  (wall time still hints at K).
- **Plain**: ``max_trials`` trials, each at ``target_epsilon``, ranked by
  their exact accuracy on the validation split. ``results.json`` states
  each trial's epsilon, the epsilon of releasing all trials (their RDP
  composition) and that the ranking used unprotected data (the validation
  examples have no guarantee).
"""

import contextlib
import os
import shutil
import tempfile
import time
import warnings

import keras_tuner
import numpy as np

from keras_tempered_dp.models import MODELS
from keras_tempered_dp.privacy.accounting import (
    Segment,
    accountant_name,
    calibrate_noise_multiplier,
    compose_epsilon,
    steps_per_epoch,
)
from keras_tempered_dp.privacy import selection
from keras_tempered_dp.privacy.ledger import Ledger
from keras_tempered_dp.privacy.saving import load_model, save_model
from keras_tempered_dp.privacy.selection import SearchRecord
from keras_tempered_dp.privacy.state import set_ledger
from keras_tempered_dp.training.results import write_json
from keras_tempered_dp.tuning.hypermodel import (
    TemperedSigmoidHyperModel,
    require_tensorboard,
)
from keras_tempered_dp.tuning.oracle import OBJECTIVE, SecretTrialsOracle
from keras_tempered_dp.tuning.settings import SearchSettings
from keras_tempered_dp.tuning.trials import TrialPlan, TrialTuner
from keras_tempered_dp.validation import check_number

UNPROTECTED_RANKING = (
    "The ranking used the exact accuracy on a split of the private data: "
    "those validation examples have no privacy guarantee, and the epsilon "
    "above covers the training examples only. Use --private for one "
    "guarantee over the search and the released model.")


PUBLIC_RANKING = (
    "The ranking used the exact accuracy on the public validation set; "
    "the epsilon above covers the training examples, and releasing all "
    "trials costs their composition.")


def search(*, dataset="digits", target_epsilon=3.0, max_trials=None,
           epochs=5, batch_size=64, delta=None, validation_fraction=0.1,
           seed=0, output_dir="runs/tune", data_dir=None, manual_dir=None,
           download=True, accountant="rdp", model=None, l2_norm_clip=None,
           learning_rate_range=None, private=False,
           trials_distribution="truncated_negative_binomial",
           trials_mean=5.0, trials_eta=0.0, score_noise=20.0,
           public_validation=None, data=None):
    """A random search over (s, T, o, learning rate, clip); see the module
    docstring for the plain and the private search.

    Args:
        dataset, data_dir, manual_dir, download, data: the private data
            (``data``: ``((x, y), (x_test, y_test))`` arrays instead of the
            files); the test split only evaluates the released model.
        target_epsilon: plain: each trial's; private: the whole search's.
        max_trials: plain only (default 10).
        epochs, batch_size: every trial's (Poisson-sampled batches).
        delta: default ``min(1e-5, 1/(10 N))``, N the training examples.
        validation_fraction: the share of the training set held out to
            score trials (not with ``public_validation``).
        seed, accountant: the plain search's split and draws, and its
            calibration ("rdp" or "pld"); a private search uses OS entropy.
        model: a registry model (default: the dataset's).
        l2_norm_clip, learning_rate_range: fix the clip (None searches
            it); narrow the learning rate's log range (default 0.001..4).
        private, trials_*, score_noise: the module docstring; the law of K
            (``TrialCount``); the private score's noise std, in examples.
        public_validation: ``(x, y)`` of a public validation set: trials
            are ranked by their exact accuracy on it, at no cost, and train
            on the whole training split.

    Returns:
        the results dictionary also written to ``output_dir``/results.json.

    Raises:
        ValueError: naming the argument, before any trial (all but
            ``delta >= 1/N`` and a batch larger than N before loading data).
    """
    settings = SearchSettings(
        target_epsilon=target_epsilon, max_trials=max_trials, epochs=epochs,
        batch_size=batch_size, delta=delta,
        validation_fraction=validation_fraction, accountant=accountant,
        model=model, l2_norm_clip=l2_norm_clip,
        learning_rate_range=learning_rate_range, private=private,
        trials_distribution=trials_distribution, trials_mean=trials_mean,
        trials_eta=trials_eta, score_noise=score_noise)
    _check_output_dir(output_dir)
    check_number("seed", seed, low=0, integer=True)
    require_tensorboard()
    start = time.time()
    (x, y), test, model_name = _load(settings, dataset, data, data_dir,
                                     manual_dir, download)
    public = public_validation is not None
    train_data, validation = _split(x, y, settings, seed, public_validation,
                                    dataset)
    plan = _plan(settings, dataset, model_name, train_data, validation,
                 public)
    results = _run(settings, plan, model_name, x, seed, test, public,
                   output_dir)
    if not settings.private:  # a private search's time hints at K
        results["wall_time_s"] = time.time() - start
    write_json(os.path.join(output_dir, "results.json"), results)
    return results


def _run(settings, plan, model_name, x, seed, test, public, output_dir):
    """The trials, in a temporary folder; then the best model, saved now
    (not when its trial ended: the file's times would show how long the
    search ran after it)."""
    work = tempfile.mkdtemp(prefix="keras_tempered_dp_search_")
    try:
        with _quiet(settings.private):
            tuner = _tuner(settings, plan, model_name, x, work, seed)
            tuner.search(verbose=0)
        best = _load_best(tuner, settings, plan)
        results = _results(settings, plan, tuner, best, test, public)
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "model.keras")
        if best is not None:
            save_model(best, path)
        elif os.path.exists(path):  # an earlier search's, not this one's
            os.remove(path)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet(private):
    """A private search prints nothing while it runs: TensorFlow's and
    Keras' warnings and logs (a retracing notice, a tf.data line per
    epoch) would count the trials. Python's warnings and loggers are
    silenced, and the process's stdout and stderr file descriptors point
    to /dev/null (C++ logs write there directly) until the trials end."""
    if not private:
        yield
        return
    import logging
    import sys
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl",
                                                   "keras", "keras_tuner")]
    levels = [logger.level for logger in loggers]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
            os.dup2(null, 1)
            os.dup2(null, 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_output_dir(output_dir):
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise ValueError(f"output_dir={output_dir!r}: must be a folder path.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={str(output_dir)!r} is a file, not a "
                         "folder: choose another or move the file away.")


def _load(settings, dataset, data, data_dir, manual_dir, download):
    from keras_tempered_dp.data import DATASETS, load_dataset
    from keras_tempered_dp.models import DEFAULT_MODEL
    from keras_tempered_dp.validation import check_choice
    from keras_tempered_dp.training.guards import check_data
    check_choice("dataset", dataset, tuple(DATASETS))
    if data is None:
        data = load_dataset(dataset, data_dir=data_dir,
                            manual_dir=manual_dir, download=download)
    try:
        data = tuple((np.asarray(x), np.asarray(y)) for x, y in data)
        assert len(data) == 2
    except (TypeError, ValueError, AssertionError):
        raise ValueError("data: must be ((x, y), (x_test, y_test)) "
                         "arrays.") from None
    # Checked now, as train() would at the first trial: a bad example
    # stops the search before any trial, not in the middle of it.
    num_classes = DATASETS[dataset].num_classes
    for (x, y), name in zip(data, ("training", "test")):
        check_data(x, y, name, num_classes)
    return (*data, settings.model or DEFAULT_MODEL[dataset])


def _split(x, y, settings, seed, public_validation, dataset):
    """``((x, y) trained on, (x, y) scored on)``, unless the validation set
    is public (then every training example trains).

    The plain search holds out a seeded permutation's first
    ``validation_fraction``. The private search sends each example to the
    validation split by its own coin, with probability
    ``validation_fraction``, from OS entropy: a split made by position
    would move many examples between the splits when one is added or
    removed, and the guarantee for each example assumes that one example's
    presence changes nothing else. Each example then trains or scores,
    and either way its influence is bounded (DP-SGD or the noised score).
    """
    if public_validation is not None:
        return (x, y), _check_public(public_validation, x, dataset)
    if settings.private:
        held_out = (selection.secret_generator().random(len(x))
                    < settings.validation_fraction)
    else:
        order = np.random.default_rng(seed).permutation(len(x))
        held_out = np.zeros(len(x), bool)
        held_out[order[:int(len(x) * settings.validation_fraction)]] = True
    if not held_out.any() or held_out.all():
        raise ValueError(
            f"validation_fraction={settings.validation_fraction!r}: left "
            f"{int(held_out.sum())} of {len(x)} examples to score trials "
            "and the rest to train them; both need examples.")
    return (x[~held_out], y[~held_out]), (x[held_out], y[held_out])


def _check_public(public_validation, x, dataset):
    try:
        x_val, y_val = public_validation
    except (TypeError, ValueError):
        raise ValueError("public_validation: must be a pair (x, y) of "
                         "arrays.") from None
    x_val, y_val = np.asarray(x_val), np.asarray(y_val)
    if len(x_val) < 1 or len(x_val) != len(y_val):
        raise ValueError(
            f"public_validation: {len(x_val)} inputs and {len(y_val)} "
            "labels; give the same number, at least one.")
    if x_val.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"public_validation: inputs of shape {x_val.shape[1:]}, but the "
            f"training data's are {x.shape[1:]}.")
    from keras_tempered_dp.data import DATASETS
    from keras_tempered_dp.training.guards import check_data
    check_data(x_val, y_val, "public validation",
               DATASETS[dataset].num_classes)
    return x_val, y_val


def _plan(settings, dataset, model_name, train_data, validation, public):
    n = len(train_data[0])
    delta = settings.resolved_delta(n)
    steps = steps_per_epoch(n, settings.batch_size, "poisson") * \
        settings.epochs
    score_noise = (settings.score_noise if settings.private and not public
                   else None)
    if settings.private:
        noise = selection.calibrate_trial_noise(
            settings.target_epsilon, settings.trial_count(), num_examples=n,
            batch_size=settings.batch_size, steps=steps, delta=delta,
            score_noise=score_noise)
    else:
        noise = calibrate_noise_multiplier(
            settings.target_epsilon, n, settings.batch_size, steps=steps,
            delta=delta, accountant=settings.accountant)
    fixed = {"dataset": dataset, "model": model_name,
             "epochs": settings.epochs, "batch_size": settings.batch_size,
             "noise_multiplier": noise, "delta": delta,
             "accountant": settings.accountant, "sampling": "poisson"}
    return TrialPlan(train_data, validation, fixed,
                     Segment(n, settings.batch_size, steps, noise),
                     score_noise, settings.private)


def _tuner(settings, plan, model_name, x, work, seed):
    model_fn = MODELS[model_name]
    hypermodel = TemperedSigmoidHyperModel(
        noise_multiplier=plan.settings["noise_multiplier"],
        model_fn=model_fn, input_shape=x.shape[1:], momentum=0.9)
    space = keras_tuner.HyperParameters()
    # Declared before the hypermodel's build: keras-tuner keeps the first
    # declaration of a name.
    if settings.l2_norm_clip is not None:
        space.Fixed("l2_norm_clip", settings.l2_norm_clip)
    if settings.learning_rate_range is not None:
        space.Float("learning_rate", *settings.learning_rate_range,
                    sampling="log")
    if settings.private:
        oracle = SecretTrialsOracle(settings.trial_count(),
                                    hyperparameters=space)
    else:
        oracle = keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective(OBJECTIVE, "max"),
            max_trials=settings.trials, seed=seed + 1,
            hyperparameters=space, max_retries_per_trial=0)
    return TrialTuner(oracle, hypermodel, plan, os.path.join(work, "best"),
                      directory=work, project_name="trials", overwrite=True)


def _load_best(tuner, settings, plan):
    """The best trial's model, or None when no trial trained one, with the
    ledger of what choosing it spent: the private search's record (its
    bound, not the one trial's steps), or the plain search's trials
    composed (every trial's steps: the ranking read them all)."""
    if tuner.best is None:
        return None
    model = load_model(os.path.join(tuner.best_dir, "model.keras"))
    if settings.private:
        ledger = Ledger(searches=[_search_record(settings, plan)])
    else:
        ledger = Ledger([plan.segment] * len(tuner.records))
    set_ledger(model, ledger)
    return model


def _results(settings, plan, tuner, model, test, public):
    """What the search releases (see the module docstring)."""
    segment, best = plan.segment, tuner.best
    delta = plan.settings["delta"]
    trial = {"num_examples": segment.num_examples,
             "batch_size": segment.batch_size, "epochs": settings.epochs,
             "steps": segment.steps,
             "noise_multiplier": segment.noise_multiplier,
             "validation_examples": len(plan.validation[1]),
             "validation": "public" if public else "a split of the "
                           "private training set"}
    results = {"private": settings.private, "delta": delta,
               "target_epsilon": settings.target_epsilon,
               "trial_settings": trial}
    if best is not None:
        results["best"] = {"hyperparameters": best.values,
                           "score": best.score,
                           "test_accuracy": _accuracy(model, *test),
                           "model": "model.keras"}
    else:  # K = 0 (Poisson), or every trial diverged
        results["best"] = None
        results["no_trial"] = ("No trial trained a model (K was 0, or "
                               "every trial diverged): nothing but this "
                               "was released.")
    if settings.private:
        results.update(_private_statement(settings, plan, public))
    else:
        results.update(_plain_statement(settings, segment, tuner, delta,
                                        public))
    return results


def _search_record(settings, plan):
    """The private search as its ledger entry: the one source of its RDP
    for both the statement and the released model's ledger."""
    return SearchRecord(plan.segment, plan.score_noise,
                        settings.trials_distribution, settings.trials_mean,
                        settings.trials_eta)


def _private_statement(settings, plan, public):
    segment, count = plan.segment, settings.trial_count()
    delta = plan.settings["delta"]
    epsilon = selection.epsilon_of_rdp(
        _search_record(settings, plan).rdp(), delta=delta)
    return {
        "epsilon": epsilon,
        "trial_count": {"distribution": count.distribution,
                        "expected_trials": count.expected_trials,
                        "eta": count.eta,
                        "gamma": getattr(count, "gamma", None)},
        "score": ("exact accuracy on the public validation set" if public
                  else f"accuracy on the validation split, its count of "
                  f"correct predictions noised with std "
                  f"{plan.score_noise:g}"),
        "statement": selection.search_statement(
            epsilon, delta, count, num_examples=segment.num_examples,
            batch_size=segment.batch_size, steps=segment.steps,
            noise_multiplier=segment.noise_multiplier,
            score_noise=plan.score_noise),
        "not_covered": (
            "Only the best trial's model, hyperparameters and score are "
            "covered; the other trials were deleted unseen. Releasing them "
            "too is another mechanism (the composition of all trials), and "
            "rerunning the search, with any settings, spends again. The "
            "test accuracy is measured on the test split, which no trial "
            "saw and this statement does not cover; the dataset's size is "
            "treated as public, as in every DP-SGD statement."),
    }


def _plain_statement(settings, segment, tuner, delta, public):
    accountant = settings.accountant
    trials = len(tuner.records)
    each = compose_epsilon([segment], delta=delta, accountant=accountant)
    every = compose_epsilon([segment] * trials, delta=delta,
                            accountant=accountant)
    return {
        "trials": tuner.records,
        "trial_epsilon": each,
        "epsilon_all_trials": every,
        "statement": (
            f"Each of the {trials} trials: ({each:.3f}, {delta:g})-DP "
            f"(DP-SGD, {segment.steps} steps, N={segment.num_examples}, "
            f"batch_size={segment.batch_size}, noise_multiplier="
            f"{segment.noise_multiplier:g}); releasing all of them: "
            f"({every:.3f}, {delta:g})-DP by composition; "
            f"{accountant_name(accountant)}, Poisson subsampling, add-or-"
            "remove-one neighbours."),
        "unprotected": (PUBLIC_RANKING if public else UNPROTECTED_RANKING),
    }


def _accuracy(model, x, y):
    """The share of ``x`` the model classifies as ``y`` (the saved model
    of a ScatterNet is its front joined to the head, not compiled)."""
    predicted = np.argmax(model.predict(x, batch_size=1024, verbose=0), -1)
    return float(np.mean(predicted == np.asarray(y).reshape(-1)))


def read_public_validation(path):
    """``(x, y)`` from an ``.npz`` file with arrays ``x`` and ``y`` (the
    ``--public_validation`` flag); None for None."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ValueError(f"public_validation={path!r}: no such file; give "
                         "an .npz file with arrays x and y.")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["x"], arrays["y"]
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(
            f"public_validation={path!r}: not an .npz file with arrays x "
            f"and y ({error}); write one with np.savez(path, x=..., "
            "y=...).") from None

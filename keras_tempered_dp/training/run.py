"""One DP training run, end to end, in named steps.

:func:`train` is what ``keras-tempered-dp train`` runs:

1. settings: a :class:`~.config.RunConfig`, validated on creation;
2. data: loaded and checked (finite, labels in range) before anything is
   written;
3. plan: delta, steps and the noise (:mod:`.plan`), composed with the
   checkpoint's ledger on a resume (:mod:`.checkpoint`);
4. model: built and compiled, or resumed from the checkpoint; a model
   whose first layers are fixed features (ScatterNet) is split, and those
   features are computed once over the data (they cost no privacy: each
   depends on one example and on nothing learned);
5. fit: with the epsilon callback, the non-finite-loss guard, logs and an
   epoch checkpoint;
6. results: the EMA applied, the test accuracy, the model and
   ``results.json`` (:mod:`.results`), written only when the run finished.

A run that fails before its first checkpoint removes the folder it made.
"""

import dataclasses
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_tempered_dp import stack
from keras_tempered_dp.averaging import ParameterAveraging
from keras_tempered_dp.callbacks import EpsilonCallback, NoiseScheduler
from keras_tempered_dp.data import DATASETS, load_dataset
from keras_tempered_dp.models import (
    DEFAULT_MODEL,
    FIXED_FRONT_MODELS,
    MODELS,
    MODELS_WITHOUT_ACTIVATION,
    activation_layer,
    join_front,
    split_fixed_front,
)
from keras_tempered_dp.privacy.accounting import Segment, merge_segments
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.sampling import (
    distributed_poisson_batches,
    poisson_batches,
    shuffled_batches,
)
from keras_tempered_dp.privacy.ledger import Ledger
from keras_tempered_dp.privacy.recording import privacy_ledger
from keras_tempered_dp.privacy.state import get_dp_state, set_ledger
from keras_tempered_dp.training import checkpoint as ckpt
from keras_tempered_dp.training import distribute
from keras_tempered_dp.training import results as out
from keras_tempered_dp.training.config import RunConfig
from keras_tempered_dp.training.features import precompute
from keras_tempered_dp.training.guards import StopOnNonFiniteLoss, check_data
from keras_tempered_dp.training.plan import plan_noise


def train(config=None, *, data=None, callbacks=(),
          stop_on_non_finite_loss=True, **settings):
    """Trains one model with DP-SGD and writes its outputs.

    Args:
        config: a :class:`~.config.RunConfig`; None builds one from
            ``settings``.
        data: ``((x, y), (x_test, y_test))`` NumPy arrays instead of
            loading ``dataset``.
        callbacks: more Keras callbacks, run before the package's own each
            epoch (an audit's gradient canaries use this).
        stop_on_non_finite_loss: False trains on after the loss stops being
            finite (a private search's trial: whether to stop would be
            decided by the private batch's loss, which no noise protects;
            the search judges the trained weights instead).
        **settings: flat field names of :class:`~.config.RunConfig`
            (``dataset=``, ``epochs=``, ``target_epsilon=``, ...),
            overriding ``config``'s.

    Returns:
        The results dictionary also written to ``results.json``.

    Raises:
        ValueError: for bad settings or data, before anything is written;
            :class:`~.checkpoint.CheckpointError` for a resume that would
            misstate privacy; :class:`~.guards.NonFiniteError` when the
            loss stops being finite.
    """
    start = time.time()
    if config is None:
        config = RunConfig.from_flat(**settings)
    elif settings:
        config = config.replace(**settings)
    strategy = distribute.make_strategy(config.distribute)  # TF starts here
    if not distribute.is_chief(strategy):
        return _as_worker(config, data, strategy, start)
    return _train(config, data, strategy, start, list(callbacks),
                  stop_on_non_finite_loss)


def _train(config, data, strategy, start, callbacks=(), guard=True):
    keras.utils.set_random_seed(config.data.seed)
    data = _load(config, data)
    part = _plan_part(config, len(data.x), _existing_checkpoint(
        config.output))
    with distribute.scope(strategy):
        built = _build_or_resume(config, part, data.x.shape[1:],
                                 data.num_classes)
    feature_time_s = None
    if built.front is not None:
        x, x_test, feature_time_s = precompute(
            built.front, data.x, data.x_test, verbose=config.output.verbose)
        data = dataclasses.replace(data, x=x, x_test=x_test)
    made_folder = not os.path.exists(config.output.output_dir)
    os.makedirs(config.output.output_dir, exist_ok=True)
    try:
        fitted = _fit(config, part, built, data, strategy, callbacks, guard)
        return _finish(config, part, built, fitted, data,
                       start=start, feature_time_s=feature_time_s)
    except BaseException:
        if made_folder and not ckpt.exists(config.output.output_dir):
            shutil.rmtree(config.output.output_dir, ignore_errors=True)
        raise


@dataclasses.dataclass(frozen=True)
class _Data:
    """The run's arrays, checked, and the model's number of classes."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def _load(config, data):
    (x, y), (x_test, y_test) = data or load_dataset(
        config.data.dataset, data_dir=config.data.data_dir,
        manual_dir=config.data.manual_dir, download=config.data.download)
    # Declared, never read off the (private) labels.
    spec = DATASETS[config.data.dataset]
    num_classes = config.data.num_classes or spec.num_classes
    if data is None and tuple(x.shape[1:]) != spec.shape:
        raise ValueError(
            f"dataset={config.data.dataset!r} declares inputs of shape "
            f"{spec.shape} but its files hold {tuple(x.shape[1:])}: the "
            "files are not that dataset's.")
    check_data(x, y, "training", num_classes)
    check_data(x_test, y_test, "test", num_classes)
    return _Data(x, y, x_test, y_test, num_classes)


def _as_worker(config, data, strategy, start):
    """A worker other than the chief: the same run, its outputs in a
    temporary folder removed at the end (the chief writes the run's)."""
    if ckpt.exists(config.output.output_dir) and not config.output.overwrite:
        _existing_checkpoint(config.output)  # raises, as on the chief
    folder = tempfile.mkdtemp(prefix="keras_tempered_dp_worker_")
    try:
        return _train(config.replace(output_dir=folder, overwrite=False),
                      data, strategy, start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _Part:
    """The part of the run that trains now, as planned before it starts."""

    plan: object            # NoisePlan of this part
    record: dict            # settings written into the checkpoint
    model_name: str
    epochs_done: int = 0    # finished epochs in the checkpoint
    part_start: int = 0     # epoch where these settings began
    ledger: tuple = ()      # the checkpoint's finished epochs
    checkpoint: object = None


@dataclasses.dataclass(frozen=True)
class _Built:
    """The network that trains, its fixed front (or None) and its EMA."""

    front: object
    network: object
    averaging: object = None


def _existing_checkpoint(output):
    if output.resume:
        found = ckpt.load(output.output_dir)
        if found is None and output.verbose:
            print(f"No checkpoint in {ckpt.folder_of(output.output_dir)}: "
                  "starting from epoch 0.")
        return found
    if ckpt.exists(output.output_dir):
        if not output.overwrite:
            raise ckpt.CheckpointError(
                f"output_dir={output.output_dir!r} holds the checkpoint of "
                "an earlier run. Pass --resume to continue it, --overwrite "
                "to delete it and start over, or choose another "
                "--output_dir.")
        ckpt.remove(output.output_dir)
    return None


def _plan_part(config, num_examples, checkpoint):
    """The part that trains now: its noise plan and record, checked
    against the checkpoint.

    A resume plans the part as the checkpoint's (its settings' part
    continues); only when that plan's record differs in privacy settings,
    which ``change_privacy`` allows, is the new part planned from the
    epoch the checkpoint reached, composed with all its ledger.
    """
    model_name = config.model.model or DEFAULT_MODEL[config.data.dataset]
    if checkpoint is None:
        plan = _plan(config, num_examples, (), 0)
        return _Part(plan, _record(config, plan, model_name), model_name)
    if checkpoint.epochs_done >= config.optimizer.epochs:
        raise ckpt.CheckpointError(
            f"The checkpoint has {checkpoint.epochs_done} epochs done and "
            f"epochs={config.optimizer.epochs}: nothing left to train. Pass "
            "a larger --epochs to train on.")
    ledger = tuple(checkpoint.ledger)
    part_start = checkpoint.part_start
    plan = _plan(config, num_examples, ledger[:part_start], part_start)
    record = _record(config, plan, model_name)
    if ckpt.check_resume(checkpoint, record, config.output.change_privacy):
        part_start = checkpoint.epochs_done
        plan = _plan(config, num_examples, ledger, part_start)
        record = _record(config, plan, model_name)
    return _Part(plan, record, model_name, checkpoint.epochs_done,
                 part_start, ledger, checkpoint)


def _plan(config, num_examples, earlier_ledger, part_start):
    previous = _segments(earlier_ledger)
    if previous and config.privacy.noise_schedule != "constant":
        raise ckpt.CheckpointError(
            "A noise schedule cannot start in the middle of a run whose "
            "earlier part used other privacy settings; start a new run.")
    return plan_noise(config.privacy, num_examples=num_examples,
                      batch_size=config.optimizer.batch_size,
                      sampling=config.data.sampling,
                      epochs=config.optimizer.epochs - part_start,
                      previous=previous)


def _segments(ledger):
    """Ledger epochs as accounting segments, equal neighbours merged."""
    return merge_segments(
        Segment(e["num_examples"], e["batch_size"], e["steps"],
                e["noise_multiplier"]) for e in ledger)


def _record(config, plan, model_name):
    """Every setting that matters to privacy or to the model."""
    tempered = config.model.activation == "tempered_sigmoid"
    activation = config.model.activation
    if model_name in MODELS_WITHOUT_ACTIVATION:  # none to record or match
        tempered, activation = False, None
    return dict(
        model=model_name, activation=activation,
        s=config.model.s if tempered else None,
        T=config.model.T if tempered else None,
        o=config.model.o if tempered else None,
        num_examples=plan.num_examples, batch_size=plan.batch_size,
        sampling=plan.sampling, steps_per_epoch=plan.steps_per_epoch,
        l2_norm_clip=config.dp.l2_norm_clip,
        clipping=config.engine.clipping,
        noise_multiplier=plan.noise_multiplier,
        noise_schedule=repr(plan.schedule) if plan.schedule else "constant",
        delta=plan.delta, accountant=plan.accountant,
        ema_decay=config.recipe.ema_decay,
        learning_rate=config.dp.learning_rate,
        momentum=config.dp.momentum,
        # With True the checkpoint holds the head only. None for models
        # without a fixed front, as in checkpoints older than the key.
        precompute_features=(config.model.precompute_features
                             if model_name in FIXED_FRONT_MODELS else None))


def _noise_seed(config, part):
    """The seed of this part's noise and batches (None: the OS's)."""
    noise_seed = config.dp.noise_seed
    if noise_seed is not None and part.epochs_done:
        # A resumed run must not replay the first epochs' noise (equal
        # noise on two steps cancels in their difference) or batches.
        noise_seed = resumed_seed(noise_seed, part.epochs_done)
    return noise_seed


def _engine_settings(config, part, **dp):
    """What compile_dp and make_private take: the config's DPConfig with
    this part's noise and seed (and ``dp``'s changes), and its
    EngineOptions, both as they are."""
    expected = (config.optimizer.batch_size
                if config.data.sampling == "poisson" else None)
    return dict(
        config=dataclasses.replace(
            config.dp, noise_multiplier=part.plan.noise_multiplier,
            noise_seed=_noise_seed(config, part), **dp),
        expected_batch_size=expected,
        engine_options=config.engine_options)


def _build_or_resume(config, part, input_shape, num_classes):
    """The network that trains, compiled for DP-SGD, its fixed front to
    precompute (or None) and its EMA (or None)."""
    averaging = (None if config.recipe.ema_decay is None
                 else ParameterAveraging(decay=config.recipe.ema_decay))
    front = None
    if part.checkpoint is None or part.record["precompute_features"]:
        network = _new_model(config, part, input_shape, num_classes)
        if part.record["precompute_features"]:
            front, network = split_fixed_front(network)
    if part.checkpoint is None:
        compile_dp(network, **_engine_settings(config, part))
        return _Built(front, network, averaging)
    return _Built(front, _resumed(config, part, averaging), averaging)


def _resumed(config, part, averaging):
    """The checkpoint's network, its ledger and EMA, made private again."""
    checkpoint = part.checkpoint
    network = ckpt.load_model(checkpoint)
    if checkpoint.privacy_ledger is not None:
        set_ledger(network, Ledger.from_dict(checkpoint.privacy_ledger))
    # The checkpoint's optimizer, with its own learning rate, carries on.
    make_private(network, **_engine_settings(config, part,
                                             learning_rate=None))
    if (checkpoint.l2_norm_clip is not None
            and config.engine.clipping == "quantile"):  # adapted clip
        get_dp_state(network).engine.l2_norm_clip = checkpoint.l2_norm_clip
    if averaging is not None:
        averaging.set_state(network, ckpt.load_ema(checkpoint))
    return network


def _new_model(config, part, input_shape, num_classes):
    """The registry's model for these settings, not compiled."""
    tempered = config.model.activation == "tempered_sigmoid"
    activation = (activation_layer("tempered_sigmoid", s=config.model.s,
                                   T=config.model.T, o=config.model.o)
                  if tempered else config.model.activation)
    try:
        network = MODELS[part.model_name](activation=activation,
                                         input_shape=input_shape,
                                         num_classes=num_classes)
    except ValueError as error:  # Keras: a layer's output would be empty
        raise ValueError(
            f"model={part.model_name!r} does not fit this dataset's inputs "
            f"of shape {tuple(input_shape)} ({str(error)[:200]}). Leave "
            "--model out to use the dataset's own model "
            f"({DEFAULT_MODEL[config.data.dataset]}).") from error
    return network


def resumed_seed(seed, epochs_done):
    """A fresh seed for the part of a seeded run after ``epochs_done``.

    >>> resumed_seed(3, 0), resumed_seed(3, 2) != 3
    (3, True)
    """
    if epochs_done == 0:
        return seed
    return int(np.random.SeedSequence([seed, epochs_done]).generate_state(
        1)[0])


class _EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: the ledger entry, then the checkpoint.

    ``ledger`` grows by one entry an epoch: the checkpoint's epochs, then
    this part's."""

    def __init__(self, config, part, averaging):
        super().__init__()
        self.config, self.part, self.averaging = config, part, averaging
        self.ledger = list(part.ledger)

    def on_epoch_end(self, epoch, logs=None):
        engine = get_dp_state(self.model).engine
        part = self.part
        self.ledger.append(ckpt.ledger_entry(part.record, epoch,
                                             engine.noise_multiplier))
        clip = engine.l2_norm_clip if engine.clipping == "quantile" else None
        ckpt.save(self.config.output.output_dir, self.model,
                  ckpt.Checkpoint(epoch + 1, part.record, self.ledger, clip,
                                  part_start=part.part_start,
                                  privacy_ledger=privacy_ledger(
                                      self.model).to_dict()),
                  self.averaging)


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """What the fit left: the per-epoch log and the ledger entries."""

    per_epoch: list
    ledger: tuple


def _batches(config, part, data, strategy):
    """This part's batches: Poisson (each replica sampling its own shard
    under a strategy) or shuffled."""
    batch_size, seed = config.optimizer.batch_size, _noise_seed(config, part)
    if part.plan.sampling != "poisson":
        return shuffled_batches(data.x, data.y, batch_size, seed=seed)
    if strategy is None:
        return poisson_batches(data.x, data.y, batch_size, seed=seed)
    return distributed_poisson_batches(strategy, data.x, data.y,
                                       batch_size, seed=seed)


def _epsilon_callback(config, part, network):
    plan = part.plan
    # A checkpoint older than the model's ledger: its steps are declared
    # from its per-epoch report (the steps the ledger would hold).
    earlier = {}
    if part.epochs_done and not privacy_ledger(network).steps:
        earlier = dict(initial_steps=(part.epochs_done - part.part_start)
                       * plan.steps_per_epoch,
                       previous_segments=plan.previous)
    return EpsilonCallback(
        plan.num_examples, config.optimizer.batch_size, delta=plan.delta,
        steps_per_epoch=plan.steps_per_epoch, accountant=plan.accountant,
        **earlier)


def _fit(config, part, built, data, strategy, callbacks=(), guard=True):
    folder, network = config.output.output_dir, built.network
    extra = list(callbacks) + ([NoiseScheduler(part.plan.schedule)]
                               if part.plan.schedule is not None else [])
    if built.averaging is not None:
        extra.append(built.averaging)
    log = os.path.join(folder, "log.csv")
    if part.epochs_done:
        out.truncate_log(log, part.epochs_done)  # rows of unsaved epochs
    checkpoint = _EpochCheckpoint(config, part, built.averaging)
    network.fit(
        _batches(config, part, data, strategy), epochs=config.optimizer.epochs,
        initial_epoch=part.epochs_done,
        steps_per_epoch=part.plan.steps_per_epoch,
        # The dataset draws its own batches (Keras 3 warns that its default
        # shuffle=True is ignored for a tf.data.Dataset).
        shuffle=False,
        validation_data=(data.x_test, data.y_test),
        verbose=config.output.verbose,
        # The checkpoint (and its ledger) before the logs: an epoch whose
        # metrics and epsilon were written out is always accounted.
        callbacks=extra + ([StopOnNonFiniteLoss()] if guard else []) + [
            _epsilon_callback(config, part, network),
            checkpoint,
            keras.callbacks.CSVLogger(log, append=part.epochs_done > 0),
            keras.callbacks.TensorBoard(os.path.join(folder,
                                                        "tensorboard")),
        ])
    return _Fitted(out.read_log(log), tuple(checkpoint.ledger))


def _finish(config, part, built, fitted, data, *, start, feature_time_s):
    """The EMA applied, the test accuracy, the saved model and the
    results (written to ``results.json`` and returned)."""
    folder, network, plan = config.output.output_dir, built.network, part.plan
    if built.averaging is not None:
        built.averaging.apply()  # the averaged weights are the result
    _, test_accuracy = network.evaluate(data.x_test, data.y_test, verbose=0)
    # The saved model takes images: the front joined back to the head.
    ledger = privacy_ledger(network)
    saved = (network if built.front is None
             else join_front(built.front, network))
    set_ledger(saved, ledger)
    out.save_model(saved, os.path.join(folder, "model.keras"))
    # What the steps recorded, not what was planned.
    epsilon = ledger.epsilon(delta=plan.delta, accountant=plan.accountant)
    flat = config.flat()
    flat.update(model=part.model_name, activation=part.record["activation"],
                noise_multiplier=plan.noise_multiplier, delta=plan.delta,
                num_examples=plan.num_examples,
                noise_schedule=part.record["noise_schedule"])
    results = {
        "config": flat,
        "epochs": fitted.per_epoch,
        "epsilon": epsilon,
        "accountant": plan.accountant,
        "test_accuracy": float(test_accuracy),
        "privacy": out.statement(
            plan, config.optimizer.epochs - part.part_start, epsilon),
        "wall_time_s": time.time() - start,
        # Which Keras backend ran the steps (and so which engine).
        "stack": stack.describe(),
        "feature_time_s": feature_time_s,
        "resumed_from_epoch": part.epochs_done,
        "ledger": list(fitted.ledger),
        "privacy_ledger": ledger.to_dict(),
    }
    out.write_json(os.path.join(folder, "results.json"), results)
    return results

"""keras-tuner search spaces over the tempered sigmoid's (s, T, o).

Tuning on private data spends privacy too: every trial trains on the data, so
the released model's guarantee must account for the search (e.g. Papernot &
Steinke, "Hyperparameter tuning with Renyi differential privacy", ICLR 2022),
or the search must run on public or synthetic data of the same kind.
"""

import dataclasses

import keras_tuner

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import MODELS, mnist_cnn, split_fixed_front
from keras_tempered_dp.privacy.accounting import ACCOUNTANTS
from keras_tempered_dp.privacy.compile import compile_dp
# train's own checks, so that tune's flags are refused in the same words.
from keras_tempered_dp.validation import check_choice, check_number


class TemperedSigmoidHyperModel(keras_tuner.HyperModel):
    """Searches s, T, o, the learning rate and the clipping norm.

    The space (each default is the paper's tanh point or TF Privacy's
    tutorial setting):

    ==============  =====================  =========  =======
    name            range                  sampling   default
    ==============  =====================  =========  =======
    s               0.5 .. 4               linear     2.0
    T               0.25 .. 8              log        2.0
    o               0 .. 2                 linear     1.0
    learning_rate   0.001 .. 4             log        0.15
    l2_norm_clip    0.01 .. 10             log        1.0
    ==============  =====================  =========  =======

    A model without activations (``scatternet_linear``) has no s, T, o to
    search; the space is then the learning rate and the clip.

    Each trial builds ``model_fn(activation=TemperedSigmoid(s, T, o),
    input_shape=..., num_classes=...)`` and compiles it with
    :func:`compile_dp` at the fixed ``noise_multiplier``, so every trial
    spends the same privacy; the search as a whole spends more (see the
    module docstring).

    Args:
        noise_multiplier: sigma of every trial.
        model_fn: builds the network (default the paper's MNIST CNN).
        input_shape, num_classes: forwarded to ``model_fn``.
        momentum, num_microbatches, optimizer: forwarded to ``compile_dp``.
        precomputed_features: for a model with a fixed front (ScatterNet),
            build only the head, to fit on features computed once with
            :func:`~keras_tempered_dp.models.split_fixed_front`'s front
            (:func:`search` does).

    Example:

    >>> import keras_tuner
    >>> hp = keras_tuner.HyperParameters()
    >>> model = TemperedSigmoidHyperModel(noise_multiplier=1.1).build(hp)
    >>> hp.values["T"]
    2.0
    """

    def __init__(self, noise_multiplier, model_fn=mnist_cnn,
                 input_shape=(28, 28, 1), num_classes=10, momentum=0.0,
                 num_microbatches=None, optimizer=None,
                 precomputed_features=False, name="tempered_sigmoid",
                 tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.noise_multiplier = noise_multiplier
        self.model_fn = model_fn
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.momentum = momentum
        self.num_microbatches = num_microbatches
        self.optimizer = optimizer
        self.precomputed_features = precomputed_features
        probe = model_fn(activation=TemperedSigmoid(),
                         input_shape=input_shape, num_classes=num_classes)
        self.tunes_activation = any(
            isinstance(layer, TemperedSigmoid) for layer in probe.layers)

    def build(self, hp):
        activation = "tanh"  # unused by a model without activations
        if self.tunes_activation:
            activation = TemperedSigmoid(
                s=hp.Float("s", 0.5, 4.0, default=2.0),
                T=hp.Float("T", 0.25, 8.0, sampling="log", default=2.0),
                o=hp.Float("o", 0.0, 2.0, default=1.0),
            )
        model = self.model_fn(activation=activation,
                              input_shape=self.input_shape,
                              num_classes=self.num_classes)
        if self.precomputed_features:
            _, model = split_fixed_front(model)
        compile_dp(
            model,
            l2_norm_clip=hp.Float("l2_norm_clip", 0.01, 10.0,
                                  sampling="log", default=1.0),
            noise_multiplier=self.noise_multiplier,
            learning_rate=hp.Float("learning_rate", 1e-3, 4.0,
                                   sampling="log", default=0.15),
            momentum=self.momentum,
            num_microbatches=self.num_microbatches,
            optimizer=self.optimizer,
        )
        return model


TUNING_PRIVACY_NOTE = (
    "Note: every trial trained on the private data, so the search as a "
    "whole spends more privacy than one trial's epsilon. Account for the "
    "search (e.g. Papernot & Steinke, ICLR 2022) or tune on public data of "
    "the same kind.")


def require_tensorboard():
    """Raises an ImportError saying what to install when keras-tuner cannot
    run a trial here.

    keras-tuner 1.4 imports ``tensorboard`` in every trial on the TensorFlow
    backend; TensorFlow >= 2.16 no longer installs it, and keras-tuner then
    fails every trial with only a logged traceback.
    """
    import importlib

    from keras_tempered_dp import stack
    if stack.backend() != "tensorflow":
        return
    try:
        importlib.import_module("tensorboard")
    except ImportError as error:
        raise ImportError(
            "The keras-tuner search needs the tensorboard package (keras-"
            "tuner imports it in every trial on the TensorFlow backend), "
            f"which is not installed beside {stack.describe()}: pip install "
            "tensorboard.") from error


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The numbers of a :func:`search`, validated on creation.

    :func:`search` makes one before it loads data or runs a trial, so a bad
    setting (``--max_trials=0``, ``--epochs=0``, ``--delta=0``, ...) is
    refused at once, by name, instead of running a meaningless or endless
    search. ``delta`` can only be checked against ``1/N`` once the data is
    loaded: :meth:`resolved_delta`.

    Example:

    >>> SearchSettings(max_trials=0)
    Traceback (most recent call last):
    ...
    ValueError: max_trials=0: must be >= 1.
    """

    target_epsilon: float = 3.0
    max_trials: int = 10
    epochs: int = 5
    batch_size: int = 64
    delta: float | None = None
    validation_fraction: float = 0.1
    accountant: str = "rdp"
    model: str | None = None

    def __post_init__(self):
        check_number("target_epsilon", self.target_epsilon, low=0,
                      low_open=True)
        for name in ("max_trials", "epochs", "batch_size"):
            check_number(name, getattr(self, name), low=1, integer=True)
        # delta=0 is refused, not replaced by the default.
        check_number("delta", self.delta, low=0, low_open=True,
                      allow_none=True)
        check_number("validation_fraction", self.validation_fraction,
                     low=0, high=1, low_open=True, high_open=True,
                     hint="It is the share of the training set held out "
                          "to score trials.")
        check_choice("accountant", self.accountant, ACCOUNTANTS)
        if self.model is not None:
            check_choice("model", self.model, tuple(MODELS))

    def resolved_delta(self, n):
        """``delta``, or ``min(1e-5, 1/(10 n))`` when None, for ``n``
        training examples.

        Raises:
            ValueError: if ``n`` is below one batch, or ``delta >= 1/n``.
        """
        if n < 1:
            raise ValueError(
                f"batch_size={self.batch_size!r}: larger than the training "
                "examples left after the validation split; use a smaller "
                "batch size.")
        if self.delta is None:
            return min(1e-5, 1 / (10 * n))
        if self.delta >= 1 / n:
            raise ValueError(
                f"delta={self.delta!r}: must be below 1/N = {1 / n:.3g} "
                f"(N = {n} training examples per trial); a delta that large "
                "allows releasing an example outright.")
        return self.delta


def search(*, dataset="digits", target_epsilon=3.0, max_trials=10, epochs=5,
           batch_size=64, delta=None, validation_fraction=0.1, seed=0,
           output_dir="runs/tune", data_dir=None, manual_dir=None,
           download=True, verbose=0, accountant="rdp", model=None):
    """A keras-tuner random search over (s, T, o, learning rate, clip).

    ``model`` names a registry model (default: the dataset's); a ScatterNet
    model's features are computed once, and its trials train the head.

    Every trial trains for ``epochs`` with the noise calibrated so that the
    trial ends at ``target_epsilon`` (Poisson accounting with
    ``accountant``, "rdp" or "pld"); trials are scored
    on a validation split of the training set, never on the test set.

    Returns:
        ``(best_hyperparameters_dict, noise_multiplier)``.

    Raises:
        ValueError: naming the argument, for ``max_trials``, ``epochs`` or
            ``batch_size`` below 1, ``delta`` not in ``(0, 1/N)``,
            ``target_epsilon <= 0``, a ``validation_fraction`` outside
            ``(0, 1)`` or an unknown ``accountant`` or ``model``
            (:class:`SearchSettings`); all but ``delta >= 1/N`` before
            the data is loaded.
    """
    settings = SearchSettings(
        target_epsilon=target_epsilon, max_trials=max_trials, epochs=epochs,
        batch_size=batch_size, delta=delta,
        validation_fraction=validation_fraction, accountant=accountant,
        model=model)
    require_tensorboard()
    from keras_tempered_dp.data import load_dataset
    from keras_tempered_dp.models import DEFAULT_MODEL
    from keras_tempered_dp.privacy.accounting import (
        calibrate_noise_multiplier,
    )

    (x, y), _ = load_dataset(dataset, data_dir=data_dir,
                             manual_dir=manual_dir, download=download)
    tr, val = _split_for_trials(len(x), batch_size, validation_fraction,
                                seed)
    delta = settings.resolved_delta(len(tr))
    noise = calibrate_noise_multiplier(target_epsilon, len(tr), batch_size,
                                       epochs=epochs, delta=delta,
                                       accountant=accountant)
    x, hypermodel = _trial_hypermodel(
        MODELS[model or DEFAULT_MODEL[dataset]], x, int(y.max()) + 1, noise)
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective="val_accuracy", max_trials=max_trials,
        seed=seed, directory=output_dir, project_name=dataset,
        overwrite=True)
    tuner.search(x[tr], y[tr], validation_data=(x[val], y[val]),
                 batch_size=batch_size, epochs=epochs, verbose=verbose)
    return tuner.get_best_hyperparameters()[0].values, noise


def _split_for_trials(n_examples, batch_size, validation_fraction, seed):
    """``(train, validation)`` indices: a seeded permutation's first
    ``validation_fraction`` scores the trials; the rest, cut to whole
    batches, trains them."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n_examples)
    n_val = int(n_examples * validation_fraction)
    val, tr = order[:n_val], order[n_val:]
    n = len(tr) - len(tr) % batch_size
    return tr[:n], val


def _trial_hypermodel(model_fn, x, num_classes, noise):
    """``(x, hypermodel)``: for a model with a fixed front (ScatterNet),
    ``x`` becomes its features and the trials train the head alone."""
    front, _ = split_fixed_front(model_fn(input_shape=x.shape[1:],
                                          num_classes=num_classes))
    if front is not None:  # the features once, as train() computes them
        from keras_tempered_dp.training.features import precompute
        x, _, _ = precompute(front, x, x[:0])
    hypermodel = TemperedSigmoidHyperModel(
        noise_multiplier=noise, model_fn=model_fn, input_shape=x.shape[1:]
        if front is None else front.input_shape[1:],
        num_classes=num_classes, momentum=0.9,
        precomputed_features=front is not None)
    return x, hypermodel

"""The keras-tuner search space over the tempered sigmoid's (s, T, o).

For users of plain keras-tuner. Tuning on private data spends privacy too:
every trial trains on the data, so the released model's guarantee must
account for the search; :func:`keras_tempered_dp.tuning.search` with
``private=True`` does (Papernot & Steinke, ICLR 2022).
"""

import keras_tuner

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import mnist_cnn, split_fixed_front
from keras_tempered_dp.privacy.compile import compile_dp


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

"""keras-tuner search spaces over the tempered sigmoid's (s, T, o).

Tuning on private data spends privacy too: every trial trains on the data, so
the released model's guarantee must account for the search (e.g. Papernot &
Steinke, "Hyperparameter tuning with Renyi differential privacy", ICLR 2022),
or the search must run on public or synthetic data of the same kind.
"""

import keras_tuner

from keras_tempered_dp.layers import TemperedSigmoid
from keras_tempered_dp.models import mnist_cnn
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
                 name="tempered_sigmoid", tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.noise_multiplier = noise_multiplier
        self.model_fn = model_fn
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.momentum = momentum
        self.num_microbatches = num_microbatches
        self.optimizer = optimizer

    def build(self, hp):
        activation = TemperedSigmoid(
            s=hp.Float("s", 0.5, 4.0, default=2.0),
            T=hp.Float("T", 0.25, 8.0, sampling="log", default=2.0),
            o=hp.Float("o", 0.0, 2.0, default=1.0),
        )
        model = self.model_fn(activation=activation,
                              input_shape=self.input_shape,
                              num_classes=self.num_classes)
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

"""keras_tempered_dp: tempered sigmoids and DP-SGD for Keras.

Papernot et al. (AAAI 2021): bounded activations ``s * sigmoid(T * x) - o``
train better than ReLU under differentially private SGD.
"""

from keras_tempered_dp.activations import (
    get_activation,
    list_activations,
    make_tempered_sigmoid,
    register_activation,
    tempered_sigmoid,
)
from keras_tempered_dp.callbacks import EpsilonCallback, NoiseScheduler
from keras_tempered_dp.layers import Scattering2D, TemperedSigmoid
from keras_tempered_dp.models import (
    cifar10_cnn,
    mnist_cnn,
    scatternet_cnn,
    scatternet_linear,
)
from keras_tempered_dp.privacy import (
    DPConfig,
    Ledger,
    Segment,
    calibrate_noise_multiplier,
    compile_dp,
    compose_epsilon,
    compute_epsilon,
    load_model,
    make_private,
    mark_sampling,
    privacy_ledger,
    privacy_statement,
    save_model,
    steps_per_epoch,
)

__version__ = "0.1.0"

__all__ = [
    "DPConfig",
    "EpsilonCallback",
    "Ledger",
    "NoiseScheduler",
    "Scattering2D",
    "Segment",
    "TemperedSigmoid",
    "calibrate_noise_multiplier",
    "cifar10_cnn",
    "compile_dp",
    "compose_epsilon",
    "compute_epsilon",
    "get_activation",
    "list_activations",
    "load_model",
    "make_private",
    "make_tempered_sigmoid",
    "mark_sampling",
    "mnist_cnn",
    "privacy_ledger",
    "privacy_statement",
    "register_activation",
    "save_model",
    "scatternet_cnn",
    "scatternet_linear",
    "steps_per_epoch",
    "tempered_sigmoid",
    "__version__",
]

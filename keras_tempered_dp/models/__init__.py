"""The networks: the tempered-sigmoid paper's CNNs, De et al.'s WRN-16-4,
Tramer and Boneh's ScatterNet models, a small ViT, a token transformer
encoder and a sequential-image LSTM.

Every builder takes ``activation=`` (see :func:`activation_layer`),
``input_shape=`` and ``num_classes=``; :data:`MODELS` maps the names the
command line uses to them, and :data:`DEFAULT_MODEL` names each dataset's
model.
"""

from keras_tempered_dp.models.activation import activation_layer
from keras_tempered_dp.models.paper import cifar10_cnn, digits_cnn, mnist_cnn
from keras_tempered_dp.models.recurrent import sequence_lstm
from keras_tempered_dp.models.scatternet import (
    join_front,
    scatternet_cnn,
    scatternet_linear,
    split_fixed_front,
)
from keras_tempered_dp.models.transformer import transformer_encoder, vit
from keras_tempered_dp.models.wide_resnet import wide_resnet, wrn16_4

MODELS = {"mnist_cnn": mnist_cnn, "cifar10_cnn": cifar10_cnn,
          "digits_cnn": digits_cnn, "wrn16_4": wrn16_4,
          "scatternet_linear": scatternet_linear,
          "scatternet_cnn": scatternet_cnn, "vit": vit,
          "sequence_lstm": sequence_lstm}

# Models whose first layers are fixed features (split_fixed_front finds
# them); train() computes those once over the data.
FIXED_FRONT_MODELS = ("scatternet_linear", "scatternet_cnn")

# Models that take activation= for the registry's sake and use none.
MODELS_WITHOUT_ACTIVATION = ("scatternet_linear",)

# The paper's model for each dataset (digits: a small CNN of the same shape).
DEFAULT_MODEL = {"digits": "digits_cnn", "mnist": "mnist_cnn",
                 "fashion_mnist": "mnist_cnn", "cifar10": "cifar10_cnn"}

__all__ = [
          "DEFAULT_MODEL",
          "FIXED_FRONT_MODELS",
          "MODELS",
          "MODELS_WITHOUT_ACTIVATION",
          "activation_layer",
          "cifar10_cnn",
          "digits_cnn",
          "join_front",
          "mnist_cnn",
          "scatternet_cnn",
          "scatternet_linear",
          "sequence_lstm",
          "split_fixed_front",
          "transformer_encoder",
          "vit",
          "wide_resnet",
          "wrn16_4",
]

"""The package's Keras layers: the tempered sigmoid, a weight-standardized
convolution, a fixed scattering transform and learned position
embeddings."""

from keras_tempered_dp.layers.position_embedding import AddPositionEmbedding
from keras_tempered_dp.layers.scattering import Scattering2D
from keras_tempered_dp.layers.tempered_sigmoid import TemperedSigmoid
from keras_tempered_dp.layers.ws_conv import WSConv2D

__all__ = ["AddPositionEmbedding", "Scattering2D", "TemperedSigmoid", "WSConv2D"]

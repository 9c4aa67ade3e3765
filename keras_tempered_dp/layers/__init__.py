"""The package's Keras layers: the tempered sigmoid, a weight-standardized
convolution and a fixed scattering transform."""

from keras_tempered_dp.layers.scattering import Scattering2D
from keras_tempered_dp.layers.tempered_sigmoid import TemperedSigmoid
from keras_tempered_dp.layers.ws_conv import WSConv2D

__all__ = ["Scattering2D", "TemperedSigmoid", "WSConv2D"]

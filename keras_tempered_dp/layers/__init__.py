"""The package's Keras layers: the tempered sigmoid and a weight-standardized
convolution."""

from keras_tempered_dp.layers.tempered_sigmoid import TemperedSigmoid
from keras_tempered_dp.layers.ws_conv import WSConv2D

__all__ = ["TemperedSigmoid", "WSConv2D"]

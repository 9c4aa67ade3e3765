"""Scattering2D: a fixed 2-D scattering network of order 2 as a Keras layer.

Bruna and Mallat's scattering transform (2013), as kymatio 0.3.0 computes it
and Tramer and Boneh (ICLR 2021) feed to DP models. With ``x`` one channel of
the image (reflection-padded to a multiple of ``2^J``), ``psi_{j,l}`` the
Morlet wavelets of scale ``j < J`` and angle ``l < L``, ``phi_J`` the
Gaussian low-pass and ``|.|`` the complex modulus:

    S0 x        = (x * phi_J)(2^J u)
    S1 x[j1,l1] = (|x * psi_{j1,l1}| * phi_J)(2^J u)
    S2 x[j1,l1,j2,l2] = (||x * psi_{j1,l1}| * psi_{j2,l2}| * phi_J)(2^J u),  j2 > j1

``1 + J L + L^2 J (J - 1) / 2`` maps per image channel (81 for J=2, L=8) on a
grid ``2^J`` times coarser (7 x 7 for 28 x 28). Convolutions are products in
the Fourier domain; each modulus is taken at the coarsest resolution its
wavelet allows, as in kymatio (:mod:`.scattering_filters` has the filters).

Input ``[batch, H, W, C]``; output ``[batch, H / 2^J, W / 2^J, C * K]``, the
channel of image channel ``c`` and coefficient ``k`` at ``c * K + k``, with
kymatio's coefficient order (order 0; order 1 by ``(j1, l1)``; order 2 by
``(j1, l1, j2, l2)``), so that ``channels_first`` features are kymatio's
``[batch, C, K, H', W']`` reshaped.

The layer has no weights: nothing of it is trained or clipped, and its
output depends on one image only, so features can be computed once over a
dataset at no privacy cost (:func:`keras_tempered_dp.training.train` does).
It is TensorFlow code (complex FFTs), as the package's DP-SGD is: it runs on
Keras 2 and on Keras 3's TensorFlow backend, and refuses the others.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp import stack
from keras_tempered_dp.activations import PACKAGE
from keras_tempered_dp.layers.scattering_filters import filter_bank
from keras_tempered_dp.validation import check_number


def padded_size(size, J):
    """kymatio's padded size: the next multiple of ``2^J`` past
    ``size + 2^J``, so the border pixels the output drops are padding.

    >>> padded_size(28, 2), padded_size(32, 3)
    (36, 48)
    """
    return ((size + 2 ** J) // 2 ** J + 1) * 2 ** J


def num_coefficients(J, L):
    """Maps per image channel: ``1 + J L + L^2 J (J - 1) / 2``.

    >>> num_coefficients(2, 8)
    81
    """
    return 1 + J * L + L * L * J * (J - 1) // 2


def _subsample(signal_hat, k):
    """The Fourier transform of the signal subsampled by ``k`` per axis:
    the spectrum's ``k x k`` aliases averaged."""
    if k == 1:
        return signal_hat
    M, N = signal_hat.shape[-2], signal_hat.shape[-1]
    lead = tf.shape(signal_hat)[:-2]
    folded = tf.reshape(signal_hat,
                        tf.concat([lead, [k, M // k, k, N // k]], 0))
    return tf.reduce_mean(folded, axis=[-4, -2])


def _modulus_hat(signal_hat, complex_dtype):
    """``fft(|ifft(signal_hat)|)``: the modulus, back in Fourier."""
    modulus = tf.abs(tf.signal.ifft2d(signal_hat))
    return tf.signal.fft2d(tf.cast(modulus, complex_dtype))


@keras.utils.register_keras_serializable(package=PACKAGE)
class Scattering2D(keras.layers.Layer):
    """The order-2 scattering transform of each image channel; no weights.

    Args:
        J: scales (``>= 1``); the output is ``2^J`` times coarser and needs
            ``H, W >= 2^J``. Tramer and Boneh use 2.
        L: angles per scale (``>= 1``); 8 in kymatio and the paper.
        **kwargs: the base Layer's (``name``, ``dtype``). The transform runs
            in float32 (float64 with ``dtype="float64"``): under a float16
            or bfloat16 policy the output is cast to it afterwards.

    Example:

    >>> import numpy as np
    >>> layer = Scattering2D(J=2, L=8)
    >>> tuple(layer(np.zeros([2, 28, 28, 1], "float32")).shape)
    (2, 7, 7, 81)
    >>> layer.count_params()
    0
    """

    def __init__(self, J=2, L=8, **kwargs):
        # The images reach call() as given: a float16 policy's autocast
        # would round them before the float32 transform.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.J = check_number("J", J, low=1, integer=True,
                              hint="It is the number of scales; the "
                                   "output is 2^J times coarser.")
        self.L = check_number("L", L, low=1, integer=True,
                              hint="It is the number of orientations.")
        self.trainable = False
        if stack.backend() != "tensorflow":
            raise RuntimeError(
                f"Scattering2D runs on TensorFlow (complex FFTs); this is "
                f"{stack.describe()}. Set KERAS_BACKEND=tensorflow, as the "
                "package's DP-SGD needs too.")

    def _check_shape(self, input_shape):
        if len(input_shape) != 4 or None in tuple(input_shape[1:]):
            raise ValueError(
                f"Scattering2D takes images [batch, H, W, C] of known size; "
                f"got input shape {tuple(input_shape)}.")
        H, W = int(input_shape[1]), int(input_shape[2])
        if min(H, W) < 2 ** self.J:
            raise ValueError(
                f"Scattering2D(J={self.J}) needs images of at least "
                f"2^J = {2 ** self.J} pixels a side; got {H} x {W}. Use a "
                "smaller J.")
        return H, W, int(input_shape[3])

    def build(self, input_shape):
        H, W, _ = self._check_shape(input_shape)
        M, N = padded_size(H, self.J), padded_size(W, self.J)
        # kymatio pads with np.pad(mode="reflect"), which reflects again
        # when the padding reaches the image's size (H = 2^J); gathering
        # its indices reproduces that, where tf.pad's REFLECT refuses.
        self._rows = tf.constant(np.pad(
            np.arange(H), ((M - H) // 2, (M - H + 1) // 2), mode="reflect"))
        self._cols = tf.constant(np.pad(
            np.arange(W), ((N - W) // 2, (N - W + 1) // 2), mode="reflect"))
        bank = filter_bank(M, N, self.J, self.L)
        complex_dtype = self._complex_dtype()
        # Constants, not weights: tf.constant keeps them out of the
        # layer's variables (and so out of saved files and the engine).
        self._phi = [tf.constant(p, complex_dtype) for p in bank.phi]
        self._psi = [[tf.constant(p, complex_dtype) for p in levels]
                     for levels in bank.psi]
        super().build(input_shape)

    def _real_dtype(self):
        # FFTs need float32 or float64; low-precision policies get float32.
        return "float64" if self.compute_dtype == "float64" else "float32"

    def _complex_dtype(self):
        return tf.complex128 if self._real_dtype() == "float64" \
            else tf.complex64

    def _low_pass(self, signal_hat, res):
        """``(signal * phi_J)`` subsampled to ``2^J``, border dropped."""
        out = _subsample(signal_hat * self._phi[res], 2 ** (self.J - res))
        return tf.math.real(tf.signal.ifft2d(out))[..., 1:-1, 1:-1]

    def call(self, inputs):
        H, W, C = self._check_shape(inputs.shape)
        complex_dtype = self._complex_dtype()
        x = tf.cast(inputs, self._real_dtype())
        batch = tf.shape(x)[0]
        x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, H, W])
        x = tf.gather(tf.gather(x, self._rows, axis=1), self._cols, axis=2)
        x_hat = tf.signal.fft2d(tf.cast(x, complex_dtype))  # [B*C, M, N]
        first, second = [], []
        for j1 in range(self.J):
            # [B*C, L, M / 2^j1, N / 2^j1]: the L moduli at scale j1.
            u1 = _modulus_hat(_subsample(
                x_hat[:, None] * self._psi[j1][0], 2 ** j1), complex_dtype)
            first.append(self._low_pass(u1, j1))
            blocks = []
            for j2 in range(j1 + 1, self.J):
                u2 = _modulus_hat(_subsample(
                    u1[:, :, None] * self._psi[j2][j1], 2 ** (j2 - j1)),
                    complex_dtype)  # [B*C, L (l1), L (l2), ...]
                blocks.append(self._low_pass(u2, j2))
            if blocks:  # order (l1, j2, l2) within j1
                block = tf.concat(blocks, axis=2)
                second.append(tf.reshape(
                    block, tf.concat([tf.shape(block)[:1], [-1],
                                      tf.shape(block)[3:]], 0)))
        s0 = self._low_pass(x_hat, 0)[:, None]
        coefficients = tf.concat([s0] + first + second, axis=1)
        h, w = H // 2 ** self.J, W // 2 ** self.J
        K = num_coefficients(self.J, self.L)
        coefficients = tf.reshape(coefficients, [batch, C, K, h, w])
        return tf.cast(tf.reshape(tf.transpose(coefficients,
                                               [0, 3, 4, 1, 2]),
                                  [batch, h, w, C * K]), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        H, W, C = self._check_shape(input_shape)
        return (input_shape[0], H // 2 ** self.J, W // 2 ** self.J,
                C * num_coefficients(self.J, self.L))

    def get_config(self):
        return dict(super().get_config(), J=self.J, L=self.L)

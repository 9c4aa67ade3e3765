"""The Morlet filter bank of a 2-D scattering transform, in NumPy.

The filters of Bruna and Mallat's scattering network as kymatio 0.3.0 builds
them (Andreux et al., JMLR 2020), so that features match the ones Tramer and
Boneh (ICLR 2021) trained on. On an ``M x N`` grid (the padded image), with
``u`` summed over the grid's 5 x 5 periodic copies:

    gabor(u; sigma, theta, xi, slant) = exp(-u^T R D R^-1 u / (2 sigma^2)
                                            + i xi (u_1 cos theta + u_2 sin theta))
                                        / (2 * 3.1415 * sigma^2 / slant)

with ``R`` the rotation by ``theta`` and ``D = diag(1, slant^2)``. A Morlet
wavelet subtracts the envelope times ``K`` so that its mean is exactly 0:
``psi = gabor(xi) - K gabor(0)``, ``K = sum gabor(xi) / sum gabor(0)``.

* wavelets ``psi_{j, l}``, ``0 <= j < J``, ``0 <= l < L``: sigma 0.8 * 2^j,
  theta (L/2 - 1 - l) pi / L (kymatio's ``int(L - L/2 - 1) - l``), xi
  3 pi / (4 * 2^j), slant 4 / L;
* the low-pass ``phi``: a Gaussian, sigma 0.8 * 2^(J-1), xi 0, slant 1.

Filters are kept in the Fourier domain, real part (they are real there up to
rounding: the envelopes are symmetric). A filter applied after subsampling
by ``2^res`` is its periodization: the Fourier grid folded ``2^res`` times
per axis (:func:`periodize`), after zeroing the frequencies that fold onto
others' (kymatio's mask). The 3.1415 is kymatio's; it only scales.
"""

import dataclasses

import numpy as np


def gabor_2d(M, N, sigma, theta, xi, slant=1.0):
    """The Gabor filter above on an ``M x N`` periodic grid (complex128).

    Example:

    >>> g = gabor_2d(8, 8, sigma=1.0, theta=0.0, xi=0.0)
    >>> g.shape, bool(np.allclose(g.imag, 0)), round(float(g.real.sum()), 3)
    ((8, 8), True, 1.0)
    """
    rotation = np.array([[np.cos(theta), -np.sin(theta)],
                         [np.sin(theta), np.cos(theta)]])
    curvature = rotation @ np.diag([1.0, slant * slant]) @ rotation.T \
        / (2 * sigma * sigma)
    total = np.zeros((M, N), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * M:(ex + 1) * M, ey * N:(ey + 1) * N]
            arg = -(curvature[0, 0] * xx * xx
                    + (curvature[0, 1] + curvature[1, 0]) * xx * yy
                    + curvature[1, 1] * yy * yy) \
                + 1j * xi * (xx * np.cos(theta) + yy * np.sin(theta))
            total += np.exp(arg)
    return total / (2 * 3.1415 * sigma * sigma / slant)


def morlet_2d(M, N, sigma, theta, xi, slant=0.5):
    """A Morlet wavelet: the Gabor filter minus the envelope that cancels
    its mean.

    >>> psi = morlet_2d(16, 16, sigma=0.8, theta=0.0, xi=3 * np.pi / 4)
    >>> bool(abs(psi.sum()) < 1e-12)
    True
    """
    wave = gabor_2d(M, N, sigma, theta, xi, slant)
    envelope = gabor_2d(M, N, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


def periodize(filter_hat, res):
    """The Fourier filter for a signal subsampled by ``2^res``: kymatio's
    mask, then the grid folded ``2^res`` times per axis.

    >>> periodize(np.ones((8, 8)), 1).shape
    (4, 4)
    """
    M, N = filter_hat.shape
    k = 2 ** res
    mask = np.ones((M, N))
    start_x, len_x = int(M * 2 ** (-res - 1)), int(M * (1 - 2 ** (-res)))
    start_y, len_y = int(N * 2 ** (-res - 1)), int(N * (1 - 2 ** (-res)))
    mask[start_x:start_x + len_x, :] = 0
    mask[:, start_y:start_y + len_y] = 0
    masked = filter_hat * mask
    return masked.reshape(k, M // k, k, N // k).sum(axis=(0, 2))


@dataclasses.dataclass(frozen=True)
class FilterBank:
    """The Fourier filters of one scattering transform.

    Attributes:
        phi: ``phi[res]``, the low-pass for signals subsampled by ``2^res``,
            ``res < J``.
        psi: ``psi[j][res]``, an ``[L, M / 2^res, N / 2^res]`` array of the
            L wavelets of scale ``j`` (angle order), ``res <= j``.
    """

    phi: list
    psi: list


def filter_bank(M, N, J, L=8):
    """The Fourier filters for padded size ``M x N`` (each divisible by
    ``2^J``), J scales and L angles.

    >>> bank = filter_bank(16, 16, J=2, L=4)
    >>> [p.shape for p in bank.phi], bank.psi[1][1].shape
    ([(16, 16), (8, 8)], (4, 8, 8))
    """
    psi = []
    for j in range(J):
        waves = [np.real(np.fft.fft2(morlet_2d(
            M, N, 0.8 * 2 ** j, (int(L - L / 2 - 1) - theta) * np.pi / L,
            3.0 / 4.0 * np.pi / 2 ** j, 4.0 / L))) for theta in range(L)]
        # Scale j is used at resolutions 0..j (order 1 at 0, order 2 at j1).
        psi.append([np.stack([periodize(w, res) for w in waves])
                    for res in range(j + 1)])
    phi_hat = np.real(np.fft.fft2(gabor_2d(M, N, 0.8 * 2 ** (J - 1), 0, 0)))
    return FilterBank([periodize(phi_hat, res) for res in range(J)], psi)

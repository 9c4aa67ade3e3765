"""Generate an independent reference for the 2-D scattering transform.

This script runs kymatio's NumPy frontend (``kymatio.numpy.Scattering2D``)
on a few fixed inputs and stores inputs and outputs in
``scattering_kymatio.npz`` next to this file.  The test suite only *reads*
that file; kymatio is not a dependency of keras_tempered_dp.

Generated with (see also the ``versions`` key inside the npz):
    kymatio 0.3.0, scipy 1.14.1, numpy 1.26.4, Python 3.11.7

kymatio 0.3.0 imports ``scipy.special.sph_harm``, which newer SciPy removed,
so it needs ``scipy<1.15`` (the legacy stack's test extra pins both, so its
test virtualenv runs this too). A separate environment:

    python3.11 -m venv .venv-kymatio
    .venv-kymatio/bin/pip install "kymatio==0.3.0" "scipy<1.15" "numpy<2"

Rerun (from the repository root):

    .venv-kymatio/bin/python tests/layers/reference/make_scattering_reference.py

Settings: kymatio defaults (max_order=2, pre_pad=False, out_type='array').
Inputs are float64; kymatio's filters are built in complex64/float32, so the
outputs are float64 arrays carrying roughly float32-level accuracy
(compare with rtol ~1e-5).  Everything is stored as float64 with
``np.savez_compressed`` (the file is well under 1 MB).

Keys, for each case name C:
    C/x  input batch, float64, shape batch + (M, N)
    C/S  kymatio output, float64, shape batch + (K, M // 2**J, N // 2**J),
         K = 1 + J*L + L*L*J*(J-1)/2
    C/J, C/L  int64 arrays of shape ()
plus ``cases`` (names) and ``versions`` (["kymatio=..", "scipy=..", "numpy=.."]).
"""

import os

import numpy as np
import scipy
import kymatio
from kymatio.numpy import Scattering2D

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "scattering_kymatio.npz")


def grey28_inputs():
    """Three 28x28 images: noise, a smooth pattern, a single off-centre square."""
    noise = np.random.default_rng(0).standard_normal((28, 28))

    rows, cols = np.mgrid[0:28, 0:28].astype(np.float64)
    blob = np.exp(-((rows - 13.5) ** 2 + (cols - 13.5) ** 2) / (2 * 5.0 ** 2))
    # Oblique stripes so that the pattern is not symmetric under transposition.
    stripes = 0.5 * np.sin(2 * np.pi * (0.15 * rows + 0.05 * cols))
    smooth = blob + stripes

    square = np.zeros((28, 28))
    square[6:14, 10:18] = 1.0  # off-centre, to catch flipped/transposed axes

    return np.stack([noise, smooth, square])


CASES = {
    # name: (input batch, J, L)
    "grey28_J2_L8": (grey28_inputs(), 2, 8),
    "colour32_J2_L8": (np.random.default_rng(1).standard_normal((2, 3, 32, 32)), 2, 8),
    "grey32_J3_L4": (np.random.default_rng(2).standard_normal((2, 32, 32)), 3, 4),
    "grey20x24_J1_L6": (np.random.default_rng(3).standard_normal((2, 20, 24)), 1, 6),
    # The smallest size, 2^J a side: the padding reflects twice.
    "grey8_J3_L8": (np.random.default_rng(4).standard_normal((2, 8, 8)), 3, 8),
}


def main():
    arrays = {
        "cases": np.array(list(CASES)),
        "versions": np.array([f"kymatio={kymatio.__version__}",
                              f"scipy={scipy.__version__}",
                              f"numpy={np.__version__}"]),
    }
    for name, (x, J, L) in CASES.items():
        x = np.ascontiguousarray(x, dtype=np.float64)
        scattering = Scattering2D(J=J, shape=x.shape[-2:], L=L)  # defaults otherwise
        S = np.asarray(scattering(x), dtype=np.float64)
        expected_channels = 1 + J * L + L * L * J * (J - 1) // 2
        assert S.shape == x.shape[:-2] + (expected_channels,
                                          x.shape[-2] // 2 ** J,
                                          x.shape[-1] // 2 ** J), S.shape
        arrays[f"{name}/x"] = x
        arrays[f"{name}/S"] = S
        arrays[f"{name}/J"] = np.array(J, dtype=np.int64)
        arrays[f"{name}/L"] = np.array(L, dtype=np.int64)
        print(f"{name}: x {x.shape} -> S {S.shape}")

    np.savez_compressed(OUT_PATH, **arrays)
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH)} bytes)")


if __name__ == "__main__":
    main()

"""Datasets. The embedded one: scikit-learn's 8x8 digits, no download."""

import numpy as np


def load_digits(test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images).

    Pixels are scaled from [0, 16] to [0, 1], images shaped (8, 8, 1), labels
    int32 in 0..9. The split is stratified-free but seeded and disjoint.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` as NumPy arrays.

    Example:

    >>> (x, y), (xt, yt) = load_digits()
    >>> x.shape, xt.shape, float(x.max()) <= 1.0
    ((1438, 8, 8, 1), (359, 8, 8, 1), True)
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r}: must be in (0, 1).")
    digits = _sklearn_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])

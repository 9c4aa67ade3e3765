"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 through tensorflow-datasets,
and scikit-learn's bundled 8x8 digits, which need no download.

Offline, TFDS prepares a dataset from a folder that holds its original files
(``manual_dir``). The folder where Debian's ``dataset-fashion-mnist`` package
puts Fashion-MNIST (``/usr/share/datasets/fashion-mnist``) is searched
automatically; ``manual_dir=`` (the CLI's ``--manual_dir``) names any other.
Pixels are scaled to [0, 1] as in the paper; labels are int32.

TFDS >= 4.9.5 checks a manual folder's files against the checksums of the
files it would download; Debian re-compresses Fashion-MNIST (same images,
other gzip bytes), so such a TFDS refuses them. The IDX files (MNIST,
Fashion-MNIST) are then read directly, with their headers checked: the same
images and labels, in the files' own order, and nothing is written to
``data_dir``.

MNIST's and Fashion-MNIST's IDX files have the same names, sizes and
headers, so before either TFDS or this module reads a folder, its label
files are checked to begin with the first ten labels of the dataset asked
for (:data:`FIRST_LABELS`); Fashion-MNIST given as MNIST, or the reverse, is
refused instead of silently loaded.
"""

import dataclasses
import gzip
import os
import shutil
import socket

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str | None
    shape: tuple[int, int, int]
    files: tuple[str, ...] = ()
    search_dirs: tuple[str, ...] = ()
    provider: str = ""
    # Declared, never read off the labels: an architecture chosen from
    # private data (one example labelled 12 -> 13 outputs) is a release.
    num_classes: int = 10


_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

DATASETS = {
    "digits": DatasetSpec(None, (8, 8, 1), provider="scikit-learn"),
    "mnist": DatasetSpec(
        "mnist", (28, 28, 1), _IDX,
        ("/usr/share/datasets/mnist",),
        "a download by TFDS (online), or --manual_dir=<folder with the "
        "four original MNIST files>"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), _IDX,
        ("/usr/share/datasets/fashion-mnist",),
        "`apt-get install dataset-fashion-mnist` (Debian; installs them in "
        "/usr/share/datasets/fashion-mnist), a download by TFDS (online), "
        "or --manual_dir=<folder with the four original files>"),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), ("cifar-10-binary.tar.gz",), (),
        "a download by TFDS (online), or --manual_dir=<folder with "
        "cifar-10-binary.tar.gz>"),
}


class DataUnavailableError(RuntimeError):
    """The dataset is neither prepared, nor in a folder, nor downloadable."""


# The first ten labels of the original train and test label files: the
# fingerprint that tells the IDX datasets apart (their headers are alike).
FIRST_LABELS = {
    "mnist": {"train": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
              "t10k": (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)},
    "fashion_mnist": {"train": (9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
                      "t10k": (9, 2, 1, 1, 6, 1, 4, 6, 5, 7)},
}


def _first_labels(path, count):
    """The first ``count`` labels of a gzipped IDX label file (fewer if it
    is shorter), reading only the file's beginning."""
    with gzip.open(path, "rb") as f:
        data = f.read(8 + count)
    if int.from_bytes(data[:4], "big") != 0x0801:
        raise DataUnavailableError(
            f"{path} is not an IDX label file (rank 1, unsigned bytes).")
    return tuple(int(v) for v in data[8:])


def check_idx_identity(name, folder):
    """Refuses ``folder`` unless its IDX label files are ``name``'s.

    The label files must begin with the first ten labels of the original
    files of ``name`` (:data:`FIRST_LABELS`), both train and test.

    Raises:
        DataUnavailableError: naming the folder and, when the labels are
            another dataset's, that dataset.
    """
    expected = FIRST_LABELS[name]
    found = {split: _first_labels(
                 os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"),
                 len(labels))
             for split, labels in expected.items()}
    if found == expected:
        return
    others = [other for other, labels in FIRST_LABELS.items()
              if other != name and labels == found]
    if others:
        looks = (f"its label files begin with the labels of {others[0]}'s original "
                 f"files, so the folder looks like {others[0]} (load it as "
                 f"load_dataset({others[0]!r}, manual_dir=...), or "
                 f"--dataset={others[0]})")
    else:
        looks = (f"its label files match no known dataset (train "
                 f"labels begin "
                 f"{list(found['train'])}, test {list(found['t10k'])}; "
                 f"{name}'s begin {list(expected['train'])} and "
                 f"{list(expected['t10k'])})")
    raise DataUnavailableError(
        f"manual_dir={folder!r} does not hold {name}'s original files: "
        f"{looks}. MNIST's and Fashion-MNIST's files have the same names "
        f"and headers; give the folder that holds {name}'s.")


def load_digits(test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images).

    Pixels are scaled from [0, 16] to [0, 1], images shaped (8, 8, 1), labels
    int32 in 0..9. The split is seeded and disjoint.

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


def find_manual_dir(name, manual_dir=None):
    """The first folder holding all of ``name``'s original files, or None.

    Raises:
        DataUnavailableError: if ``manual_dir`` is given but lacks files.
    """
    spec = DATASETS[name]
    if manual_dir is not None:
        missing = [f for f in spec.files
                   if not os.path.exists(os.path.join(manual_dir, f))]
        if missing:
            raise DataUnavailableError(
                f"manual_dir={manual_dir!r} does not hold {', '.join(missing)} "
                f"(needed for {name}: {', '.join(spec.files)}).")
        return manual_dir
    for folder in spec.search_dirs:
        if all(os.path.exists(os.path.join(folder, f)) for f in spec.files):
            return folder
    return None


def _prepare(builder, name, manual_dir, download):
    """Prepares ``builder``; returns None, or the arrays when a manual
    folder's IDX files were read directly (TFDS refused their checksums)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import (
        NonMatchingChecksumError,
    )

    spec = DATASETS[name]
    folder = find_manual_dir(name, manual_dir)
    if folder is not None:
        if name in FIRST_LABELS:  # before TFDS, or this module, reads it
            check_idx_identity(name, folder)
        created = _missing_parents(str(builder.data_dir))
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=folder))
        except Exception as error:
            for made in created:  # leave no half-prepared dataset behind
                shutil.rmtree(made, ignore_errors=True)
            if not (isinstance(error, NonMatchingChecksumError)
                    and spec.files == _IDX):
                raise
            return read_idx_folder(folder, spec.shape)
        return None
    looked = list(spec.search_dirs) + [str(builder.data_dir)]
    how = (f"{name} needs its original files ({', '.join(spec.files)}). "
           f"Looked in: {', '.join(looked)}. Get them with {spec.provider}.")
    if not download:
        raise DataUnavailableError(how + " (Downloading was not allowed.)")
    if not network_reachable():
        raise DataUnavailableError(
            how + " No network is reachable here, so TFDS cannot download "
            "it.")
    created = _missing_parents(str(builder.data_dir))
    try:
        builder.download_and_prepare()
    except Exception as error:  # network errors come in many types
        for folder in created:  # leave nothing half-made behind
            shutil.rmtree(folder, ignore_errors=True)
        raise DataUnavailableError(
            f"{how} The download failed: {type(error).__name__}: "
            f"{str(error)[:300]}") from error


# TFDS downloads from Google Cloud Storage; without a route there it retries
# for minutes before failing.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def network_reachable(address=_DOWNLOAD_HOST, timeout=3.0):
    """True if a TCP connection to TFDS's download host opens in time."""
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing_parents(folder):
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing[::-1]


def load_dataset(name, data_dir=None, manual_dir=None, download=True):
    """Loads a dataset as NumPy arrays scaled to [0, 1].

    Args:
        name: "digits", "mnist", "fashion_mnist" or "cifar10".
        data_dir: TFDS data folder (default ``~/tensorflow_datasets``); a
            dataset prepared there once loads offline afterwards.
        manual_dir: a folder holding the dataset's original files.
        download: allow TFDS to download when no folder has the files.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 images
        ``[N, H, W, C]`` in [0, 1] and int32 labels.

    Raises:
        ValueError: for an unknown name.
        DataUnavailableError: saying which files are needed, where they were
            looked for, and what provides them; or that the MNIST-style files
            in a folder are another dataset's (e.g. Fashion-MNIST given as
            "mnist").
    """
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r}: must be one of "
                         f"{', '.join(DATASETS)}.")
    if name == "digits":
        return load_digits()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(DATASETS[name].tfds_name, data_dir=data_dir)
        arrays = None
        if not builder.is_prepared():
            arrays = _prepare(builder, name, manual_dir, download)
        if arrays is None:
            splits = builder.as_dataset(split=["train", "test"],
                                        batch_size=-1, as_supervised=True)
            arrays = tfds.as_numpy(splits)
    except ModuleNotFoundError as error:
        # tensorflow-datasets 4.9.10 imports importlib_resources through
        # etils, and etils >= 1.15 no longer installs it.
        raise ImportError(
            f"tensorflow-datasets needs the {error.name} package to prepare "
            f"{name}, which is not installed: pip install "
            f"{error.name}.") from error
    (x, y), (xt, yt) = arrays
    scale = np.float32(1 / 255)
    return ((x.astype("float32") * scale, y.astype("int32")),
            (xt.astype("float32") * scale, yt.astype("int32")))


def _read_idx(path, ndim):
    """One gzipped IDX file (unsigned bytes) as an array, header checked."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:  # 0x08: unsigned byte; then the rank
        raise DataUnavailableError(
            f"{path} is not an IDX file of rank {ndim} (magic {magic:#x}).")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
            for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataUnavailableError(
            f"{path} is truncated: {body.size} bytes for shape {dims}.")
    return body.reshape(dims)


def read_idx_folder(folder, shape):
    """MNIST-style train/test IDX files in ``folder`` as uint8 arrays.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, images ``[N, *shape]``.
    """
    parts = []
    for split in ("train", "t10k"):
        x = _read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), 3)
        y = _read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), 1)
        if len(x) != len(y) or x.shape[1:] != shape[:2]:
            raise DataUnavailableError(
                f"{folder}: {split} images {x.shape} do not match labels "
                f"{y.shape} or the image shape {shape}.")
        parts.append((x.reshape((len(x),) + shape), y))
    return tuple(parts)

import os

import numpy as np
import pytest

from keras_tempered_dp.data import (
    DataUnavailableError,
    find_manual_dir,
    load_dataset,
    load_digits,
)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def test_digits_scaled_split_and_disjoint():
    (x, y), (xt, yt) = load_dataset("digits")
    assert x.shape == (1438, 8, 8, 1) and xt.shape == (359, 8, 8, 1)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    rows = {r.tobytes() for r in x.reshape(len(x), -1)}
    # Different images may coincide; the split itself must not repeat rows
    # more than the source data does.
    assert len(rows) > 1300


def test_digits_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        load_digits(test_fraction=1.5)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset='svhn'.*fashion_mnist"):
        load_dataset("svhn")


def test_manual_dir_missing_files_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataUnavailableError,
                       match="does not hold train-labels-idx1-ubyte.gz"):
        find_manual_dir("fashion_mnist", str(tmp_path))


def test_unavailable_data_says_what_where_and_how(tmp_path):
    # CIFAR-10 has no offline folder here and downloads are refused.
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert "cifar-10-binary.tar.gz" in message
    assert str(tmp_path) in message and "--manual_dir" in message


def test_fashion_mnist_error_names_the_debian_package(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("fashion_mnist", data_dir=str(tmp_path),
                     manual_dir=str(tmp_path), download=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    if not os.path.isdir(FASHION_DIR):
        with pytest.raises(DataUnavailableError,
                           match="apt-get install dataset-fashion-mnist"):
            load_dataset("fashion_mnist", data_dir=str(tmp_path),
                         download=False)


def _write_idx(path, array):
    import gzip
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_read_directly_with_headers_checked(tmp_path):
    from keras_tempered_dp.data import read_idx_folder
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
        arrays[split] = images, labels
    (x, y), (xt, yt) = read_idx_folder(str(tmp_path), (28, 28, 1))
    assert x.shape == (5, 28, 28, 1) and xt.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(x[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(yt, arrays["t10k"][1])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((3, 2)))
    with pytest.raises(DataUnavailableError, match="not an IDX file"):
        read_idx_folder(str(tmp_path), (28, 28, 1))


def test_manual_files_refused_by_tfds_checksums_are_read_directly(
        tmp_path, monkeypatch):
    """TFDS >= 4.9.5 checks manual files' checksums and refuses Debian's
    re-compressed Fashion-MNIST: the IDX files are read instead, and the
    half-made TFDS folder is removed."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import (
        NonMatchingChecksumError,
    )

    def refuse(builder, *args, **kwargs):
        os.makedirs(builder.data_dir)
        raise NonMatchingChecksumError("wrong checksum")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        refuse)
    manual = _synthetic_idx_folder(tmp_path / "manual", "fashion_mnist",
                                   extra=(8, 3))
    data_dir = tmp_path / "tfds"
    (x, y), (xt, yt) = load_dataset("fashion_mnist", data_dir=str(data_dir),
                                    manual_dir=str(manual), download=False)
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.float32
    assert x.max() == 1.0
    assert y.tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 8, 3]
    assert yt.dtype == np.int32 and xt.shape == (12, 28, 28, 1)
    assert not data_dir.exists()


# Written out here, not imported from the package, so that a wrong entry
# there cannot pass: the first labels of the original label files.
ORIGINAL_FIRST_LABELS = {
    "mnist": ([5, 0, 4, 1, 9, 2, 1, 3, 1, 4], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    "fashion_mnist": ([9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
                      [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]),
    "neither": ([1] * 10, [2] * 10),
}


def _synthetic_idx_folder(folder, like, extra=()):
    """Four small IDX files whose labels begin like ``like``'s originals."""
    folder.mkdir()
    for split, labels in zip(("train", "t10k"), ORIGINAL_FIRST_LABELS[like]):
        labels = np.array(list(labels) + list(extra))
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz",
                   np.full((len(labels), 28, 28), 255))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def tfds_prepare_calls(monkeypatch):
    """Records TFDS preparations; each refuses the files' checksums, as
    TFDS >= 4.9.5 does for files that are not the download's bytes."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import (
        NonMatchingChecksumError,
    )
    calls = []

    def refuse(builder, *args, **kwargs):
        calls.append(builder.name)
        raise NonMatchingChecksumError("wrong checksum")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        refuse)
    return calls


@pytest.mark.parametrize("asked,given,looks_like", [
    ("mnist", "fashion_mnist", "looks like fashion_mnist"),
    ("fashion_mnist", "mnist", "looks like mnist"),
    ("mnist", "neither", "match no known dataset"),
])
def test_idx_files_of_another_dataset_are_refused_before_tfds(
        tmp_path, tfds_prepare_calls, asked, given, looks_like):
    manual = _synthetic_idx_folder(tmp_path / given, given)
    with pytest.raises(DataUnavailableError) as info:
        load_dataset(asked, data_dir=str(tmp_path / "tfds"),
                     manual_dir=str(manual), download=False)
    message = str(info.value)
    assert f"manual_dir={str(manual)!r}" in message
    assert f"does not hold {asked}'s" in message and looks_like in message
    assert tfds_prepare_calls == []  # refused before TFDS could prepare it
    assert not (tmp_path / "tfds").exists()


def test_idx_files_of_the_dataset_asked_for_pass_the_check(
        tmp_path, tfds_prepare_calls):
    manual = _synthetic_idx_folder(tmp_path / "m", "mnist", extra=(6,))
    (x, y), (xt, yt) = load_dataset("mnist", data_dir=str(tmp_path / "tfds"),
                                    manual_dir=str(manual), download=False)
    assert tfds_prepare_calls == ["mnist"]
    assert y.tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 6]
    assert yt.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 6]


def test_too_few_labels_are_refused(tmp_path, tfds_prepare_calls):
    manual = tmp_path / "short"
    manual.mkdir()
    for split in ("train", "t10k"):
        _write_idx(manual / f"{split}-images-idx3-ubyte.gz",
                   np.zeros((3, 28, 28)))
        _write_idx(manual / f"{split}-labels-idx1-ubyte.gz",
                   np.array([5, 0, 4] if split == "train" else [7, 2, 1]))
    with pytest.raises(DataUnavailableError, match="match no known dataset"):
        load_dataset("mnist", data_dir=str(tmp_path / "tfds"),
                     manual_dir=str(manual), download=False)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_folder_is_refused_as_mnist(tmp_path):
    # No TFDS stub: whichever path TFDS would take, the check comes first,
    # so this needs no network and writes nothing.
    data_dir = tmp_path / "tfds"
    with pytest.raises(DataUnavailableError,
                       match=r"does not hold mnist's original files.*"
                             r"looks like fashion_mnist"):
        load_dataset("mnist", data_dir=str(data_dir), manual_dir=FASHION_DIR,
                     download=False)
    assert not data_dir.exists()

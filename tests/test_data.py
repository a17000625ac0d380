import gzip
import hashlib

import numpy as np
import pytest
from conftest import idx_bytes, synthetic_mnist, write_idx_dir

from jal import data
from jal.errors import JalError


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_round_trip(tmp_path, gzipped):
    arrays = synthetic_mnist(50, 20)
    mnist = data.load_idx_dir(write_idx_dir(tmp_path, arrays, gzipped=gzipped))
    for loaded, written in zip(mnist, arrays, strict=True):
        np.testing.assert_array_equal(loaded, written)


def test_real_mnist(mnist_dir):
    mnist = data.load_idx_dir(mnist_dir)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert sorted(np.unique(mnist.train_labels)) == list(range(10))
    # The content is the original distribution's, byte for byte.
    for field, (_, md5) in data.IDX_FILES.items():
        magic = data.IMAGES_MAGIC if field.endswith("images") else data.LABELS_MAGIC
        assert hashlib.md5(idx_bytes(getattr(mnist, field), magic)).hexdigest() == md5


def _rewrite(directory, name, transform):
    path = directory / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(transform(raw)))
    return path


@pytest.mark.parametrize(
    "name, transform, message",
    [
        ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated"),
        ("train-images-idx3-ubyte", lambda b: b + b"\0", "truncated or corrupt"),
        ("train-labels-idx1-ubyte", lambda b: (2049 + 1).to_bytes(4, "big") + b[4:], "magic number"),
        ("t10k-images-idx3-ubyte", lambda b: b[:6], "too short"),
        ("t10k-labels-idx1-ubyte", lambda b: b[:-1] + bytes([10]), "outside 0..9"),
        (
            "t10k-labels-idx1-ubyte",
            lambda b: b[:4] + (19).to_bytes(4, "big") + b[8 : 8 + 19],
            "200 images but 19 labels",
        ),
    ],
)
def test_broken_idx_files_name_the_file(synthetic_dir, name, transform, message):
    _rewrite(synthetic_dir, name, transform)
    with pytest.raises(JalError, match=message) as error:
        data.load_idx_dir(synthetic_dir)
    assert "t10k" in str(error.value) or "train" in str(error.value)


def test_wrong_image_size(tmp_path):
    train_images, train_labels, test_images, test_labels = synthetic_mnist(10, 10)
    directory = write_idx_dir(tmp_path, (train_images[:, :27, :27], train_labels, test_images, test_labels))
    with pytest.raises(JalError, match="28x28"):
        data.load_idx_dir(directory)


def test_corrupt_gzip(synthetic_dir):
    path = synthetic_dir / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(JalError, match="train-images-idx3-ubyte.gz: cannot read"):
        data.load_idx_dir(synthetic_dir)


def test_missing_folder_and_file(tmp_path, synthetic_dir):
    with pytest.raises(JalError, match="no such folder"):
        data.load_idx_dir(tmp_path / "nowhere")
    (synthetic_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(JalError, match="missing t10k-labels-idx1-ubyte"):
        data.load_idx_dir(synthetic_dir)


def test_tfds_data_source_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        mnist = data.load_tfds()
    assert mnist.train_images.shape == (12, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_labels.shape == (12,) and mnist.test_labels.max() < 10


def test_download_from_mirror_checks_content(tmp_path, mnist_dir):
    cache = data.download_mnist(tmp_path / "cache", mirror=mnist_dir.resolve().as_uri())
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name, _ in data.IDX_FILES.values())
    assert data.load_idx_dir(cache).train_images.shape == (60000, 28, 28)


def test_download_rejects_wrong_content_and_leaves_nothing(tmp_path, synthetic_dir):
    with pytest.raises(JalError, match="md5"):
        data.download_mnist(tmp_path / "cache", mirror=synthetic_dir.as_uri())
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(JalError, match="cannot download"):
        data.download_mnist(tmp_path / "cache", mirror=(tmp_path / "nowhere").as_uri())


def test_normalize_matches_reference_transform():
    images = np.array([[[0, 255]]], np.uint8).repeat(28, 1).repeat(14, 2)
    x = data.normalize(images)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose([x.min(), x.max()], [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)


def test_pool_is_the_reference_subset():
    pool = data.make_pool(60000, 10000)
    # numpy.random.default_rng(1).permutation(60000)[:10000], pinned.
    assert pool[:5].tolist() == [45002, 1176, 8329, 48812, 47345] and pool[-1] == 32933
    assert len(pool) == len(set(pool.tolist())) == 10000
    with pytest.raises(JalError, match="pool size"):
        data.make_pool(100, 0)

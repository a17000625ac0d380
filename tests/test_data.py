import gzip
import hashlib
import os
import shutil

import numpy as np
import pytest
from conftest import idx_bytes, synthetic_mnist, write_idx_dir

from jal.data import DataConfig, from_training, load_dataset, make_pool, mnist
from jal.data.arrays import load_arrays
from jal.data.mnist import IDX_FILES, NORMALIZATION
from jal.errors import JalError


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_round_trip(tmp_path, gzipped):
    arrays = synthetic_mnist(50, 20)
    dataset = mnist.load_idx_dir(write_idx_dir(tmp_path, arrays, gzipped=gzipped))
    for loaded, written in zip(dataset[:4], arrays, strict=True):
        np.testing.assert_array_equal(loaded.reshape(written.shape), written)
    assert dataset.input_shape == (28, 28, 1) and dataset.num_classes == 10 and dataset.y_train.dtype == np.int32
    assert dataset.source["kind"] == "mnist" and set(dataset.source["md5"]) == {n for n, _ in IDX_FILES.values()}


def test_real_mnist(mnist_dir):
    dataset = mnist.load_idx_dir(mnist_dir)
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_test.shape == (10000, 28, 28, 1)
    assert dataset.y_train.shape == (60000,) and dataset.y_test.shape == (10000,)
    assert sorted(np.unique(dataset.y_train)) == list(range(10))
    # The content is the original distribution's, byte for byte, and the record says so.
    for field, (name, md5) in IDX_FILES.items():
        x, y = ("x", "y") if field.endswith("images") else ("y", "y")
        array = getattr(dataset, f"{'x' if field.endswith('images') else 'y'}_{field.split('_')[0]}")
        magic = mnist.IMAGES_MAGIC if field.endswith("images") else mnist.LABELS_MAGIC
        stored = array.reshape(-1, 28, 28) if field.endswith("images") else array.astype(np.uint8)
        assert hashlib.md5(idx_bytes(stored, magic)).hexdigest() == md5 == dataset.source["md5"][name]


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
        mnist.load_idx_dir(synthetic_dir)
    assert "t10k" in str(error.value) or "train" in str(error.value)


def test_wrong_image_size(tmp_path):
    train_images, train_labels, test_images, test_labels = synthetic_mnist(10, 10)
    directory = write_idx_dir(tmp_path, (train_images[:, :27, :27], train_labels, test_images, test_labels))
    with pytest.raises(JalError, match="28x28"):
        mnist.load_idx_dir(directory)


def test_corrupt_gzip(synthetic_dir):
    path = synthetic_dir / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(JalError, match="train-images-idx3-ubyte.gz: cannot read"):
        mnist.load_idx_dir(synthetic_dir)


def test_missing_folder_and_file(tmp_path, synthetic_dir):
    with pytest.raises(JalError, match="no such folder"):
        mnist.load_idx_dir(tmp_path / "nowhere")
    (synthetic_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(JalError, match="missing t10k-labels-idx1-ubyte"):
        mnist.load_idx_dir(synthetic_dir)


def test_tfds_by_name_under_mock_data():
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets is not installed (pip install 'jal[tfds]')"
    )
    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset(DataConfig(tfds="mnist"))
        fashion = load_dataset(DataConfig(tfds="fashion_mnist"))
    assert dataset.x_train.shape == (12, 28, 28, 1) and dataset.x_train.dtype == np.uint8
    assert dataset.y_test.shape == (12,) and dataset.y_test.max() < 10 and dataset.normalization is NORMALIZATION
    assert dataset.source == {"kind": "tfds", "name": "mnist", "path": None}
    assert fashion.input_shape == (28, 28, 1) and fashion.normalization is not NORMALIZATION  # its own statistics
    with pytest.raises(JalError, match="TFDS no_such_dataset"):
        load_dataset(DataConfig(tfds="no_such_dataset"))


def test_download_from_mirror_checks_content(tmp_path, mnist_dir):
    cache = mnist.download_mnist(tmp_path / "cache", mirror=mnist_dir.resolve().as_uri())
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name, _ in IDX_FILES.values())
    assert mnist.load_idx_dir(cache).x_train.shape == (60000, 28, 28, 1)


def test_download_rejects_wrong_content_and_leaves_nothing(tmp_path, synthetic_dir):
    with pytest.raises(JalError, match="md5"):
        mnist.download_mnist(tmp_path / "cache", mirror=synthetic_dir.as_uri())
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(JalError, match="cannot download"):
        mnist.download_mnist(tmp_path / "cache", mirror=(tmp_path / "nowhere").as_uri())


def test_normalize_matches_reference_transform():
    images = np.array([[[0, 255]]], np.uint8).repeat(28, 1).repeat(14, 2)[..., None]
    x = NORMALIZATION.apply(images)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose([x.min(), x.max()], [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)
    # Bit for bit torchvision's ToTensor then Normalize((0.1307,), (0.3081,)), in float32.
    np.testing.assert_array_equal(x, (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)


def test_pool_is_the_reference_subset():
    pool = make_pool(60000, 10000)
    # numpy.random.default_rng(1).permutation(60000)[:10000], pinned.
    assert pool[:5].tolist() == [45002, 1176, 8329, 48812, 47345] and pool[-1] == 32933
    assert len(pool) == len(set(pool.tolist())) == 10000
    assert len(make_pool(600, None)) == 600 and len(make_pool(60000, None)) == 10000
    for size in (0, 601):
        with pytest.raises(JalError, match=f"`pool_size` {size} must be between 1 and the 600 training samples"):
            make_pool(600, size)


def arrays(n_train=40, n_test=10, shape=(5,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(n_train, *shape)).astype(np.float32) * 3 + 7,
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.normal(size=(n_test, *shape)).astype(np.float32),
        "y_test": np.arange(n_test) % classes,
    }


def save_npy_folder(folder, data):
    folder.mkdir()
    for key, value in data.items():
        np.save(folder / f"{key}.npy", value)
    return folder


def test_npz_and_npy_folders_of_any_shape(tmp_path):
    data = arrays(shape=(4, 6, 2))
    np.savez(tmp_path / "data.npz", **data)
    from_npz = load_arrays(tmp_path / "data.npz")
    from_folder = load_arrays(save_npy_folder(tmp_path / "folder", data))
    assert isinstance(from_folder.x_train, np.memmap)  # read only where used
    for dataset in (from_npz, from_folder):
        assert dataset.input_shape == (4, 6, 2) and dataset.num_classes == 3 and dataset.y_train.dtype == np.int32
        np.testing.assert_array_equal(dataset.x_test, data["x_test"])
        # Standardised per channel with the training split's statistics.
        x = dataset.normalization.apply(np.asarray(dataset.x_train))
        np.testing.assert_allclose(x.reshape(-1, 2).mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(x.reshape(-1, 2).std(axis=0), 1, atol=1e-4)
    assert load_arrays(tmp_path / "data.npz", num_classes=5).num_classes == 5
    unnormalised = load_dataset(DataConfig(path=str(tmp_path / "data.npz"), normalize=False))
    np.testing.assert_array_equal(unnormalised.normalization.apply(data["x_train"]), data["x_train"])
    # Grayscale images without a channel axis get one.
    gray = arrays(shape=(8, 8))
    np.savez(tmp_path / "gray.npz", **gray)
    assert load_arrays(tmp_path / "gray.npz").input_shape == (8, 8, 1)


def test_training_statistics_of_bytes_and_of_constant_features():
    x = np.zeros((10, 3), np.uint8)
    x[:, 0] = np.arange(10) * 20
    normalization = from_training(x)
    assert normalization.scale == 255.0
    out = normalization.apply(x)
    np.testing.assert_allclose(out[:, 0].mean(), 0, atol=1e-6) and np.testing.assert_allclose(out[:, 0].std(), 1, 1e-5)
    assert (out[:, 1:] == 0).all()  # a constant feature maps to 0, not to NaN


BAD_ARRAYS = [  # the change, the key the error names, what it says
    (lambda d: d.pop("y_test"), "y_test", "missing key y_test"),
    (lambda d: d.update(x_test=d["x_test"][:, :4]), "x_test", "inputs of shape [4] but training inputs of shape [5]"),
    (lambda d: d.update(y_train=d["y_train"].astype(np.float64)), "y_train", "float64 labels; labels must be integers"),
    (lambda d: d.update(y_train=d["y_train"] - 1), "y_train", "label -1"),
    (lambda d: d.update(y_train=d["y_train"][:-1]), "y_train", "labels of shape [39] for 40 inputs"),
    (lambda d: d["x_train"].__setitem__((3, 2), np.nan), "x_train", "input 3 holds NaN or inf"),
    (lambda d: d["x_test"].__setitem__((9, 0), np.inf), "x_test", "input 9 holds NaN or inf"),
    (lambda d: d.update(x_test=d["x_test"][:0], y_test=d["y_test"][:0]), "x_test", "no samples"),
    (lambda d: d.update(x_train=d["x_train"][:, 0]), "x_train", "float32 array of shape [40]"),
    (lambda d: d.update(x_train=d["x_train"].astype(str)), "x_train", "inputs must be a numeric"),
    (lambda d: d.update(y_train=d["y_train"] * 0, y_test=d["y_test"] * 0), "y_train", "only 1 class"),
]


@pytest.mark.parametrize("change, key, message", BAD_ARRAYS)
@pytest.mark.parametrize("form", ["npz", "npy"])
def test_bad_arrays_name_the_file_and_key(tmp_path, change, key, message, form):
    data = arrays()
    change(data)
    path = tmp_path / "data.npz"
    if form == "npz":
        np.savez(path, **data)
    else:
        path = save_npy_folder(tmp_path / "folder", data)
    with pytest.raises(JalError) as error:
        load_arrays(path)
    text = str(error.value)
    assert message in text and str(path) in text and key in text and "\n" not in text


def test_labels_beyond_the_classes_given_and_broken_files(tmp_path):
    np.savez(tmp_path / "data.npz", **arrays())
    with pytest.raises(JalError, match="label 2 with 2 classes; raise `num_classes`"):
        load_arrays(tmp_path / "data.npz", num_classes=2)
    raw = (tmp_path / "data.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    for name in ("cut.npz", "text.npz"):
        with pytest.raises(JalError, match=f"{name}: cannot read it as .npz"):
            load_arrays(tmp_path / name)
    np.savez(tmp_path / "objects.npz", **{**arrays(), "y_train": np.array([1, "a"] * 20, dtype=object)})
    with pytest.raises(JalError, match="objects.npz: cannot read it as .npz"):  # never unpickled
        load_arrays(tmp_path / "objects.npz")
    folder = save_npy_folder(tmp_path / "folder", arrays())
    raw = (folder / "x_train.npy").read_bytes()
    (folder / "x_train.npy").write_bytes(raw[:200])
    with pytest.raises(JalError, match="x_train.npy: cannot read it as .npy"):
        load_arrays(folder)
    (folder / "x_train.npy").write_bytes(raw)
    (folder / "y_test.npy").unlink()
    with pytest.raises(JalError, match=r"missing key y_test \(y_test.npy\)"):
        load_arrays(folder)
    with pytest.raises(JalError, match="no such file or folder"):
        load_arrays(tmp_path / "nowhere.npz")
    with pytest.raises(JalError, match="data from path and mnist_dir at once"):
        DataConfig(path="a.npz", mnist_dir="b")


def _altered_copy(source, target, name="train-labels-idx1-ubyte"):
    """A copy of the MNIST folder `source` with one byte of one file's content changed."""
    shutil.copytree(source, target)
    path = target / f"{name}.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # still a valid label: only the md5 can tell
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_where_mnist_comes_from_without_a_folder_named(monkeypatch, tmp_path, mnist_dir, synthetic_dir):
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAL_MNIST_DIR", raising=False)
    assert mnist.repository_copy() == mnist_dir  # the tests run from a clone
    dataset = mnist.load_mnist()
    assert dataset.source["origin"] == "repository" and dataset.source["path"] == str(mnist_dir)
    assert dataset.source["md5"] == {name: md5 for name, md5 in IDX_FILES.values()}
    # The download cache comes before the repository's copy, and is checked too.
    shutil.copytree(mnist_dir, tmp_path / "cache" / "mnist")
    assert mnist.load_mnist().source["origin"] == "cache"
    _altered_copy(mnist_dir, tmp_path / "altered")
    shutil.rmtree(tmp_path / "cache" / "mnist")
    shutil.copytree(tmp_path / "altered", tmp_path / "cache" / "mnist")
    with pytest.raises(JalError, match="the download cache is altered or corrupt"):
        mnist.load_mnist()
    shutil.rmtree(tmp_path / "cache" / "mnist")
    # $JAL_MNIST_DIR and a folder named come first, and may hold any IDX data.
    monkeypatch.setenv("JAL_MNIST_DIR", str(synthetic_dir))
    assert mnist.load_mnist().source["origin"] == "JAL_MNIST_DIR"
    assert mnist.load_mnist(synthetic_dir).source["origin"] == "given"
    monkeypatch.delenv("JAL_MNIST_DIR")
    # Without a clone's copy, it is downloaded.
    monkeypatch.setattr(mnist, "repository_copy", lambda: None)
    monkeypatch.setattr(mnist, "download_mnist", lambda directory: synthetic_dir)
    assert mnist.load_mnist().source["origin"] == "download"


def test_a_changed_byte_in_the_repositorys_copy_is_refused(monkeypatch, tmp_path, mnist_dir, capsys):
    from jal.cli import main

    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAL_MNIST_DIR", raising=False)
    altered = _altered_copy(mnist_dir, tmp_path / "copy")
    monkeypatch.setattr(mnist, "repository_copy", lambda: tmp_path / "copy")
    with pytest.raises(JalError) as error:
        mnist.load_mnist()
    assert str(altered) in str(error.value) and "the repository's copy is altered or corrupt" in str(error.value)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{altered}: content md5" in err and "restore it, or pass --data-dir" in err and err.count("\n") == 1
    assert not out.exists()


def resident_kib(path) -> int:
    """KiB of `path`'s mapped pages resident in this process (Linux's /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_checking_a_memory_mapped_split_leaves_its_pages_unresident(tmp_path):
    """The finiteness check reads every row and gives back the pages it read, so a large pool stays off the RSS."""
    from jal.data.dataset import _check_finite
    from jal.data.normalization import BLOCK

    path = tmp_path / "x.npy"
    np.save(path, np.ones((4 * BLOCK, 64), np.float32))  # 64 MiB, four blocks of rows
    x = np.load(path, mmap_mode="r")
    _check_finite(x, "x.npy")
    # About the block read last stays resident (a quarter of the file), not the whole file.
    assert resident_kib(path) < 32 * 1024, f"{resident_kib(path)} KiB of the 64 MiB file stayed resident"

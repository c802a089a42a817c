"""Each loader on small files written here in exactly the on-disk format it reads."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from gradflow.data.loaders import (DataError, cifar10, idx_dataset, image_folder, npz, read_idx,
                                   standardize)


def write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"batch", b"labels": labels, b"data": data,
                     b"filenames": [b"img%d.png" % i for i in range(n)]}, f, protocol=2)
    return data, labels


def test_cifar10_pickle_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    first, first_labels = write_cifar_batch(root / "data_batch_1", 4, 0)
    for i in range(2, 6):
        write_cifar_batch(root / f"data_batch_{i}", 4, i)
    write_cifar_batch(root / "test_batch", 3, 9)
    ds = cifar10(tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major over 32x32
    img = first[1]
    assert ds.x_train[1, 2, 5, 0] == pytest.approx(img[2 * 32 + 5] / 255)
    assert ds.x_train[1, 2, 5, 2] == pytest.approx(img[2048 + 2 * 32 + 5] / 255)
    assert list(ds.y_train[:4]) == first_labels


def test_cifar10_missing_and_malicious(tmp_path):
    with pytest.raises(DataError, match="data_batch_1"):
        cifar10(tmp_path)
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 2, i)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="test_batch.*refusing"):
        cifar10(tmp_path)


def write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = struct.pack(">HBB", 0, codes[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_mnist_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 3)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte",
                  np.arange(n, dtype=np.uint8) % 10, gz)
    ds = idx_dataset(tmp_path, "fashion_mnist")
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
    assert list(ds.y_train) == [0, 1, 2, 3, 4, 5] and ds.num_classes == 6
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1


def test_idx_malformed_names_the_file(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="x-idx3-ubyte.*data bytes"):
        read_idx(tmp_path / "x-idx3-ubyte")
    (tmp_path / "y-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="y-idx1-ubyte.*magic"):
        read_idx(tmp_path / "y-idx1-ubyte")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        idx_dataset(tmp_path)


def test_npz_with_and_without_test_split(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(10, 4, 4, 1)), np.arange(10) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = npz(tmp_path / "a.npz")
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2 and ds.num_classes == 3
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:3], y_test=y[:3])
    ds = npz(tmp_path / "b.npz")
    assert len(ds.x_train) == 10 and len(ds.x_test) == 3
    np.savez(tmp_path / "c.npz", x=x)
    with pytest.raises(DataError, match="c.npz.*'y'"):
        npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=x, y=y[:5])
    with pytest.raises(DataError, match="d.npz"):
        npz(tmp_path / "d.npz")
    with pytest.raises(DataError, match="missing.npz.*not found"):
        npz(tmp_path / "missing.npz")


def test_image_folder(tmp_path):
    from PIL import Image
    for c, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), colour).save(tmp_path / c / f"{i}.png")
    Image.new("L", (6, 6), 128).save(tmp_path / "dogs" / "small.jpg")  # resized, made RGB
    ds = image_folder(tmp_path, test_fraction=0.25, image_size=8)
    assert ds.class_names == ("cats", "dogs") and ds.num_classes == 2
    assert ds.x_train.shape[1:] == (8, 8, 3) and len(ds.x_train) + len(ds.x_test) == 7
    reds = np.concatenate([ds.x_train, ds.x_test])[np.concatenate([ds.y_train, ds.y_test]) == 0]
    assert np.allclose(reds[..., 0], 1) and np.allclose(reds[..., 2], 0)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")  # skipped and counted
    assert image_folder(tmp_path).meta["image_folder"]["unreadable"] == 1
    # more unreadable files than half: refused (tests/test_image_folders.py has the rest)
    for i in range(8):
        (tmp_path / "cats" / f"broken{i}.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken"):
        image_folder(tmp_path)


def test_standardize_uses_training_statistics(tmp_path):
    x = np.random.default_rng(1).normal(3, 2, size=(50, 2, 2, 3))
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(50) % 2)
    ds = standardize(npz(tmp_path / "s.npz"))
    assert np.allclose(ds.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    assert np.allclose(ds.x_train.std(axis=(0, 1, 2)), 1, atol=1e-3)

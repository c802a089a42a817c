"""Loaders for real datasets in their standard on-disk formats.

- CIFAR-10: the python pickle batches (`data_batch_1..5`, `test_batch`, in `data_dir` or its
  `cifar-10-batches-py/`), read with an unpickler that only accepts numpy arrays and builtins;
- MNIST / Fashion-MNIST: idx files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped (`.gz`) or not;
- `.npz` with `x` and `y` (and optionally `x_test`, `y_test`; else a held-out fraction is split off);
- an image folder: one sub-folder per class (sorted names are the classes), PNG/JPEG/BMP/GIF
  files, resized to the first image's size, RGB.

Images come back NHWC float32 in [0, 1] (npz: as stored, cast to float32). A missing or
malformed file raises DataError (a ValueError) whose one-line message names the file.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from .synthetic import Dataset


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names it."""


# --- CIFAR-10 -----------------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Accepts what CIFAR batches hold (dicts, lists, bytes, numpy arrays), nothing executable."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path):
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int32)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"expected data (N, 3072) and N labels, got {data.shape}")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected the CIFAR-10 python batches)") from None
    except Exception as e:  # noqa: BLE001 - any unreadable content is a malformed file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major rows -> NHWC
    return images.astype(np.float32) / 255.0, labels


def cifar10(data_dir) -> Dataset:
    """CIFAR-10 from its python pickle batches.

    Args:
      data_dir: the directory holding `data_batch_1..5` and `test_batch`, or its parent with
        `cifar-10-batches-py/`.

    Returns:
      A Dataset of (50000, 32, 32, 3) / (10000, 32, 32, 3) float32 images in [0, 1], 10 named
      classes.

    Raises:
      DataError: naming a missing or malformed file.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(root / "test_batch")
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")
    return Dataset("cifar10", np.concatenate([x for x, _ in train]),
                   np.concatenate([y for _, y in train]), x_test, y_test, 10, names)


# --- idx (MNIST, Fashion-MNIST) ----------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array.

    Args:
      path: the file; `path` + ".gz" is tried when `path` does not exist.

    Returns:
      The array, with the file's shape and dtype.

    Raises:
      DataError: naming the file, if both are missing or it is not an idx file.
    """
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise DataError(f"{path}: file not found (nor {path.name}.gz)")
    try:
        raw = found.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
        if zero != 0 or dtype_code not in dtypes or ndim == 0:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        dtype = np.dtype(dtypes[dtype_code])
        body = raw[4 + 4 * ndim:]
        if len(body) != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{len(body)} data bytes for shape {shape}")
        return np.frombuffer(body, dtype=dtype).reshape(shape)
    except (ValueError, struct.error, OSError, EOFError) as e:
        raise DataError(f"{found}: not an idx file ({e})") from None


def idx_dataset(data_dir, name: str = "mnist", class_names=()) -> Dataset:
    """MNIST-format data (MNIST, Fashion-MNIST) from the four idx files in `data_dir`.

    Args:
      data_dir: the directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (each possibly `.gz`).
      name: the dataset's name.
      class_names: a name per class, if known (e.g. `FASHION_CLASSES`).

    Returns:
      A Dataset of (n, H, W, 1) float32 images in [0, 1] and int32 labels.

    Raises:
      DataError: naming a missing or malformed file.
    """
    root = Path(data_dir)
    parts = []
    for split in ("train", "t10k"):
        images = read_idx(root / f"{split}-images-idx3-ubyte")
        labels = read_idx(root / f"{split}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root / f'{split}-images-idx3-ubyte'}: {images.shape} images do "
                            f"not match {labels.shape} labels")
        parts += [images[..., None].astype(np.float32) / 255.0, labels.astype(np.int32)]
    n_classes = int(max(parts[1].max(), parts[3].max())) + 1
    return Dataset(name, *parts, n_classes, tuple(class_names))


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")


# --- npz ----------------------------------------------------------------------------------------
def npz(path, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A dataset from an `.npz` file with arrays `x` (N, ...) and integer `y` (N,).

    Args:
      path: the `.npz` file; it may also hold `x_test` and `y_test`.
      test_fraction: without `x_test`/`y_test`, the fraction of examples held out (at least 1).
      seed: the seed of that split.

    Returns:
      A Dataset named after the file, x cast to float32, labels to int32.

    Raises:
      DataError: naming the file, if it is unreadable, lacks `x` / `y`, or holds mismatched
        shapes, negative labels or non-finite inputs.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and 'y', has {sorted(arrays)}")
    x, y = arrays["x"].astype(np.float32), arrays["y"]
    if len(x) != len(y) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) < 2:
        raise DataError(f"{path}: 'y' must be N integer labels for the N rows of 'x' "
                        f"(x {x.shape}, y {y.shape} {y.dtype})")
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = arrays["x_test"].astype(np.float32), arrays["y_test"]
        if (len(x_test) != len(y_test) or y_test.ndim != 1 or not len(y_test)
                or not np.issubdtype(y_test.dtype, np.integer)):
            raise DataError(f"{path}: 'y_test' must be N integer labels for the N rows of "
                            f"'x_test' (x_test {x_test.shape}, y_test {y_test.shape})")
        _check_values(path, x, y, x_test, y_test)
    else:
        _check_values(path, x, y)
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(round(test_fraction * len(x))))
        x_test, y_test = x[order[:n_test]], y[order[:n_test]]
        x, y = x[order[n_test:]], y[order[n_test:]]
    n_classes = int(max(y.max(), y_test.max())) + 1
    return Dataset(path.stem, x, y.astype(np.int32), x_test, y_test.astype(np.int32), n_classes)


def _check_values(path, *arrays):
    """Labels >= 0 and finite images (a NaN would make every loss NaN from the first step)."""
    for name, a in zip(("x", "y", "x_test", "y_test"), arrays):
        if name.startswith("y") and a.min() < 0:
            raise DataError(f"{path}: '{name}' has negative labels (classes are 0, 1, ...)")
        if name.startswith("x") and not np.isfinite(a).all():
            raise DataError(f"{path}: '{name}' has non-finite values (NaN or infinity)")


# --- image folder -------------------------------------------------------------------------------
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def image_folder(root, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A dataset from a folder of images, one sub-folder per class (`root/<class>/<image>`).

    Classes are the sorted sub-folder names; PNG, JPEG, BMP and GIF files are read as RGB and
    resized to the first image's size.

    Args:
      root: the folder.
      test_fraction: the fraction of images held out (at least 1).
      seed: the seed of that split.

    Returns:
      A Dataset of (n, H, W, 3) float32 images in [0, 1], named after the folder.

    Raises:
      DataError: naming the folder or file, if there are fewer than two classes or images or
        an image is unreadable.
    """
    from PIL import Image, UnidentifiedImageError  # a dependency of matplotlib

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: needs one sub-folder per class (found {len(classes)})")
    images, labels, size = [], [], None
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    size = size or im.size
                    images.append(np.asarray(im.resize(size), dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f}: not a readable image ({e})") from None
            labels.append(label)
    if len(images) < 2:
        raise DataError(f"{root}: found {len(images)} images")
    x, y = np.stack(images), np.asarray(labels, dtype=np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    return Dataset(root.name, x[order[n_test:]], y[order[n_test:]], x[order[:n_test]],
                   y[order[:n_test]], len(classes), tuple(classes))


def standardize(ds: Dataset) -> Dataset:
    """Per-channel zero mean, unit variance, with statistics of the training split.

    Args:
      ds: a Dataset; the last axis of its images is the channel axis.

    Returns:
      A new Dataset with both splits standardized and `meta["standardized"]` set.
    """
    axes = tuple(range(ds.x_train.ndim - 1))
    mean = ds.x_train.mean(axis=axes, keepdims=True)
    std = ds.x_train.std(axis=axes, keepdims=True) + 1e-6
    return Dataset(ds.name, (ds.x_train - mean) / std, ds.y_train, (ds.x_test - mean) / std,
                   ds.y_test, ds.num_classes, ds.class_names, {**ds.meta, "standardized": True})

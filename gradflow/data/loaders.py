"""Loaders for real datasets in their standard on-disk formats.

- CIFAR-10: the python pickle batches (`data_batch_1..5`, `test_batch`, in `data_dir` or its
  `cifar-10-batches-py/`), read with an unpickler that only accepts numpy arrays and builtins;
- MNIST / Fashion-MNIST: idx files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped (`.gz`) or not;
- `.npz` with `x` and `y` (and optionally `x_test`, `y_test`; else a held-out fraction is split off);
  (N, H, W) greyscale gets a channel axis, (N, C, H, W) channels-first is transposed to NHWC;
- an image folder: one sub-folder per class, every image resized to S×S RGB with bounded
  memory (`gradflow.data.images`, re-exported here).

Images come back NHWC float32 in [0, 1] (npz: as stored, cast to float32). A missing or
malformed file, or labels that are not 0..K-1 (CIFAR-10, MNIST, Fashion-MNIST: 0..9), raises
DataError (a ValueError) whose one-line message names the file and, where there is one, the fix.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .images import IMAGE_SUFFIXES, image_folder
from .synthetic import Dataset

__all__ = ["DataError", "cifar10", "read_idx", "idx_dataset", "FASHION_CLASSES", "npz",
           "image_folder", "IMAGE_SUFFIXES", "standardize"]


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
        labels = np.asarray(d[b"labels"])
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or not len(labels)):
            raise ValueError(f"labels must be a list of integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"expected data (N, 3072) and N labels, got {data.shape}")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected the CIFAR-10 python batches)") from None
    except Exception as e:  # noqa: BLE001 - any unreadable content is a malformed file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    _check_label_range(path, "labels", labels, 10, "CIFAR-10")
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
      DataError: naming a missing or malformed file, or a batch whose labels are not 0..9.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(root / "test_batch")
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")
    return Dataset("cifar10", np.concatenate([x for x, _ in train]),
                   np.concatenate([y for _, y in train]).astype(np.int32), x_test,
                   y_test.astype(np.int32), 10, names)


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


def idx_dataset(data_dir, name: str = "mnist", class_names=(), *, classes: int = 10) -> Dataset:
    """MNIST-format data (MNIST, Fashion-MNIST) from the four idx files in `data_dir`.

    Args:
      data_dir: the directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (each possibly `.gz`).
      name: the dataset's name.
      class_names: a name per class, if known (e.g. `FASHION_CLASSES`).
      classes: the format's number of classes (10 for MNIST and Fashion-MNIST); labels outside
        0..classes-1 are refused.

    Returns:
      A Dataset of (n, H, W, 1) float32 images in [0, 1] and int32 labels; `num_classes` is the
      largest label + 1.

    Raises:
      DataError: naming a missing or malformed file, or a labels file with labels outside
        0..classes-1.
    """
    root = Path(data_dir)
    parts = []
    for split in ("train", "t10k"):
        images = read_idx(root / f"{split}-images-idx3-ubyte")
        labels = read_idx(root / f"{split}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root / f'{split}-images-idx3-ubyte'}: {images.shape} images do "
                            f"not match {labels.shape} labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{root / f'{split}-labels-idx1-ubyte'}: labels are {labels.dtype}, "
                            f"not integers")
        _check_label_range(root / f"{split}-labels-idx1-ubyte", "labels", labels, classes, name)
        with np.errstate(all="ignore"):
            parts += [images[..., None].astype(np.float32) / 255.0, labels.astype(np.int32)]
    n_classes = int(max(parts[1].max(), parts[3].max())) + 1
    return Dataset(name, *parts, n_classes, tuple(class_names))


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")


# --- npz ----------------------------------------------------------------------------------------
_NPZ_EXPECTED = ("gradflow expects a NumPy .npz archive (np.savez) with arrays x (N, ...) and y "
                 "(N,) integer labels, and optionally x_test and y_test")
_F32_MAX = float(np.finfo(np.float32).max)


def npz(path, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A dataset from an `.npz` file with arrays `x` (N, ...) and integer `y` (N,).

    Images are NHWC: `x` of shape (N, H, W) is taken as greyscale and given a channel axis, and
    (N, C, H, W) with C in 1, 3, 4 and W > 4 (channels first) is transposed to (N, H, W, C), with a
    line in `meta["notes"]`. Labels must be 0..K-1 with every class present (K = the largest
    label + 1).

    Args:
      path: the `.npz` file; it may also hold `x_test` and `y_test` (both or neither).
      test_fraction: without `x_test`/`y_test`, the fraction of examples held out (at least 1).
      seed: the seed of that split.

    Returns:
      A Dataset named after the file, x cast to float32, labels to int32.

    Raises:
      DataError: naming the file, if it is unreadable, lacks `x` / `y`, holds only one of
        `x_test` / `y_test`, mismatched shapes, labels that are not 0..K-1, non-finite inputs
        or inputs too large for float32.
    """
    path = Path(path)
    arrays = _read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and 'y', has {sorted(arrays)} ({_NPZ_EXPECTED})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        has, lacks = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataError(f"{path}: has '{has}' but no '{lacks}' (give both, or neither to hold "
                        f"out {test_fraction:g} of 'x')")
    notes = []
    x, y = _npz_inputs(path, "x", arrays["x"], notes), arrays["y"]
    _check_labels_array(path, "y", y, x)
    if "x_test" in arrays:
        x_test, y_test = _npz_inputs(path, "x_test", arrays["x_test"], []), arrays["y_test"]
        _check_labels_array(path, "y_test", y_test, x_test)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: 'x_test' examples have shape {x_test.shape[1:]} but 'x' "
                            f"examples have shape {x.shape[1:]}")
    else:
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(round(test_fraction * len(x))))
        x_test, y_test = x[order[:n_test]], y[order[:n_test]]
        x, y = x[order[n_test:]], y[order[n_test:]]
    n_classes = _check_npz_labels(path, y, y_test)
    return Dataset(path.stem, x, y.astype(np.int32), x_test, y_test.astype(np.int32), n_classes,
                   meta={"notes": tuple(notes)} if notes else {})


def _read_npz(path: Path) -> dict:
    """The arrays of an .npz file, or a DataError saying what gradflow expects."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic[:2] != b"PK":  # every zip archive (and so every .npz) starts with it
                kind = "a single .npy array" if magic[:4] == b"\x93NUM" else "not a zip archive"
                raise DataError(f"{path}: not an .npz file ({kind}; {_NPZ_EXPECTED})")
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                arrays = {}
                for k in z.files:
                    try:
                        arrays[k] = np.asarray(z[k])
                    except ValueError:  # object arrays: numpy would advise allow_pickle=True
                        raise DataError(f"{path}: array '{k}' holds Python objects, not "
                                        f"numbers ({_NPZ_EXPECTED})") from None
            return arrays
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an .npz file ({_NPZ_EXPECTED})") from None
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
        reason = f"{e.strerror}; " if isinstance(e, OSError) and e.strerror else ""
        raise DataError(f"{path}: not a readable .npz file ({reason}{_NPZ_EXPECTED})") from None


def _npz_inputs(path, name, a, notes):
    """`a` as NHWC (or (N, features)) float32, refusing non-numbers, non-finite or huge values."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: '{name}' has dtype {a.dtype}; gradflow expects real numbers")
    if a.ndim < 2 or not len(a):
        raise DataError(f"{path}: '{name}' must hold N >= 1 examples of shape (features,), "
                        f"(H, W) or (H, W, C); got shape {a.shape}")
    with np.errstate(all="ignore"):
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise DataError(f"{path}: '{name}' has non-finite values (NaN or infinity)")
            if np.abs(a).max() > _F32_MAX:
                raise DataError(f"{path}: '{name}' has values too large for float32 (largest "
                                f"|value| {np.abs(a).max():.3g}); rescale it")
        a = a.astype(np.float32)
    if a.ndim == 3:  # (N, H, W) greyscale
        a = a[..., None]
    elif a.ndim == 4 and a.shape[1] in (1, 3, 4) and a.shape[3] > 4:
        notes.append(f"'{name}' of shape {a.shape} read as channels first (N, C, H, W) and "
                     f"transposed to (N, H, W, C)")
        a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def _check_labels_array(path, name, y, x):
    """`y` holds len(x) integer labels, none negative."""
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: '{name}' must be N integer labels for the N rows of "
                        f"'{name.replace('y', 'x', 1)}' (x {x.shape}, {name} {y.shape} {y.dtype})")
    if y.min() < 0:
        raise DataError(f"{path}: '{name}' has negative labels (smallest {y.min()}); classes are "
                        f"0..K-1")


def _check_npz_labels(path, y, y_test) -> int:
    """Labels of both splits together are exactly 0..K-1 with every class present; returns K."""
    labels = np.concatenate([y, y_test])
    lo, hi = int(labels.min()), int(labels.max())
    if lo > 0:
        raise DataError(f"{path}: labels are {lo}..{hi}; gradflow expects 0..K-1: subtract {lo}")
    present = np.unique(labels)
    if len(present) != hi + 1:
        missing = sorted(set(range(hi + 1)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{path}: labels are 0..{hi} but no example has label {shown}; gradflow "
                        f"expects 0..K-1 with every class present: renumber with "
                        f"np.unique(y, return_inverse=True)[1]")
    return hi + 1


def _check_label_range(path, name, labels, classes, dataset):
    """Labels of a fixed-class format (CIFAR-10, MNIST) are 0..classes-1."""
    if not len(labels):
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        fix = f": subtract {lo}" if lo > 0 and hi - lo < classes else ""
        raise DataError(f"{path}: {name} are {lo}..{hi}; {dataset} labels are "
                        f"0..{classes - 1}{fix}")


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

"""Datasets: the built-in generated task, loaders for real formats, minibatch iteration.

    from gradflow import data
    ds = data.synthetic(seed=0)             # ds.x_train (8192, 16, 16, 3) float32, ds.y_train ...
    ds = data.load("cifar10", "~/data/cifar-10-batches-py")   # standardized per channel
    it = data.batches(ds.x_train, ds.y_train, batch_size=32, seed=0)
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .batches import batches
from .images import DEFAULT_SIZE
from .synthetic import PAIRS, Dataset, synthetic

# The CLI's --dataset choices; all but "synthetic" read files from --data-dir.
DATASETS = ("synthetic", "cifar10", "mnist", "fashion_mnist", "npz", "folder")


def load(name: str, data_dir=None, *, seed: int = 0, image_size: int | None = None) -> Dataset:
    """Loads a dataset by name: the generated one, or one read from files.

    `synthetic` is generated from `seed`; the others are read from `data_dir` and standardized
    per channel with training-split statistics (`loaders.standardize`).

    Args:
      name: one of `DATASETS`: "synthetic", "cifar10", "mnist", "fashion_mnist", "npz" or
        "folder" (one sub-folder of images per class).
      data_dir: the directory holding the files (for "npz", the .npz file itself); `~` is
        expanded. Not used by "synthetic".
      seed: the seed of "synthetic", and of the held-out split of "npz" and "folder" when they
        hold no test split of their own.
      image_size: "folder" only: the side of the square images, in pixels (default 32,
        `images.DEFAULT_SIZE`); each image is resized to it as it is read.

    Returns:
      A Dataset.

    Raises:
      ValueError: for an unknown name, or no `data_dir`; `loaders.DataError` (a ValueError), one
        line naming the file, when a file is missing or malformed (for "folder": fewer than two
        classes or images can be read, or more than half the image files are unreadable), its
        labels are not 0..K-1 (0..9 for CIFAR-10, MNIST, Fashion-MNIST) or its values are
        non-finite or too large for float32. No numpy warning is let through.

    Example:
      >>> ds = gf.data.load("synthetic", seed=0)
      >>> ds.x_train.shape, ds.num_classes
      ((8192, 16, 16, 3), 10)
      >>> ds = gf.data.load("cifar10", "~/data/cifar-10-batches-py")  # doctest: +SKIP
    """
    if name == "synthetic":
        return synthetic(seed)
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not one of {', '.join(map(repr, DATASETS))}")
    if data_dir is None:
        raise ValueError(f"dataset={name!r} needs a data directory (or .npz file)")
    if image_size is not None and name != "folder":
        raise ValueError(f"image_size is only used by dataset='folder', not {name!r}")
    from . import loaders

    path = Path(data_dir).expanduser()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the checks below say what is wrong
        if name == "cifar10":
            ds = loaders.cifar10(path)
        elif name == "mnist":
            ds = loaders.idx_dataset(path, "mnist")
        elif name == "fashion_mnist":
            ds = loaders.idx_dataset(path, "fashion_mnist", loaders.FASHION_CLASSES)
        elif name == "npz":
            ds = loaders.npz(path, seed=seed)
        else:
            size = DEFAULT_SIZE if image_size is None else image_size
            ds = loaders.image_folder(path, seed=seed, image_size=size)
        ds = loaders.standardize(ds)
    if not (np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()):
        raise loaders.DataError(f"{path}: values too large to standardize in float32 (the "
                                f"per-channel variance overflows); rescale the inputs")
    return ds


__all__ = ["Dataset", "synthetic", "batches", "load", "DATASETS", "PAIRS"]

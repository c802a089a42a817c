"""Image folders: `root/<class>/<image>`, every image decoded and resized on its own.

Memory stays bounded by the output: the (N, S, S, 3) array is allocated once and each file is
opened, decoded (a JPEG directly at a reduced scale, `Image.draft`), resized to S×S, copied in
and closed before the next, so a folder of large photos never sits in memory at full size.

What is read, and what is not:

- classes are the sorted names of the sub-folders of `root` that hold at least one readable
  image (searched recursively); hidden folders (`.ipynb_checkpoints`, `.git`) and folders
  without images are not classes;
- hidden files (names starting with ".", such as macOS `._photo.jpg` and `.DS_Store`) are
  ignored;
- files with a suffix not in `readable_suffixes()` (PNG, JPEG, BMP, GIF, TIFF, WebP where
  Pillow reads it) are skipped and counted by suffix;
- a file that cannot be decoded (truncated, not an image, too large for Pillow) is skipped and
  counted, unless more than half of the image files are unreadable: then the folder is refused,
  as it is when fewer than two images or two classes remain.

The counts, and how many images of which original sizes were read, are one line in the
Dataset's `meta["notes"]` (the command line prints it as a `note:`).
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import DataError
from .synthetic import Dataset

DEFAULT_SIZE = 32  # pixels per side when no image size is given


# The files read as images; WebP too where Pillow reads it (`readable_suffixes`).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"})


def readable_suffixes() -> frozenset:
    """IMAGE_SUFFIXES, with ".webp" where this Pillow reads WebP.

    Returns:
      Lower-case suffixes with their dot.
    """
    from PIL import features  # Pillow: a dependency of matplotlib

    return IMAGE_SUFFIXES | ({".webp"} if features.check("webp") else set())


def image_folder(root, *, image_size: int = DEFAULT_SIZE, test_fraction: float = 0.2,
                 seed: int = 0) -> Dataset:
    """A dataset from a folder of images, one sub-folder per class (`root/<class>/<image>`).

    Every image is read as RGB and resized to `image_size`×`image_size` (the aspect ratio is
    not kept), one file at a time. Hidden files and folders are ignored; files of other formats
    and unreadable files are skipped and counted; the folder is refused if more than half of
    its image files are unreadable (see the module docstring for the rules).

    Args:
      root: the folder.
      image_size: the side S of the square images returned, in pixels (>= 1).
      test_fraction: the fraction of images held out (at least 1).
      seed: the seed of that split.

    Returns:
      A Dataset of (n, S, S, 3) float32 images in [0, 1], named after the folder; its
      `meta["notes"]` holds one line with what was read and skipped, `meta["image_folder"]`
      the same counts.

    Raises:
      DataError: naming the folder, if it is not a directory, fewer than two classes or two
        images can be read, or more than half of the image files are unreadable.
      ValueError: if `image_size` is not a positive integer.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive integer (pixels per side)")
    root, size = Path(root), int(image_size)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = _scan(root)
    files = [(f, c) for c, paths in enumerate(found["classes"].values()) for f in paths]
    x = np.empty((len(files), size, size, 3), np.float32)  # the only full-size allocation
    labels, sizes, bad = [], Counter(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's EXIF, palette and size warnings
        for f, c in files:
            try:
                sizes[_read_into(f, size, x[len(labels)])] += 1
            except Exception as e:  # noqa: BLE001 - any file Pillow cannot decode is unreadable
                bad.append((f, f"{type(e).__name__}: {e}".splitlines()[0]))
                continue
            labels.append(c)
    counts = {"unreadable": len(bad), "unsupported": dict(found["unsupported"]),
              "hidden": found["hidden"], "loose": found["loose"]}
    _check(root, len(files), len(labels), bad, counts)
    names = list(found["classes"])
    kept = sorted(set(labels))  # classes whose every image was unreadable are dropped
    empty = found["empty"] + [names[c] for c in range(len(names)) if c not in kept]
    if len(kept) < 2:
        raise DataError(f"{root}: needs one sub-folder of images per class, found "
                        f"{len(kept)} with readable images{_skipped(counts, empty)}")
    y = np.searchsorted(kept, labels).astype(np.int32)
    n = len(labels)
    x = x[:n]
    x /= 255.0
    note = (f"{root}: read {_n(n, 'image')} ({_sizes(sizes)}) resized to {size}×{size}"
            f"{_skipped(counts, empty)}")
    meta = {"notes": (note,), "image_folder": {
        "images": n, "image_size": size, "sizes": {f"{w}x{h}": k for (w, h), k in sizes.items()},
        **counts, "without_images": empty}}
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return Dataset(root.name, x[order[n_test:]], y[order[n_test:]], x[order[:n_test]],
                   y[order[:n_test]], len(kept), tuple(names[c] for c in kept), meta)


def _scan(root: Path) -> dict:
    """The candidate image files per class folder (sorted), and what was passed over."""
    classes, empty, unsupported, hidden, loose = {}, [], Counter(), 0, 0
    readable = readable_suffixes()
    for top in sorted(root.iterdir()):
        if top.name.startswith("."):
            hidden += 1
            continue
        if not top.is_dir():
            loose += 1
            continue
        paths = []
        for here, dirs, names in os.walk(top):
            hidden += sum(d.startswith(".") for d in dirs)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                suffix = os.path.splitext(name)[1].lower()
                if name.startswith("."):
                    hidden += 1
                elif suffix in readable:
                    paths.append(Path(here, name))
                else:
                    unsupported[suffix or "no suffix"] += 1
        if paths:
            classes[top.name] = paths
        else:
            empty.append(top.name)
    return {"classes": classes, "empty": empty, "unsupported": unsupported, "hidden": hidden,
            "loose": loose}


def _read_into(path: Path, size: int, out: np.ndarray) -> tuple:
    """Decodes `path` into `out` (size, size, 3) as RGB 0..255; returns its original (w, h)."""
    from PIL import Image

    with Image.open(path) as im:
        original = im.size
        im.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, still >= size
        if im.mode != "RGB":  # (an RGB image is not copied)
            im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        out[...] = np.asarray(im, dtype=np.float32)
    return original


def _check(root, n_files, n_read, bad, counts) -> None:
    """Refuses a folder with more than half of its image files unreadable, or < 2 images."""
    if n_files and len(bad) * 2 > n_files:
        f, why = bad[0]
        raise DataError(f"{root}: {len(bad)} of {n_files} image files are unreadable (first: "
                        f"{f}: {why}); gradflow skips unreadable files only while they are at "
                        f"most half")
    if n_read < 2:
        raise DataError(f"{root}: found {_n(n_read, 'readable image')}; needs one sub-folder "
                        f"of images per class{_skipped(counts)}")


def _sizes(sizes: Counter) -> str:
    """"512 at 256×256, 88 at other sizes": the commonest original sizes."""
    common = sizes.most_common()
    shown = common if len(common) <= 3 else common[:2]
    parts = [f"{k} at {w}×{h}" for (w, h), k in shown]
    rest = common[len(shown):]
    if rest:
        parts.append(f"{sum(k for _, k in rest)} at {_n(len(rest), 'other size')}")
    return ", ".join(parts)


def _skipped(counts: dict, empty=()) -> str:
    """"; skipped 2 unreadable, 1 unsupported (.webp); ignored ...", or ""."""
    skipped, ignored = [], []
    if counts["unreadable"]:
        skipped.append(f"{counts['unreadable']} unreadable")
    if counts["unsupported"]:
        kinds = ", ".join(f"{k} {s}" for s, k in sorted(counts["unsupported"].items()))
        skipped.append(f"{sum(counts['unsupported'].values())} unsupported ({kinds})")
    if counts["hidden"]:
        ignored.append(_n(counts["hidden"], "hidden file or folder", "hidden files or folders"))
    if counts["loose"]:
        ignored.append(_n(counts["loose"], "file") + " outside the class folders")
    if empty:
        ignored.append(f"{_n(len(empty), 'folder')} without readable images ({', '.join(empty)})")
    return "".join(f"; {what} {', '.join(v)}" for what, v in (("skipped", skipped),
                                                             ("ignored", ignored)) if v)


def _n(k: int, one: str, many: str | None = None) -> str:
    """"1 image", "2 images"."""
    return f"{k} {one if k == 1 else many or one + 's'}"

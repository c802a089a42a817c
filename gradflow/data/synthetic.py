"""The built-in dataset: generated "texture pairs", a 10-class image task that needs composition.

Five texture types are oriented gratings (periods 3-4 px, orientations 0°, 36°, ..., 144°) seen
through a Gaussian window. Each image holds two windowed patches of two *different* types at random
positions, with random phase, contrast and colour, on a noisy background; its class is the
unordered pair of types, C(5, 2) = 10 classes. Colour, position and brightness carry no label
information, so a network has to build phase-invariant orientation detectors (a nonlinearity on
top of linear filters) and combine two of them: learnable, and hard enough for depth and
architecture to matter. Everything is a pure function of the seed; no network access.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

N_TYPES = 5
PAIRS = tuple(combinations(range(N_TYPES), 2))  # class index -> (type a, type b)
ORIENTATIONS = tuple(np.pi * k / N_TYPES for k in range(N_TYPES))
PERIODS = (3.2, 4.0, 3.2, 4.0, 3.2)  # px; neighbouring orientations also differ in scale


@dataclass(frozen=True)
class Dataset:
    """Train and held-out splits of NHWC float32 images with integer labels.

    Attributes:
      name: the dataset's name.
      x_train: (n_train, H, W, C) float32 images.
      y_train: (n_train,) int32 labels, 0 to num_classes - 1.
      x_test: (n_test, H, W, C) held-out images.
      y_test: (n_test,) held-out labels.
      num_classes: the number of classes.
      class_names: a name per class, where known.
      meta: free-form metadata (e.g. the generator's seed, or "standardized").
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input, (H, W, C)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self):
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"classes={self.num_classes})")


def _images(rng: np.random.Generator, labels: np.ndarray, size: int, noise: float) -> np.ndarray:
    n = labels.shape[0]
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # (size, size)
    images = noise * rng.standard_normal((n, size, size, 3))
    images += 0.3 * rng.standard_normal((n, 1, 1, 3))  # random background tint
    pairs = np.asarray(PAIRS)[labels]  # (n, 2)
    radius = 0.28 * size  # keep patch centres inside the image
    for slot in range(2):
        kind = pairs[:, slot]
        theta = np.asarray(ORIENTATIONS)[kind][:, None, None]
        period = np.asarray(PERIODS)[kind][:, None, None]
        cy, cx = (rng.uniform(-radius, radius, (2, n))[..., None, None])
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        sigma = rng.uniform(0.13, 0.2, (n, 1, 1)) * size
        contrast = rng.uniform(0.7, 1.3, (n, 1, 1))
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        window = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        pattern = contrast * window * np.cos(2 * np.pi * u / period + phase)  # (n, size, size)
        colour = rng.normal(0, 1, (n, 3))  # a random colour direction, mean power 1 per channel
        colour *= np.sqrt(3) / np.linalg.norm(colour, axis=1, keepdims=True)
        images += pattern[..., None] * colour[:, None, None, :]
    return images.astype(np.float32)


def synthetic(seed: int = 0, *, n_train: int = 8192, n_test: int = 2048, size: int = 16,
              noise: float = 0.4) -> Dataset:
    """Generates the texture-pairs dataset (see the module docstring), deterministic in `seed`.

    The held-out split is drawn from an independent stream of the same distribution. Images
    are not standardized.

    Args:
      seed: the seed; the same seed gives the same arrays.
      n_train: training examples.
      n_test: held-out examples.
      size: the image side in pixels, >= 8.
      noise: the background noise's standard deviation, >= 0.

    Returns:
      A Dataset of (n, size, size, 3) float32 images and int32 labels 0..9; class names such
      as "0°+36°".

    Raises:
      ValueError: for a count or size that is not a positive integer, size < 8, or noise < 0.

    Example:
      >>> ds = gf.data.synthetic(seed=0, n_train=256, n_test=64)
      >>> ds.x_train.shape, ds.num_classes, ds.class_names[0]
      ((256, 16, 16, 3), 10, '0°+36°')
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if size < 8:
        raise ValueError(f"size={size} must be at least 8 (a grating needs room)")
    if not noise >= 0:
        raise ValueError(f"noise={noise!r} must be >= 0")
    train_ss, test_ss = np.random.SeedSequence([seed, 0x67F]).spawn(2)
    splits = []
    for ss, n in ((train_ss, n_train), (test_ss, n_test)):
        rng = np.random.default_rng(ss)
        labels = rng.integers(0, len(PAIRS), n)
        splits += [_images(rng, labels, size, noise), labels.astype(np.int32)]
    deg = [round(float(np.degrees(t))) for t in ORIENTATIONS]
    names = tuple(f"{deg[a]}°+{deg[b]}°" for a, b in PAIRS)
    return Dataset("synthetic", *splits, num_classes=len(PAIRS), class_names=names,
                   meta={"seed": seed, "size": size, "noise": noise})

"""Peak memory of loading an image folder that holds one 4032×3024 photo.

    python benchmarks/image_folder_memory.py                 # JPEG photo, --image-size 32
    python benchmarks/image_folder_memory.py --format png --image-size 64

Writes a folder with two classes: one 4032×3024 photo (a colour gradient with noise, so it
compresses like a photo) plus `--small` 64×64 images per class. Each measurement runs in its own
child process started from a small parent (the folder is made in another child), whose peak
resident memory (`ru_maxrss` from `os.wait4`), wall time (start-up and imports included) and
the time of the call itself are printed:

- `import`: Python, numpy, Pillow and `gradflow.data.images` imported, nothing read (the floor);
- `gradflow.data.images.image_folder`: the folder loaded at `--image-size`;
- `full decode of the photo`: the same imports, then the photo alone opened and converted to
  RGB at full size (what a loader that decodes every image at full size pays for it at least).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = {
    "import": "import numpy, PIL.Image, gradflow.data.images",
    "gradflow.data.images.image_folder": (
        "import time\n"
        "from gradflow.data.images import image_folder\n"
        "t = time.perf_counter()\n"
        "ds = image_folder({root!r}, image_size={size})\n"
        "print(f'{{time.perf_counter() - t:.2f}} s in the call; ' + ds.meta['notes'][0])"),
    "full decode of the photo": (
        "import time, numpy as np, PIL.Image, gradflow.data.images\n"
        "t = time.perf_counter()\n"
        "with PIL.Image.open({photo!r}) as im:\n"
        "    a = np.asarray(im.convert('RGB'))\n"
        "print(f'{{time.perf_counter() - t:.2f}} s in the call; {{a.shape}}')"),
}


def make_folder(root: Path, fmt: str, small: int) -> Path:
    """The folder: root/a/photo.<fmt> (4032×3024) and `small` 64×64 PNGs in root/a and root/b.
    Returns the photo's path."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 3024, 4032
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([gx / w * 255, gy / h * 255, (1 - gx / w) * 255], -1)
    rgb += rng.normal(0, 12, rgb.shape).astype(np.float32)
    photo = root / "a" / f"photo.{fmt}"
    photo.parent.mkdir(parents=True)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(photo, quality=90)
    for c in ("a", "b"):
        (root / c).mkdir(exist_ok=True)
        for i in range(small):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return photo


def measure(code: str) -> tuple[float, float, str]:
    """Runs `code` in a child Python; returns its peak RSS (MiB), wall seconds and output."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {code}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t, out.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--small", type=int, default=20, help="64×64 images per class")
    p.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # the folder-making child
    args = p.parse_args()
    if args.make:
        print(make_folder(Path(args.make), args.format, args.small))
        return
    with tempfile.TemporaryDirectory() as tmp:
        # made in a child: a child's ru_maxrss starts at its parent's resident size at fork,
        # so this process stays small
        photo = Path(subprocess.run(
            [sys.executable, __file__, "--make", str(Path(tmp) / "folder"), "--format",
             args.format, "--small", str(args.small)], check=True, capture_output=True,
            text=True).stdout.strip())
        print(f"folder: 1 photo 4032×3024 .{args.format} ({photo.stat().st_size / 2**20:.1f} MiB "
              f"on disk) + {2 * args.small} images 64×64; --image-size {args.image_size}")
        results = {}
        for name, code in CHILD.items():
            rss, wall, out = measure(code.format(root=str(photo.parents[1]), photo=str(photo),
                                                 size=args.image_size))
            results[name] = {"peak_rss_mib": round(rss, 1), "wall_s": round(wall, 2)}
            print(f"{name:36s} peak RSS {rss:7.1f} MiB   {wall:5.2f} s   {out}")
        print(json.dumps(results))


if __name__ == "__main__":
    main()

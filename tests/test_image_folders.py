"""Image folders (issue #16): every image resized to --image-size as it is read, with a note of
what was read; hidden folders, empty folders, macOS `._*` files, other formats and unreadable
images handled by the documented rules. Small images written by the tests; no model."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

from gradflow import cli, data
from gradflow.data import images
from gradflow.data.loaders import DataError, image_folder
from gradflow.experiments.side_by_side import Config

from _faults import one_line

RNG = np.random.default_rng(0)


def _save(path, size=(12, 10), colour=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)
    return path


def _noise(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _two_classes(root, n=3):
    for c, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        for i in range(n):
            _save(root / c / f"{i}.png", colour=colour)
    return root


def test_every_image_is_resized_to_image_size_and_the_sizes_read_are_noted(tmp_path):
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png", (40, 30))
    _noise(tmp_path / "a" / "photo.jpg", (64, 48))
    _save(tmp_path / "b" / "grey.bmp", (17, 9), mode="L")
    Image.new("P", (20, 20), 3).save(tmp_path / "b" / "palette.gif")
    Image.new("RGBA", (8, 8), (0, 255, 0, 128)).save(tmp_path / "b" / "alpha.png")
    ds = image_folder(tmp_path, image_size=16, test_fraction=0.25)
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.shape == (7, 16, 16, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and ds.class_names == ("a", "b")
    counts = ds.meta["image_folder"]
    assert counts["images"] == 7 and counts["image_size"] == 16
    assert counts["sizes"] == {"40x30": 3, "64x48": 1, "17x9": 1, "20x20": 1, "8x8": 1}
    note, = ds.meta["notes"]
    assert note == f"{tmp_path}: read 7 images (3 at 40×30, 1 at 64×48, 3 at 3 other sizes) " \
                   f"resized to 16×16"


def test_resizing_keeps_the_picture(tmp_path):
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, :32, 0] = 255  # left half red, right half blue
    half[:, 32:, 2] = 255
    for c in ("l", "r"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(half).save(tmp_path / c / f"{i}.png")
    x = image_folder(tmp_path, image_size=8).x_train[0]
    assert np.allclose(x[:, :3, 0], 1) and np.allclose(x[:, :3, 2], 0)
    assert np.allclose(x[:, 5:, 2], 1) and np.allclose(x[:, 5:, 0], 0)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    """Image.draft: a 2000×1500 JPEG is decoded at 1/8 scale for 32×32, never at full size."""
    _noise(tmp_path / "a" / "big.jpg", (2000, 1500))
    _save(tmp_path / "b" / "small.png")
    decoded, real = [], Image.Image.resize

    def spy(self, *a, **k):
        decoded.append(self.size)
        return real(self, *a, **k)

    monkeypatch.setattr(Image.Image, "resize", spy)
    ds = image_folder(tmp_path, image_size=32)
    assert ds.meta["image_folder"]["sizes"] == {"2000x1500": 1, "12x10": 1}
    assert max(w * h for w, h in decoded) == 250 * 188


def test_the_default_image_size_is_32_and_other_datasets_refuse_it(tmp_path):
    ds = data.load("folder", _two_classes(tmp_path), seed=0)
    assert ds.x_train.shape[1:] == (32, 32, 3) == (images.DEFAULT_SIZE,) * 2 + (3,)
    assert data.load("folder", tmp_path, image_size=5).x_train.shape[1:] == (5, 5, 3)
    with pytest.raises(ValueError, match="image_size is only used by dataset='folder'"):
        data.load("npz", tmp_path / "x.npz", image_size=5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="image_size"):
            image_folder(tmp_path, image_size=bad)


def test_hidden_and_empty_folders_are_not_classes_and_hidden_files_are_ignored(tmp_path):
    _two_classes(tmp_path)
    _save(tmp_path / ".ipynb_checkpoints" / "0.png")  # a hidden folder: not a class
    _save(tmp_path / "cats" / ".ipynb_checkpoints" / "0-checkpoint.png")  # nor inside a class
    (tmp_path / "empty").mkdir()  # an empty folder: not a class
    (tmp_path / "cats" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "labels.csv").write_text("file,label\n")  # not in a class folder
    ds = image_folder(tmp_path)
    assert ds.class_names == ("cats", "dogs") and ds.num_classes == 2
    assert len(ds.x_train) + len(ds.x_test) == 6
    counts = ds.meta["image_folder"]
    assert counts["hidden"] == 4 and counts["loose"] == 1 and counts["unreadable"] == 0
    assert counts["without_images"] == ["empty"]
    assert ds.meta["notes"][0].endswith(
        "; ignored 4 hidden files or folders, 1 file outside the class folders, 1 folder "
        "without readable images (empty)")


def test_other_formats_are_skipped_and_counted_by_suffix(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / "a.heic").write_bytes(b"\x00" * 16)
    (tmp_path / "dogs" / "b.HEIC").write_bytes(b"\x00" * 16)
    (tmp_path / "dogs" / "README").write_text("no suffix")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "x.txt").write_text("a folder without images is not a class")
    ds = image_folder(tmp_path)
    assert ds.class_names == ("cats", "dogs")
    assert ds.meta["image_folder"]["unsupported"] == {".txt": 2, ".heic": 2, "no suffix": 1}
    assert "; skipped 5 unsupported (2 .heic, 2 .txt, 1 no suffix); ignored 1 folder without " \
           "readable images (only_text)" in ds.meta["notes"][0]
    if ".webp" not in images.readable_suffixes():  # a Pillow without WebP: counted, not read
        (tmp_path / "dogs" / "c.webp").write_bytes(b"RIFF")
        assert image_folder(tmp_path).meta["image_folder"]["unsupported"][".webp"] == 1


def _truncated_jpeg(path):
    _noise(path, (64, 64))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def test_unreadable_images_are_skipped_and_counted_while_at_most_half(tmp_path):
    _two_classes(tmp_path)
    _truncated_jpeg(tmp_path / "cats" / "cut.jpg")
    (tmp_path / "dogs" / "noise.jpg").write_bytes(RNG.integers(0, 256, 300, np.uint8).tobytes())
    (tmp_path / "dogs" / "empty.png").write_bytes(b"")
    ds = image_folder(tmp_path)
    assert len(ds.x_train) + len(ds.x_test) == 6
    assert ds.meta["image_folder"]["unreadable"] == 3
    assert "; skipped 3 unreadable" in ds.meta["notes"][0]
    for i in range(4):  # 7 of 13 unreadable: more than half
        (tmp_path / "dogs" / f"bad{i}.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as exc:
        image_folder(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: 7 of 13 image files are unreadable "
                                              f"(first: {tmp_path / 'cats' / 'cut.jpg'}: ")
    assert msg.endswith("gradflow skips unreadable files only while they are at most half")


def test_a_class_whose_images_are_all_unreadable_is_dropped(tmp_path):
    _two_classes(tmp_path, n=4)
    _save(tmp_path / "birds" / "0.png")
    (tmp_path / "birds" / "0.png").write_bytes(b"broken")
    ds = image_folder(tmp_path)
    assert ds.class_names == ("cats", "dogs") and set(np.unique(ds.y_train)) <= {0, 1}
    assert ds.meta["notes"][0].endswith("; skipped 1 unreadable; ignored 1 folder without readable "
                                        "images (birds)")


@pytest.mark.parametrize("layout,message", [
    ({"cats/0.png": True}, "found 1 readable image; needs one sub-folder of images per "
                           "class"),
    ({"0.png": True, "1.png": True}, "found 0 readable images; needs one sub-folder of images "
                                     "per class; ignored 2 files outside the class folders"),
    ({"a/x.txt": False, "b/y.txt": False}, "found 0 readable images; needs one sub-folder of "
                                           "images per class; skipped 2 unsupported (2 .txt)"),
    ({".hidden/0.png": True, "a/0.png": True, "a/1.png": True},
     "found 1 with readable images; ignored 1 hidden file or folder"),
])
def test_too_little_to_read_is_one_line(tmp_path, layout, message):
    for name, image in layout.items():
        if image:
            _save(tmp_path / name)
        else:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("text")
    with pytest.raises(DataError) as exc:
        image_folder(tmp_path)
    assert "\n" not in str(exc.value) and message in str(exc.value), str(exc.value)


# -- the command line ----------------------------------------------------------------------------

def test_image_size_is_an_option_of_the_folder_dataset_only(tmp_path, capsys):
    args = cli.parse(["--dataset", "folder", "--data-dir", str(tmp_path), "--image-size", "24",
                      "--out", str(tmp_path / "o")])
    assert args.image_size == 24
    for argv, start in ((["--image-size", "24"], "argument --image-size: only used by --dataset "
                                                 "folder, not synthetic"),
                        (["--dataset", "folder", "--data-dir", "d", "--image-size", "0"],
                         "argument --image-size: '0' is not an integer >= 1")):
        with pytest.raises(SystemExit) as exc:
            cli.parse([*argv, "--out", str(tmp_path / "o")])
        assert exc.value.code == 2
        one_line(capsys.readouterr().err, f"python -m gradflow.run: error: {start}")
    with pytest.raises(SystemExit):
        cli.parse(["--experiment", "residual", "--image-size", "24"])
    assert "not used by --experiment residual" in capsys.readouterr().err


def test_the_cli_notes_what_it_read_and_refuses_in_one_line(tmp_path, capsys):
    cli_main = importlib.import_module("gradflow.cli.main")
    _two_classes(tmp_path / "d", n=4)
    (tmp_path / "d" / "cats" / "x.webm").write_bytes(b"video")
    cfg = Config(dataset="folder", data_dir=str(tmp_path / "d"), batch_size=2)
    ds = cli_main._load(cfg, 16)
    assert ds.x_train.shape[1:] == (16, 16, 3)
    one_line(capsys.readouterr().err, f"note: {tmp_path / 'd'}: read 8 images (8 at 12×10) "
             f"resized to 16×16; skipped 1 unsupported (1 .webm)")
    for f in (tmp_path / "d" / "dogs").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--out",
                  str(tmp_path / "o")])
    assert exc.value.code == 2 and not (tmp_path / "o").exists()
    one_line(capsys.readouterr().err, f"python -m gradflow.run: error: argument --data-dir: "
             f"{tmp_path / 'd'}: needs one sub-folder of images per class, found 1")

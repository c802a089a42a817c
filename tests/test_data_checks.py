"""Data files that would train on the wrong task are refused in one line (issue #16): labels that
are not 0..K-1, npz layouts (channels first, greyscale, half a test split), files that are not
.npz at all, and values float32 cannot hold — through `gf.data.load`, and twice through the CLI."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gradflow as gf
from gradflow import cli
from gradflow.data.loaders import DataError
from test_loaders import write_cifar_batch, write_idx

RNG = np.random.default_rng(0)


def _cifar(root, test_labels):
    """Five good training batches and a test batch with `test_labels`."""
    for i in range(1, 6):
        write_cifar_batch(root / f"data_batch_{i}", 4, i)
    write_cifar_batch(root / "test_batch", len(test_labels), 9)
    with open(root / "test_batch", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"] = [int(v) for v in test_labels]
    with open(root / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _mnist(root, train_labels):
    for split, labels in (("train", np.asarray(train_labels, np.uint8)),
                          ("t10k", np.arange(3, dtype=np.uint8))):
        write_idx(root / f"{split}-images-idx3-ubyte",
                  RNG.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _refused(name, path, needle):
    with pytest.raises(DataError) as exc:
        gf.data.load(name, path)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg and str(path) in msg, msg
    return msg


def _cli_error(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", "o"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err, err
    assert not (tmp_path / "o").exists()
    return err


# -- 1. labels are 0..K-1 in every loader ---------------------------------------------------------

def test_labels_outside_the_classes_are_refused(tmp_path):
    for labels, needle in ((np.arange(1, 11), "labels are 1..10; CIFAR-10 labels are 0..9: "
                                              "subtract 1"),
                           ([0, 3, -1], "labels are -1..3; CIFAR-10 labels are 0..9")):
        root = tmp_path / f"cifar{labels[-1]}"
        root.mkdir()
        _cifar(root, labels)
        _refused("cifar10", root, needle)
    ok = tmp_path / "cifar_ok"
    ok.mkdir()
    _cifar(ok, np.arange(10))
    assert gf.data.load("cifar10", ok).num_classes == 10

    for name in ("mnist", "fashion_mnist"):
        root = tmp_path / name
        root.mkdir()
        _mnist(root, np.arange(1, 11))
        _refused(name, root, "labels are 1..10; " + ("mnist" if name == "mnist" else
                                                     "fashion_mnist") + " labels are 0..9")

    x = RNG.random((20, 4, 4, 1))
    msg = _refused("npz", _npz(tmp_path / "one_based.npz", x=x, y=np.arange(20) % 4 + 1),
                   "labels are 1..4; gradflow expects 0..K-1: subtract 1")
    assert "5" not in msg.split(":", 1)[1]  # never 5 classes
    _refused("npz", _npz(tmp_path / "gap.npz", x=x, y=np.arange(20) % 3 * 2),
             "no example has label 1, 3")
    _refused("npz", _npz(tmp_path / "neg.npz", x=x, y=np.arange(20) % 3,
                         x_test=x[:2], y_test=np.array([0, -1])), "'y_test' has negative labels")
    assert gf.data.load("npz", _npz(tmp_path / "good.npz", x=x, y=np.arange(20) % 4)
                        ).num_classes == 4


def test_one_based_cifar_labels_are_a_usage_error_on_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "cifar").mkdir()
    _cifar(tmp_path / "cifar", np.arange(1, 11))
    err = _cli_error(["--dataset", "cifar10", "--data-dir", "cifar"], tmp_path, monkeypatch,
                     capsys)
    assert err.startswith("python -m gradflow.run: error: argument --data-dir: ")
    assert "labels are 1..10; CIFAR-10 labels are 0..9" in err


# -- 2. npz layouts --------------------------------------------------------------------------------

def test_npz_layouts(tmp_path):
    x = RNG.random((20, 3, 32, 32)).astype(np.float32)
    ds = gf.data.load("npz", _npz(tmp_path / "nchw.npz", x=x, y=np.arange(20) % 2))
    assert ds.x_train.shape[1:] == (32, 32, 3) and "channels first" in ds.meta["notes"][0]
    raw = gf.data.loaders.npz(tmp_path / "nchw.npz", test_fraction=0.05)
    order = np.random.default_rng(0).permutation(20)
    assert np.array_equal(raw.x_train[0], x[order[1]].transpose(1, 2, 0))  # pixels, not relabels

    ds = gf.data.load("npz", _npz(tmp_path / "grey.npz", x=RNG.random((20, 28, 28)),
                                  y=np.arange(20) % 2, x_test=RNG.random((4, 28, 28)),
                                  y_test=np.arange(4) % 2))
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    nhwc = gf.data.load("npz", _npz(tmp_path / "nhwc.npz", x=RNG.random((20, 8, 8, 3)),
                                    y=np.arange(20) % 2))
    assert nhwc.x_train.shape[1:] == (8, 8, 3) and "notes" not in nhwc.meta

    x, y = RNG.random((20, 8, 8, 1)), np.arange(20) % 2
    _refused("npz", _npz(tmp_path / "xt.npz", x=x, y=y, x_test=x[:3]),
             "has 'x_test' but no 'y_test'")
    _refused("npz", _npz(tmp_path / "yt.npz", x=x, y=y, y_test=y[:3]),
             "has 'y_test' but no 'x_test'")
    _refused("npz", _npz(tmp_path / "shape.npz", x=x, y=y, x_test=x[:3, :4], y_test=y[:3]),
             "'x_test' examples have shape")


def test_the_command_line_says_how_a_channels_first_file_was_read(tmp_path, capsys):
    import importlib
    from types import SimpleNamespace

    cli_main = importlib.import_module("gradflow.cli.main")  # the module (cli.main is a function)
    path = _npz(tmp_path / "nchw.npz", x=RNG.random((20, 3, 8, 8)).astype(np.float32),
                y=np.arange(20) % 2)
    cfg = SimpleNamespace(dataset="npz", data_dir=str(path), seed=0, batch_size=4, model="cnn")
    ds = cli_main._load(cfg)
    err = capsys.readouterr().err
    assert ds.image_shape == (8, 8, 3)
    assert err.startswith("note: ") and "channels first" in err and err.count("\n") == 1, err


# -- 3. not an npz at all --------------------------------------------------------------------------

def test_a_file_that_is_not_an_npz_says_what_is_expected(tmp_path):
    (tmp_path / "x.npz").write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    np.save(tmp_path / "single.npy", np.zeros(3))
    _npz(tmp_path / "objects.npz", x=np.array([{}, {}], dtype=object), y=np.arange(2))
    for name in ("x.npz", "single.npy", "objects.npz"):
        msg = _refused("npz", tmp_path / name, "arrays x (N, ...) and y (N,)")
        assert "allow_pickle" not in msg and "pickle" not in msg, msg


# -- 4. no numpy warning, the error says what is wrong ----------------------------------------------

def test_values_float32_cannot_hold_are_one_line_without_warnings(tmp_path):
    y = np.arange(20) % 2
    _npz(tmp_path / "huge.npz", x=RNG.random((20, 4, 4, 1)) * 1e300, y=y)
    _npz(tmp_path / "near_max.npz", x=RNG.random((20, 4, 4, 1)) * 3e38, y=y)
    inf = RNG.random((20, 4, 4, 1))
    inf[2, 1, 1, 0] = np.inf
    _npz(tmp_path / "inf.npz", x=inf, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _refused("npz", tmp_path / "huge.npz", "too large for float32")
        _refused("npz", tmp_path / "near_max.npz", "too large to standardize in float32")
        _refused("npz", tmp_path / "inf.npz", "non-finite")
    # a real process: what reaches its stderr is exactly one line, no RuntimeWarning before it
    proc = subprocess.run([sys.executable, "-m", "gradflow.run", "--dataset", "npz", "--data-dir",
                           "huge.npz", "--out", "o"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_importable_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "too large for float32" in proc.stderr and "Warning" not in proc.stderr
    assert not (tmp_path / "o").exists()


def _importable_env() -> dict:
    """The environment with this checkout on PYTHONPATH (gradflow need not be installed)."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}

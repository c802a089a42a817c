"""Checkpoints on a full disk (issue #16): a checkpoint that cannot be written raises one
WriteError naming its directory, prints nothing else, leaves no half-written checkpoint, and the
previous checkpoint stays whole — for `Checkpoint.save`, on a real full tmpfs, and through the
command line, whose run then resumes from that previous checkpoint."""
from __future__ import annotations

import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradflow import _io, checkpoint, cli
from gradflow.checkpoint import Checkpoint
from gradflow.cli.resume import RunRecord
from gradflow.train import TrainState

from _faults import exit_code, fill, full_disk_for_orbax, one_line, small_tmpfs
from test_run_dir import TINY

TX = optax.sgd(0.1, momentum=0.9)


def _state(step: int) -> TrainState:
    params = {"w": jnp.full((3, 4), float(step)), "b": jnp.zeros(4)}
    records = [{"loss": np.float32(s), "grad_norm": np.arange(2, dtype=np.float32) + s}
               for s in range(max(step, 1))]
    return TrainState(step, params, {"key": jax.random.key(step)}, TX.init(params),
                      list(range(len(records))), records, ("a", "b"))


def _whole_and_alone(directory: Path, step: int):
    """Only the committed checkpoint `step` is in `directory`, and it restores."""
    assert sorted(p.name for p in directory.iterdir()) == [str(step)]
    assert Checkpoint(directory).restore(_state(0)).step == step


@pytest.mark.parametrize("fail_at", [1, 4, 8])
def test_a_checkpoint_hitting_enospc_is_one_write_error_and_keeps_the_previous(
        tmp_path, monkeypatch, capfd, fail_at):
    ckpt = Checkpoint(tmp_path / "ck")
    ckpt.save(_state(2))
    threads = set(threading.enumerate())
    fault = full_disk_for_orbax(monkeypatch, tmp_path / "ck", fail_at)
    with pytest.raises(_io.WriteError) as exc:
        ckpt.save(_state(4))
    assert str(exc.value) == f"cannot write {tmp_path / 'ck'}: No space left on device"
    fault.heal()
    assert capfd.readouterr().err == ""  # orbax's thread tracebacks are not printed
    assert set(threading.enumerate()) <= threads  # no writer thread left behind
    _whole_and_alone(tmp_path / "ck", 2)
    ckpt.save(_state(6))  # the same Checkpoint works again once there is space
    _whole_and_alone(tmp_path / "ck", 6)


def test_a_real_full_tmpfs_fails_each_checkpoint_cleanly(tmp_path, capfd):
    """ENOSPC from the kernel, in tensorstore's array writes as well as orbax's metadata."""
    with small_tmpfs(tmp_path / "disk", 1024) as disk:
        ckpt = Checkpoint(disk / "ck")
        ckpt.save(_state(2))
        for leave in (0, 8192, 24576):  # the disk fills at different points of the save
            filler = fill(disk, leave)
            with pytest.raises(_io.WriteError, match="No space left on device"):
                ckpt.save(_state(4))
            filler.unlink()
            assert capfd.readouterr().err == ""
            _whole_and_alone(disk / "ck", 2)
        ckpt.save(_state(4))
        _whole_and_alone(disk / "ck", 4)


def test_a_run_whose_checkpoint_hits_enospc_exits_1_in_one_line_and_resumes(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_S", 0.0)  # a checkpoint at every record
    fault = full_disk_for_orbax(monkeypatch, tmp_path / "run" / "checkpoints", 15)  # the 2nd
    assert exit_code(lambda: cli.main([*TINY, "--out", "run"])) == 1
    one_line(capsys.readouterr().err,
             "gradflow: error: cannot write run/checkpoints/plain: No space left on device")
    fault.heal()
    kept = [p.name for p in Path("run/checkpoints/plain").iterdir()]
    assert len(kept) == 1 and kept[0].isdigit()  # the first checkpoint, no temporary folder
    restored, real_restore = [], Checkpoint.restore

    def spy(self, fresh):
        state = real_restore(self, fresh)
        restored.append(state.step)
        return state

    monkeypatch.setattr(Checkpoint, "restore", spy)
    assert cli.main(["--resume", "run", "--quiet"]) == 0
    assert restored == [int(kept[0])]
    assert RunRecord.load("run").status == "complete"
    assert not Path("run/checkpoints").exists()

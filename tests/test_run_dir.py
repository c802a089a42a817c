"""The run directory (issue #16): options are never abbreviated, exactly one run owns a run
directory, a file that cannot be written ends the run in one line with no truncated file, and a
stop before the first training step leaves nothing — for a run, a depth sweep and an experiment
(checkpoints on a full disk: tests/test_checkpoint_disk.py)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gradflow import cli, data
from gradflow.cli import checks
from gradflow.cli.resume import RunRecord

from _faults import exit_code, full_disk_for_gradflow, one_line

TINY = ["--depth", "4", "--width", "4", "--steps", "4", "--log-every", "2", "--batch-size", "8",
        "--archs", "plain,bn", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


# -- 1. no abbreviations ---------------------------------------------------------------------------

def test_an_abbreviated_option_is_a_one_line_usage_error_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gradflow.run", "--step", "3",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    one_line(proc.stderr, "python -m gradflow.run: error: ")
    assert "--step" in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["--step", "3"], ["--experiment", "residual", "--dep", "8"],
                                  ["--resume", "x", "--qui"]])
def test_no_parser_accepts_a_prefix(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse(argv)
    assert exc.value.code == 2
    one_line(capsys.readouterr().err, "python -m gradflow.run: error: ")


# -- 2. one owner per run directory ----------------------------------------------------------------

@pytest.mark.parametrize("exists", [False, True], ids=["new", "existing_empty"])
def test_racing_claims_on_one_directory_have_exactly_one_winner(tmp_path, exists, capsys):
    target = tmp_path / "run"
    if exists:
        target.mkdir()
    n = 8
    barrier, won, lost = threading.Barrier(n), [], []

    def claim():
        barrier.wait()
        try:
            won.append(checks.claim_dir(target))
        except SystemExit as e:
            lost.append(e.code)

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and lost == [2] * (n - 1)
    err = capsys.readouterr().err
    assert err.count("is owned by another run") + err.count("is not empty") == n - 1, err
    assert str(target) in err and str(os.getpid()) in err
    assert [p.name for p in target.iterdir()] == [checks.OWNER]
    won[0].release()
    assert target.is_dir() and not any(target.iterdir())


def test_a_second_run_into_an_owned_directory_exits_2_naming_it_and_its_owner(tmp_path,
                                                                              monkeypatch,
                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    first = checks.claim_dir(Path("run"))  # a run in progress owns "run"
    with pytest.raises(SystemExit) as exc:
        cli.main([*TINY, "--out", "run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    one_line(err, "python -m gradflow.run: error: argument --out: run ")
    assert str(os.getpid()) in err
    assert [p.name for p in Path("run").iterdir()] == [checks.OWNER]
    first.release()


def test_resume_reclaims_its_directory_unless_a_live_run_owns_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("stopped").mkdir()
    rec = RunRecord(Path("stopped"), ["--depth", "4", "--width", "4"], "interrupted")
    rec.save()
    # left by a killed run (a pid that does not exist): taken over
    import socket
    (Path("stopped") / checks.OWNER).write_text(f"999999999 {socket.gethostname()}\n")
    claim = checks.claim_dir(Path("stopped"), resume=True)
    assert (Path("stopped") / checks.OWNER).read_text().split()[0] == str(os.getpid())
    claim.release()
    assert (Path("stopped") / "run.json").exists()
    # owned by a live process (pid 1): refused
    (Path("stopped") / checks.OWNER).write_text(f"1 {socket.gethostname()}\n")
    with pytest.raises(SystemExit) as exc:
        checks.claim_dir(Path("stopped"), resume=True)
    assert exc.value.code == 2
    one_line(capsys.readouterr().err, "python -m gradflow.run: error: argument --resume: ")


def test_a_stopped_run_resumes_and_no_ownership_file_is_left(tmp_path, monkeypatch, capsys):
    from gradflow.experiments import side_by_side as experiment

    monkeypatch.chdir(tmp_path)
    real = experiment.train_arch

    def stop_after_first(arch, cfg, ds, on_step, saver=None, stop=None):
        res = real(arch, cfg, ds, on_step, saver=saver, stop=stop)
        stop.handle(2)  # SIGINT after the first architecture
        return res

    monkeypatch.setattr(experiment, "train_arch", stop_after_first)
    assert cli.main([*TINY, "--out", "run"]) == 130
    assert not (Path("run") / checks.OWNER).exists()
    assert RunRecord.load("run").status == "interrupted"
    monkeypatch.setattr(experiment, "train_arch", real)
    assert cli.main(["--resume", "run", "--quiet"]) == 0
    assert RunRecord.load("run").status == "complete"
    assert not (Path("run") / checks.OWNER).exists()


# -- 3. a file that cannot be written --------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="chmod does not bind for root")
def test_a_read_only_out_is_one_line_and_a_nonzero_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("ro").mkdir()
    os.chmod("ro", 0o555)
    try:
        code = exit_code(lambda: cli.main([*TINY, "--out", "ro"]))
    finally:
        os.chmod("ro", 0o755)
    assert code not in (0, None)
    err = capsys.readouterr().err
    one_line(err, "gradflow: error: cannot write ro")
    assert "Permission denied" in err and not any(Path("ro").iterdir())


def test_a_directory_that_refuses_writes_is_one_line_even_as_root(tmp_path, monkeypatch,
                                                                  capsys):
    """The read-only case by fault injection (chmod does not bind for root): every file created
    under `ro` fails with EACCES, as on a read-only directory."""
    monkeypatch.chdir(tmp_path)
    Path("ro").mkdir()
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if Path(path).resolve().parent == (tmp_path / "ro").resolve() and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    code = exit_code(lambda: cli.main([*TINY, "--out", "ro"]))
    monkeypatch.setattr(os, "open", real_open)
    assert code == 1
    err = capsys.readouterr().err
    one_line(err, "gradflow: error: cannot write ro")
    assert "Permission denied" in err and not any(Path("ro").iterdir())


@pytest.mark.parametrize("fail_at", [1, 3, 6, 12])
def test_a_full_disk_is_one_line_and_no_truncated_file(tmp_path, monkeypatch, capsys, fail_at):
    """The `fail_at`-th file write of a run hits ENOSPC after writing half its bytes."""
    monkeypatch.chdir(tmp_path)
    fault = full_disk_for_gradflow(monkeypatch, fail_at)
    code = exit_code(lambda: cli.main([*TINY, "--out", "run"]))
    assert code == 1
    err = capsys.readouterr().err
    one_line(err, "gradflow: error: cannot write run/")
    assert "No space left on device" in err
    fault.heal()
    files = [p for p in Path("run").rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert not (Path("run") / checks.OWNER).exists()
    for p in files:  # every file under a final name is whole
        if p.suffix == ".json":
            import json
            json.loads(p.read_text())
        elif p.suffix == ".npz":
            from gradflow import History
            History.load(p)
        elif p.suffix == ".png":
            assert p.read_bytes().endswith(b"IEND\xaeB`\x82")


# -- 4. a stop before the first training step leaves nothing ---------------------------------------

def test_ctrl_c_while_loading_leaves_nothing_and_exits_130(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load", interrupted)
    assert cli.main([*TINY, "--out", "run"]) == 130
    assert not Path("run").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing was written" in err


def test_a_signal_before_the_first_step_removes_the_claimed_directory(tmp_path, monkeypatch,
                                                                      capsys):
    import importlib
    import signal

    cli_main = importlib.import_module("gradflow.cli.main")  # the module, not cli.main

    monkeypatch.chdir(tmp_path)
    real = cli_main._claim

    def claim_then_sigint(args):
        claim = real(args)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C right after the directory was claimed
        return claim

    monkeypatch.setattr(cli_main, "_claim", claim_then_sigint)
    assert cli.main([*TINY, "--out", "run"]) == 130
    assert not Path("run").exists()
    assert "nothing was written" in capsys.readouterr().err


SWEEP = ["--depth", "4,6", "--width", "4", "--steps", "2", "--batch-size", "8",
         "--archs", "plain", "--seeds", "1", "--quiet"]


@pytest.mark.parametrize("argv,what", [(SWEEP, "depth sweep"),
                                       (["--experiment", "residual", "--quiet"],
                                        "experiment residual")], ids=["sweep", "experiment"])
@pytest.mark.parametrize("signum", [2, 15], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_a_sweep_or_experiment_wrote_leaves_nothing(tmp_path, monkeypatch,
                                                                    capsys, argv, what, signum):
    """The signal comes right after the run directory was claimed, before the first step."""
    import importlib
    import signal

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("gradflow.cli.main" if what == "depth sweep"
                                     else "gradflow.cli.experiments")
    name = "_claim" if what == "depth sweep" else "claim_dir"
    real = getattr(module, name)

    def claim_then_signal(*a, **k):
        claim = real(*a, **k)
        signal.raise_signal(signum)  # e.g. Ctrl-C while the directory is being claimed
        return claim

    monkeypatch.setattr(module, name, claim_then_signal)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert cli.main([*argv, "--out", "run"]) == 128 + signum
    assert not Path("run").exists()
    name = signal.Signals(signum).name
    assert capsys.readouterr().err.splitlines() == [
        f"gradflow: {name} received: stopping after the current step; nothing is kept (the "
        f"{what} writes its files when it ends) ({name} again quits at once)",
        f"gradflow: interrupted by {name} before the {what} wrote its files; nothing was "
        "written"]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_signal_in_a_sweeps_first_step_leaves_nothing(tmp_path, monkeypatch, capsys):
    import signal

    from gradflow.experiments import depth_sweep

    monkeypatch.chdir(tmp_path)
    real = depth_sweep.train_arch

    def signal_in_training(arch, cfg, ds, on_step=None, **kw):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the first cell builds and compiles
        return real(arch, cfg, ds, on_step, **kw)

    monkeypatch.setattr(depth_sweep, "train_arch", signal_in_training)
    assert cli.main([*SWEEP, "--out", "run"]) == 130
    assert not Path("run").exists()
    err = capsys.readouterr().err
    assert err.endswith("nothing was written\n") and "Traceback" not in err


def test_an_experiments_progress_ends_it_once_a_signal_arrived():
    """Experiments stop at their next progress event (start, step, finish or line)."""
    import io

    from gradflow.cli.experiments import StoppingLog
    from gradflow.cli.interrupt import Interrupted, StopRequest

    stop = StopRequest(io.StringIO())
    log = StoppingLog(stop, enabled=False)
    progress = log.progress(["a", "b"], 3)
    progress.start(0)
    progress.step(0)
    log.line("still running")
    stop.handle(15)
    for event in (lambda: progress.step(1), lambda: progress.finish("done"),
                  lambda: progress.start(1), lambda: log.line("x")):
        with pytest.raises(Interrupted) as exc:
            event()
        assert exc.value.signum == 15

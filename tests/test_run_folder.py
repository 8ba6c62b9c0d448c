"""A run folder is owned by one run at a time, and a finished run is replaced
only when asked (issue 22)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from showtell import training
from showtell.checkpoint import save_checkpoint
from showtell.cli import train_main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.model import CaptionModel
from showtell.runfolder import LOCK_NAME, RunFolderError, RunLock, refuse_finished_run
from showtell.text import SPECIAL_TOKENS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent


def test_a_second_run_is_refused_naming_the_first_and_the_lock_goes_with_the_run(tmp_path):
    with RunLock(str(tmp_path)):
        assert f"pid {os.getpid()} on " in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(RunFolderError, match=rf"in use by another training run \(pid {os.getpid()} on "):
            RunLock(str(tmp_path)).__enter__()
        with pytest.raises(RunFolderError, match="in use"):  # train() takes it before any work
            training.train(ModelConfig(), DataConfig(), TrainConfig(), str(tmp_path), device="cpu")
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(str(tmp_path)):
        pass


def test_a_killed_run_does_not_leave_the_folder_locked(tmp_path):
    script = ("import os, signal, sys; from showtell.runfolder import RunLock; RunLock(sys.argv[1]).__enter__(); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == -signal.SIGKILL
    assert "pid " in (tmp_path / LOCK_NAME).read_text()  # its note is left behind, its lock is not
    with RunLock(str(tmp_path)):
        assert f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()


def _run_folder(folder: Path, finished: bool) -> Path:
    model = CaptionModel.build(ModelConfig(embed_dim=8, hidden_dim=8), Vocabulary(list(SPECIAL_TOKENS) + ["a"]),
                               encoder_weights=None)
    ckpt = model.checkpoint(DataConfig(), TrainConfig())
    ckpt["training"] = {**training.new_run_state(), "finished": finished}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, str(folder / "last.pt"))
    return folder


def test_a_finished_run_is_replaced_only_when_asked(tmp_path):
    finished = _run_folder(tmp_path / "done", finished=True)
    with pytest.raises(RunFolderError, match=r"done holds a finished run .* Give --overwrite to replace it"):
        refuse_finished_run(str(finished))
    refuse_finished_run(str(finished), overwrite=True)
    refuse_finished_run(str(_run_folder(tmp_path / "half", finished=False)))  # unfinished: replaced, saying so
    refuse_finished_run(str(tmp_path / "new"))
    with pytest.raises(RunFolderError, match="finished run"):
        training.train(ModelConfig(), DataConfig(), TrainConfig(), str(finished), device="cpu")
    assert not (finished / LOCK_NAME).exists()


def test_train_command_refuses_a_finished_run_in_one_line(tmp_path, monkeypatch, capsys):
    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    (root / "Flickr8k.token.txt").write_text("x.jpg#0\ta dog\n")
    finished = _run_folder(tmp_path / "run", finished=True)
    calls = []
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append(k) or {"best_epoch": 1, "rank": 0})
    argv = ["--data-root", str(root), "--out", str(finished), "--device", "cpu"]
    assert train_main(argv) == 2 and not calls
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a finished run" in err[0] and "--overwrite" in err[0], err
    assert train_main(argv + ["--overwrite"]) == 0 and calls[0]["overwrite"] is True
    assert train_main(argv + ["--resume"]) == 0 and calls[1]["resume"] is True

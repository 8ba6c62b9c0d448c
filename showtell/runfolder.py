"""One training run per run folder, and no finished run lost by accident.

Two ``train.py`` into the same ``--out`` both exited 0 with ``last.pt`` from
one and ``best.pt`` from the other, and a new run into a finished one replaced
its ``best.pt`` after one epoch (issue 22). :class:`RunLock` holds
``OUT/.lock`` for the whole run: an exclusive ``flock`` that the kernel drops
when the process ends however it ends (a killed run never leaves the folder
stuck), with the owner's pid, host and start time written in it for the
message a second run gets. :func:`refuse_finished_run` keeps a finished run
unless the caller says ``overwrite`` (``--overwrite``) or resumes it.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time

LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """A run folder that this run may not write: in use by another run, or
    holding a finished run that would be replaced."""


class RunLock:
    """``with RunLock(out_dir):`` this process alone writes ``out_dir``.
    Raises :class:`RunFolderError` naming the owner when another process holds it."""

    def __init__(self, out_dir: str):
        self.out_dir, self.path, self._fd = out_dir, os.path.join(out_dir, LOCK_NAME), None

    def __enter__(self) -> "RunLock":
        os.makedirs(self.out_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 1000).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise RunFolderError(f"{self.out_dir} is in use by another training run ({owner}); wait for it "
                                     "to end, or choose another --out") from None
            # The holder before us may have removed the file between our open and
            # our lock: then we hold a lock on a file no one else will see.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: the next run creates a fresh one
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def refuse_finished_run(out_dir: str, overwrite: bool = False) -> None:
    """Raise :class:`RunFolderError` if ``out_dir`` holds a finished run (its
    ``last.pt`` says so) and ``overwrite`` is false."""
    from .checkpoint import CheckpointError, load_resumable

    last = os.path.join(out_dir, "last.pt")
    if overwrite or not os.path.isfile(last):
        return
    try:
        finished = bool(load_resumable(last)["training"].get("finished"))
    except CheckpointError:
        return  # not a run we can read: nothing finished to lose (training replaces it, saying so)
    if finished:
        raise RunFolderError(f"{out_dir} holds a finished run (last.pt, best.pt): a new run would replace its "
                             "best.pt. Give --overwrite to replace it, or choose another --out")

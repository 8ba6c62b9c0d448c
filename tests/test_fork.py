"""caption() in a fork()ed worker after the parent has captioned (issue 22):
multiprocessing's default start method on Linux. It hung forever with both
encoder runtimes (OpenMP's and ONNX Runtime's thread pools do not survive a
fork); the child now runs torch on one thread and makes a new ONNX session."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from showtell.onnx_encoder import available

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import multiprocessing as mp, sys
import torch
from showtell.captioner import Captioner

torch.set_num_threads(2)  # a thread pool for the fork to lose
captioners = [Captioner(None, device="cpu", runtime=r) for r in sys.argv[1:]]

def work(i):
    return captioners[i]("examples/cat.jpg")

if __name__ == "__main__":
    parent = [c("examples/cat.jpg") for c in captioners]
    with mp.get_context("fork").Pool(1) as pool:
        child = pool.map(work, range(len(captioners)))
    print(parent == child, [c.runtime for c in captioners], child)
"""


def test_caption_works_in_a_forked_worker_after_the_parent_captioned():
    runtimes = ["torch"] + (["onnxruntime"] if available() else [])
    # Its own session, so that a hung worker is killed with its parent.
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *runtimes], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the pool's worker too, should it hang
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-2000:]
    assert out.startswith(f"True {runtimes}"), out

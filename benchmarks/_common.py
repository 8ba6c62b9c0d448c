"""Shared bits of the hand-run benchmarks: where the data is, what machine ran them."""
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.environ.get("SHOWTELL_DATA", os.path.join(ROOT, "..", "shared", "data"))
FLICKR8K = os.path.join(DATA, "flickr8k")
COCO_MINI = os.path.join(DATA, "coco-mini")


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"

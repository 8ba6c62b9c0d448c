"""Peak resident memory of training on a COCO-sized feature cache against a
small one: streaming rows from disk must not grow with the dataset.

Writes synthetic caches of ResNet-101's shape (7x7x2048 float16 spatial, 2048
float32 pooled per photo: 200 KB + 8 KB) for each photo count, then in a fresh
subprocess each runs a bounded number of training steps of the attention
decoder through the real BatchSource and train_step, batches drawn over the
whole file, and reports the subprocess's peak RSS. The caches are deleted at
the end (--keep keeps them).

    python benchmarks/bench_memory.py [--photos 5000 120000] [--steps 300] [--batch-size 128]
        [--dir /tmp] [--dims 512] [--mmap]

120,000 photos take 25 GB of disk. ``--mmap`` reads the rows through
``np.load(mmap_mode="r")`` instead (the old path), for comparison.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from _common import machine

SPATIAL, CHANNELS = 49, 2048
WORDS = ("a man woman dog cat sits runs on the grass beach street with red ball table plate of food "
         "riding bike horse near water two people standing in front building").split()


def _write_npy(path: str, shape: tuple, dtype, block: np.ndarray) -> None:
    """A .npy file of ``shape`` made of ``block`` (rows) repeated: real bytes on disk, quickly."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        data, rows = block.astype(dtype).tobytes(), len(block)
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            f.write(data if n == rows else data[:n * len(data) // rows])


def write_cache(folder: str, photos: int) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    _write_npy(os.path.join(folder, "spatial.npy"), (photos, SPATIAL, CHANNELS), np.float16,
               rng.standard_normal((256, SPATIAL, CHANNELS), dtype=np.float32))
    _write_npy(os.path.join(folder, "pooled.npy"), (photos, CHANNELS), np.float32,
               rng.standard_normal((256, CHANNELS), dtype=np.float32))


def child(folder: str, photos: int, steps: int, batch_size: int, dims: int, mmap: bool) -> None:
    """Run ``steps`` training steps on the cache in ``folder``; print peak RSS (MB)."""
    from showtell.config import ModelConfig, TrainConfig
    from showtell.datasets import ImageCaptions
    from showtell.features import FeatureSet, NpyRows
    from showtell.metrics import CiderD
    from showtell.model import CaptionModel
    from showtell.text import Vocabulary
    from showtell.training import BatchSource, make_objective, make_optimisation, train_step

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    rng = np.random.default_rng(1)
    pool = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))) for _ in range(1000)]
    items = [ImageCaptions(f"{i:012d}", f"/nonexistent/{i:012d}.jpg",
                           tuple(pool[j] for j in rng.integers(0, len(pool), size=5))) for i in range(photos)]
    open_rows = (lambda p: np.load(p, mmap_mode="r")) if mmap else NpyRows
    fs = FeatureSet(items, open_rows(os.path.join(folder, "pooled.npy")),
                    open_rows(os.path.join(folder, "spatial.npy")), [])
    vocab = Vocabulary.build((c.split() for c in pool), 1)
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet101", decoder="show_attend_tell", embed_dim=dims, hidden_dim=dims,
                      attention_dim=dims)
    from showtell.decoders import build_decoder

    model = CaptionModel(cfg, vocab, _CachedFeaturesOnly(), build_decoder(cfg, len(vocab), CHANNELS))
    tcfg = TrainConfig(batch_size=batch_size)
    device = torch.device("cpu")
    source = BatchSource(model, items, fs, per_image=False, max_caption_len=20, batch_size=batch_size, seed=0,
                         device=device)
    objective = make_objective(tcfg, model, CiderD([[["a"]]]))
    opt = make_optimisation(model, tcfg, device)
    model.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    done = 0
    for batch in source.batches(0):
        train_step(model, objective, batch, opt)
        done += 1
        if done == steps:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {photos} {before:.0f} {peak:.0f} {done} {time.perf_counter() - t:.1f}")


class _CachedFeaturesOnly(torch.nn.Module):
    """Stands in for ResNet-101, whose output the cache already holds: 170 MB
    of CNN weights that no step touches would only blur the comparison."""

    def trainable(self) -> bool:
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, nargs="+", default=[5000, 120000])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dims", type=int, default=512, help="embedding / hidden / attention size of the decoder")
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--mmap", action="store_true", help="read rows through a numpy memory map (the old path)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "PHOTOS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.steps, args.batch_size, args.dims, args.mmap)
        return
    need = sum(n * (SPATIAL * CHANNELS * 2 + CHANNELS * 4) for n in args.photos)
    free = shutil.disk_usage(args.dir).free
    if need > free - (5 << 30):
        sys.exit(f"error: the caches need {need / 1e9:.1f} GB in {args.dir}, which has {free / 1e9:.1f} GB free "
                 f"(keeping 5 GB spare); pass --dir elsewhere or fewer --photos")
    print(f"machine: {machine()}")
    results, folders = {}, []
    try:
        for n in args.photos:
            folder = os.path.join(args.dir, f"showtell-bench-memory-{n}")
            folders.append(folder)
            t = time.perf_counter()
            write_cache(folder, n)
            print(f"wrote {n} photos ({n * (SPATIAL * CHANNELS * 2 + CHANNELS * 4) / 1e9:.1f} GB) "
                  f"in {time.perf_counter() - t:.0f} s")
        for n, folder in zip(args.photos, folders):
            cmd = [sys.executable, __file__, "--child", folder, str(n), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--dims", str(args.dims)] + (["--mmap"] if args.mmap else [])
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"error: the run on {n} photos failed:\n{run.stderr[-3000:]}")
            out = run.stdout
            _, photos, before, peak, steps, secs = next(l for l in out.splitlines() if l.startswith("RESULT")).split()
            results[n] = float(peak)
            print(f"{n:>7} photos: peak RSS {float(peak):.0f} MB ({float(before):.0f} MB before the first step), "
                  f"{steps} steps of {args.batch_size} in {float(secs):.0f} s, rows "
                  f"{'memory-mapped' if args.mmap else 'read with pread'}")
    finally:
        if not args.keep:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
    if len(results) >= 2:
        lo, hi = results[min(results)], results[max(results)]
        print(f"peak RSS at {max(results)} / at {min(results)} photos: {hi / lo:.3f} (target: within 1.10)")


if __name__ == "__main__":
    main()

"""Captioning speed of the bundled model (or --checkpoint) on the CPU:

1. load time of the model;
2. per-image time over the 1,000 Flickr8k test photos: one batched call
   against one call per photo (the batched path should be >= 3x faster);
3. single-photo latency of caption() at beam 3 (guided, the default, and
   unguided) against two floors: the encoder's forward pass alone, and
   load + resize + forward (what any captioner must do), as medians.

    python benchmarks/bench_caption.py [--checkpoint model.pt] [--photos 1000] [--precision float32|auto]
"""
import argparse
import statistics
import subprocess
import sys
import time

import torch
from _common import FLICKR8K, ROOT, machine

from showtell.captioner import Captioner
from showtell.decoding import autocast
from showtell.evaluation import score_captions
from showtell.datasets import read_flickr8k
from showtell.metrics import CiderD
from showtell.text import tokenize


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-root", default=FLICKR8K)
    p.add_argument("--precision", default="float32", help="float32 (caption()'s default), auto, bfloat16")
    args = p.parse_args()
    print(f"machine: {machine()}")

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from showtell import Captioner; Captioner({args.checkpoint!r})"],
                   check=True, cwd=ROOT)
    print(f"fresh process, import + model load: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    cap = Captioner(args.checkpoint, batch_size=args.batch_size, precision=args.precision)
    print(f"model load: {time.perf_counter() - t:.2f} s (target < 3 s); precision {cap.precision}")
    items = read_flickr8k(args.data_root, "test")[:args.photos]
    paths = [it.path for it in items]
    cap(paths[:4])  # warm-up

    t = time.perf_counter()
    batched = cap(paths, beam_size=3)
    per_batched = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    single = [cap(path, beam_size=3) for path in paths]
    per_single = (time.perf_counter() - t) / len(paths)
    same = sum(a == b for a, b in zip(batched, single))
    bleu = score_captions(items, [c.split() for c in batched])
    refs = [[tokenize(c) for c in it.captions] for it in items]
    cider = 100 * CiderD(refs).score([c.split() for c in batched], refs)[0]
    print(f"{len(paths)} test photos, beam 3: batched {1000 * per_batched:.1f} ms/photo, "
          f"one call per photo {1000 * per_single:.1f} ms/photo, ratio {per_single / per_batched:.2f}x "
          f"(target >= 3x); identical captions {same}/{len(paths)}")
    print("BLEU-1..4 of these captions (the caption() path, this precision): "
          + " ".join(f"{bleu[f'bleu{n}']:.2f}" for n in range(1, 5)) + f", CIDEr-D {cider:.2f}")

    photo = paths[0]
    lat, lat_plain, enc, floor = [], [], [], []
    x = cap.pixels(photo).unsqueeze(0).contiguous(memory_format=torch.channels_last)
    for _ in range(30):
        t = time.perf_counter()
        cap(photo, beam_size=3)
        lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        cap(photo, beam_size=3, guided=False)
        lat_plain.append(time.perf_counter() - t)
        with torch.inference_mode(), autocast(cap.device, cap.precision):
            t = time.perf_counter()
            cap.encoder(x)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            cap.encoder(cap.pixels(photo).unsqueeze(0).contiguous(memory_format=torch.channels_last))
            floor.append(time.perf_counter() - t)
    m = {k: 1000 * statistics.median(v) for k, v in
         (("guided", lat), ("plain", lat_plain), ("enc", enc), ("floor", floor))}
    print(f"single photo, medians: caption() beam 3 {m['guided']:.1f} ms (unguided {m['plain']:.1f} ms); "
          f"encoder forward alone {m['enc']:.1f} ms, load + resize + forward {m['floor']:.1f} ms; "
          f"caption() / (load + resize + forward) = {m['guided'] / m['floor']:.2f}x "
          f"(unguided {m['plain'] / m['floor']:.2f}x), caption() / forward = {m['guided'] / m['enc']:.2f}x")


if __name__ == "__main__":
    main()

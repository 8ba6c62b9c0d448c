"""A short check of the CUDA path on a GPU machine (run by hand; a few minutes):
caption() on the GPU in float32 (the default) and float16 (precision="auto")
against the CPU's captions of the same photos, and its speed; then, in
gpu_check.sh, AMP training, the same under torchrun (DDP), and the caption benchmark.

    python benchmarks/gpu_check.py --write-reference ref.json   # on a CPU machine
    python benchmarks/gpu_check.py --reference ref.json         # on the GPU machine
"""
import argparse
import json
import statistics
import time

import torch
from _common import FLICKR8K, machine

from showtell.captioner import Captioner
from showtell.datasets import read_flickr8k


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=100, help="the first N Flickr8k test photos")
    p.add_argument("--data-root", default=FLICKR8K)
    p.add_argument("--write-reference", metavar="JSON", help="write this machine's captions (float32) here")
    p.add_argument("--reference", metavar="JSON", help="compare with captions written on another machine")
    args = p.parse_args()
    print(f"machine: {machine()}", flush=True)
    paths = [it.path for it in read_flickr8k(args.data_root, "test")[:args.photos]]
    if args.write_reference:
        captions = Captioner()(paths)
        with open(args.write_reference, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(), "captions": dict(zip([p.split("/")[-1] for p in paths], captions))}, f)
        return
    with open(args.reference, encoding="utf-8") as f:
        ref = json.load(f)
    print(f"reference captions from: {ref['machine']}")
    reference = [ref["captions"][p.split("/")[-1]] for p in paths]
    for precision in ("float32", "auto"):
        cap = Captioner(device="cuda", precision=precision)
        cap(paths)  # warm-up: cuDNN plans each new batch shape once (seconds), then reuses the plan
        torch.cuda.synchronize()
        t = time.perf_counter()
        got = cap(paths)
        torch.cuda.synchronize()
        per_photo = (time.perf_counter() - t) / len(paths)
        single = []
        for path in paths[:20]:
            t = time.perf_counter()
            cap(path)
            torch.cuda.synchronize()
            single.append(time.perf_counter() - t)
        same = sum(a == b for a, b in zip(got, reference))
        print(f"cuda, precision {cap.precision}: {same}/{len(paths)} captions "
              f"identical to the CPU's; batched {1000 * per_photo:.1f} ms/photo, one photo "
              f"{1000 * statistics.median(single):.1f} ms (median of 20)", flush=True)
        for a, b, path in zip(got, reference, paths):
            if a != b:
                print(f"  {path.split('/')[-1]}: cuda {a!r} / cpu {b!r}")
                break
    where_the_time_goes(paths)


def where_the_time_goes(paths):
    """One batch of 64 photos through caption()'s parts, then the profiler's busiest operations."""
    cap = Captioner(device="cuda")
    batch = paths[:64]
    cap(batch)  # warm-up at this batch size

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, 1000 * (time.perf_counter() - t)

    pixels, t_load = timed(lambda: torch.stack([cap.pixels(p) for p in batch]))
    enc, t_enc = timed(lambda: cap.encode(pixels))
    _, t_guided = timed(lambda: cap.captions_of_features(enc, cap.options()))
    _, t_plain = timed(lambda: cap.captions_of_features(enc, cap.options(guided=False)))
    _, t_all = timed(lambda: cap(batch))
    print(f"one batch of {len(batch)} on cuda, ms: load + preprocess {t_load:.1f}, encode {t_enc:.1f}, "
          f"decode guided {t_guided:.1f} (unguided {t_plain:.1f}); caption() of the batch {t_all:.1f}", flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        cap(batch)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)


if __name__ == "__main__":
    main()

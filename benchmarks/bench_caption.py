"""Captioning speed of the bundled model (or --checkpoint) on the CPU:

1. load time of the model;
2. per-image time over the 1,000 Flickr8k test photos: one batched call
   against one call per photo (the batched path should be >= 3x faster);
3. single-photo latency of caption() at beam 3 (guided, the default, and
   unguided) against two floors, each with PyTorch's encoder (the reference a
   plain PyTorch captioner has) and with the one caption() runs (ONNX Runtime
   on a CPU where installed): the encoder's forward pass alone, and
   load + resize + forward (what any captioner must do), as medians; and the
   decoder's share: the decoder, beam search and tags (CaptionModel.caption on
   the photo's features) as a fraction of caption().

The decoder runs as caption() runs it (decoder_precision="auto": int8 on a
CPU). With --int8 the main figures are float32's, and the same figures for the
int8 decoder (decoder_precision="int8") are timed in the same loops so that
their ratio holds under load, with how many of its captions differ from float32's. --latency-only skips part 2
and the PyTorch-encoder comparisons (a quick look at part 3).

With ONNX Runtime running the encoder it also captions the photos, and the 80
coco-mini photos (outside Flickr8k's world), with PyTorch's encoder and counts
the captions that differ.

    python benchmarks/bench_caption.py [--checkpoint model.pt] [--photos 1000] [--precision float32|auto]
                                       [--runtime auto|torch|onnxruntime] [--mirror-average] [--repeats 30]
                                       [--int8] [--latency-only]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from _common import COCO_MINI, FLICKR8K, ROOT, machine

from showtell.captioner import Captioner
from showtell.decoding import autocast
from showtell.evaluation import score_captions
from showtell.datasets import read_flickr8k
from showtell.metrics import CiderD
from showtell.onnx_encoder import RUNTIMES
from showtell.text import tokenize


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-root", default=FLICKR8K)
    p.add_argument("--precision", default="float32", help="float32 (caption()'s default), auto, bfloat16")
    p.add_argument("--mirror-average", action="store_true",
                   help="caption from features averaged with the mirror image's (twice the encoder's work)")
    p.add_argument("--repeats", type=int, default=30, help="single-photo latency: timed calls of each kind")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the encoder (caption()'s default: auto, ONNX Runtime on a CPU where installed)")
    p.add_argument("--int8", action="store_true",
                   help="also time the int8 decoder (decoder_precision='int8') beside float32's")
    p.add_argument("--latency-only", action="store_true",
                   help="only the load time and single-photo latency (no 1,000-photo pass, no PyTorch-encoder runs)")
    args = p.parse_args()
    print(f"machine: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from showtell import Captioner; Captioner({args.checkpoint!r})"],
                   check=True, cwd=ROOT)
    print(f"fresh process, import + model load: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    cap = Captioner(args.checkpoint, batch_size=args.batch_size, precision=args.precision, runtime=args.runtime,
                    mirror_average=args.mirror_average, decoder_precision="float32" if args.int8 else "auto")
    print(f"model load: {time.perf_counter() - t:.2f} s (target < 3 s); precision {cap.precision}, "
          f"encoder runtime {cap.runtime}, decoder {cap.decoder_precision}" + (", mirror-averaged features" if cap.mirror_average else ""))
    fast = None
    if args.int8:
        t = time.perf_counter()
        fast = Captioner(args.checkpoint, batch_size=args.batch_size, precision=args.precision, runtime=args.runtime,
                         mirror_average=args.mirror_average, decoder_precision="int8")
        print(f"model load, int8 decoder: {time.perf_counter() - t:.2f} s")
    items = read_flickr8k(args.data_root, "test")[:args.photos]
    paths = [it.path for it in items]
    # warm-up; on CUDA every batch shape, since cuDNN plans each new one once (seconds on an H200)
    cap(paths if cap.device.type == "cuda" else paths[:4])
    if fast is not None:
        fast(paths[:4])
    if args.latency_only:
        latency(args, cap, fast, paths[0], None)
        return

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
    if fast is not None:
        t = time.perf_counter()
        batched_int8 = fast(paths, beam_size=3)
        per_int8 = (time.perf_counter() - t) / len(paths)
        bleu8 = score_captions(items, [c.split() for c in batched_int8])
        cider8 = 100 * CiderD(refs).score([c.split() for c in batched_int8], refs)[0]
        print(f"int8 decoder, batched {1000 * per_int8:.1f} ms/photo ({per_batched / per_int8:.2f}x float32's); "
              f"captions that differ from float32's {sum(a != b for a, b in zip(batched, batched_int8))}/{len(paths)}; "
              "BLEU-1..4 " + " ".join(f"{bleu8[f'bleu{n}']:.2f}" for n in range(1, 5)) + f", CIDEr-D {cider8:.2f}")
    reference = None
    if cap.runtime != "torch":
        reference = Captioner(args.checkpoint, batch_size=args.batch_size, precision=args.precision, runtime="torch",
                              mirror_average=args.mirror_average, decoder_precision=cap.decoder_precision)
        differ = sum(a != b for a, b in zip(batched, reference(paths, beam_size=3)))
        coco = [os.path.join(COCO_MINI, "train2017", name)
                for name in sorted(os.listdir(os.path.join(COCO_MINI, "train2017")))]
        coco_differ = sum(a != b for a, b in zip(cap(coco, beam_size=3), reference(coco, beam_size=3)))
        print(f"captions that differ from those with PyTorch's encoder: {differ}/{len(paths)} Flickr8k test, "
              f"{coco_differ}/{len(coco)} coco-mini")

    latency(args, cap, fast, paths[0], reference)


def latency(args, cap, fast, photo, reference):
    """Part 3: single-photo medians, every kind timed in one interleaved loop."""
    times = {k: [] for k in ("guided", "plain", "enc", "floor", "enc_rt", "floor_rt", "torch_guided", "decode",
                             "guided8", "plain8", "decode8")}

    def timed(key, fn):
        t = time.perf_counter()
        fn()
        if cap.device.type == "cuda":
            torch.cuda.synchronize()
        times[key].append(time.perf_counter() - t)

    def torch_forward(x):
        with torch.inference_mode(), autocast(cap.device, cap.precision):
            cap.encoder(x.unsqueeze(0).to(cap.device).contiguous(memory_format=torch.channels_last))

    x = cap.pixels(photo)
    with torch.inference_mode():
        enc = cap.encode(x.unsqueeze(0))
    feats, guided_opts = enc.for_decoder(cap.model.feature_kind), cap.options(beam_size=3)

    def decode(precision):
        # everything caption() does after the encoder: tags, constraints, beam search
        with torch.inference_mode():
            cap.model.caption(feats, guided_opts, enc.pooled, precision=cap.precision, decoder_precision=precision)

    decode(cap.decoder_precision)  # warm-up (int8: makes its steps)
    if fast is not None:
        decode("int8")
    for _ in range(args.repeats):
        timed("guided", lambda: cap(photo, beam_size=3))
        timed("plain", lambda: cap(photo, beam_size=3, guided=False))
        timed("decode", lambda: decode(cap.decoder_precision))
        if fast is not None:
            timed("guided8", lambda: fast(photo, beam_size=3))
            timed("plain8", lambda: fast(photo, beam_size=3, guided=False))
            timed("decode8", lambda: decode("int8"))
        timed("enc", lambda: torch_forward(x))
        timed("floor", lambda: torch_forward(cap.pixels(photo)))
        timed("enc_rt", lambda: cap.encode(x.unsqueeze(0)))
        timed("floor_rt", lambda: cap.encode(cap.pixels(photo).unsqueeze(0)))
        if reference is not None:  # interleaved, so both runtimes see the same machine load
            timed("torch_guided", lambda: reference(photo, beam_size=3))
    m = {k: 1000 * statistics.median(v) for k, v in times.items() if v}
    print(f"single photo, medians: caption() beam 3 {m['guided']:.1f} ms (unguided {m['plain']:.1f} ms)"
          + (f"; with PyTorch's encoder, timed in the same loop: {m['torch_guided']:.1f} ms" if reference else ""))
    own = f"caption()'s ({cap.runtime}{', both passes of mirror averaging' if cap.mirror_average else ''})"
    for name, enc, floor in (("PyTorch", "enc", "floor"), (own, "enc_rt", "floor_rt")):
        print(f"  against {name} encoder: forward alone {m[enc]:.1f} ms, load + resize + forward {m[floor]:.1f} ms; "
              f"caption() / (load + resize + forward) = {m['guided'] / m[floor]:.2f}x "
              f"(unguided {m['plain'] / m[floor]:.2f}x), caption() / forward = {m['guided'] / m[enc]:.2f}x")
        if fast is not None:
            print(f"    int8 decoder: caption() / (load + resize + forward) = {m['guided8'] / m[floor]:.2f}x "
                  f"(unguided {m['plain8'] / m[floor]:.2f}x)")
    print(f"  decoder's share (tags, constraints, beam search: CaptionModel.caption on the photo's features): "
          f"{m['decode']:.1f} ms of {m['guided']:.1f} ms, {100 * m['decode'] / m['guided']:.0f} %")
    if fast is not None:
        print(f"  int8 decoder: caption() beam 3 {m['guided8']:.1f} ms (unguided {m['plain8']:.1f} ms); decoder "
              f"{m['decode8']:.1f} ms, {100 * m['decode8'] / m['guided8']:.0f} % of caption(); decoder "
              f"{m['decode'] / m['decode8']:.2f}x faster than float32's, caption() {m['guided'] / m['guided8']:.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

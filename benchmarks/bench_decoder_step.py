"""Where beam search's time goes on a CPU, and what the fused inference steps
(showtell.decoders.FusedAttendSteps) save, for the bundled model (or --checkpoint):

1. one matrix product of the decoder's sizes at 1 and 3 rows (beam 3's
   hypotheses), through F.linear (MKL) and through showtell's _linear (oneDNN on
   a CPU), as medians;
2. beam search (beam 3, unguided) of one photo at a time over --photos Flickr8k
   test photos, through the decoder's own steps and through decoding_steps():
   medians, their ratio, and how many captions are identical;
3. the floor those products set in float32: a fused step's two products at 3
   rows (the stacked hidden-state matrices and the LSTM's context weights),
   the megabytes of weights they read per word and the rate that implies,
   and the products alone per photo (steps per photo x their time) against
   the whole beam search.

    python benchmarks/bench_decoder_step.py [--checkpoint model.pt] [--photos 100]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import FLICKR8K, machine

from showtell.captioner import Captioner
from showtell.datasets import read_flickr8k
from showtell.decoders import _linear
from showtell.decoding import DecodeOptions, beam_search


def median_ms(fn, repeat: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--data-root", default=FLICKR8K)
    args = p.parse_args()
    print(f"machine: {machine()}")
    cap = Captioner(args.checkpoint)
    dec, v = cap.model.decoder, cap.vocab
    if dec.decoding_steps() is not dec:
        raise SystemExit("run outside inference mode")

    with torch.inference_mode():
        print("one matrix product, medians (ms): F.linear (MKL) / _linear (oneDNN on a CPU)")
        weights = {"LSTM input (4H x E+D)": dec.cell.weight_ih, "LSTM recurrent (4H x H)": dec.cell.weight_hh,
                   "output (V x H)": dec.out.weight}
        for name, w in weights.items():
            row = []
            for rows in (1, 3):
                x = torch.randn(rows, w.size(1))
                mkl, onednn = median_ms(lambda: F.linear(x, w)), median_ms(lambda: _linear(x, w))
                row.append(f"{rows} row{'s' if rows > 1 else ''} {mkl:.3f} / {onednn:.3f}")
            print(f"  {name:26s} " + ", ".join(row))

        items = read_flickr8k(args.data_root, "test")[:args.photos]
        feats = cap.encode(torch.stack([cap.pixels(it.path) for it in items])).for_decoder(cap.model.feature_kind)
        opts = DecodeOptions(beam_size=3)
        fused = dec.decoding_steps()
        results = {}
        for name, steps in (("decoder", dec), ("fused", fused)):
            times, captions = [], []
            for i in range(len(items)):
                t = time.perf_counter()
                hyps = beam_search(steps, feats[i:i + 1], opts, v.end_id, v.start_id, v.unk_id)
                times.append(time.perf_counter() - t)
                captions.append(hyps[0][0].tokens)
            results[name] = (1000 * statistics.median(times), captions)
        (slow, a), (fast, b) = results["decoder"], results["fused"]
        same = sum(x == y for x, y in zip(a, b))
        print(f"beam 3, one photo at a time, {len(items)} test photos, medians: decoder's steps {slow:.1f} ms, "
              f"fused steps {fast:.1f} ms, {slow / fast:.2f}x faster; identical captions {same}/{len(items)}")

        steps = []
        counting = _CountSteps(fused)
        for i in range(len(items)):
            counting.calls = 0
            beam_search(counting, feats[i:i + 1], opts, v.end_id, v.start_id, v.unk_id)
            steps.append(counting.calls)
        h3 = torch.randn(3, fused.hidden_weight.size(1))
        c3 = torch.randn(3, fused.context_weight.size(1))
        stacked = median_ms(lambda: _linear(h3, fused.hidden_weight, fused.hidden_bias))
        context = median_ms(lambda: _linear(c3, fused.context_weight))
        mb = (fused.hidden_weight.numel() + fused.context_weight.numel()) * 4 / 1e6
        per_photo = statistics.median(steps) * (stacked + context)
        print(f"float32 floor: a fused step's products at 3 rows {stacked:.3f} + {context:.3f} ms, reading "
              f"{mb:.1f} MB of weights ({mb / (stacked + context):.1f} GB/s); median {statistics.median(steps):.0f} "
              f"steps a photo -> products alone {per_photo:.1f} ms, {100 * per_photo / fast:.0f} % of the fused "
              f"beam search")


class _CountSteps:
    """Decoding steps that count how often ``step`` runs."""

    def __init__(self, steps):
        self.steps, self.calls = steps, 0
        self.init_state, self.reorder_state = steps.init_state, steps.reorder_state

    def step(self, tokens, state):
        self.calls += 1
        return self.steps.step(tokens, state)


if __name__ == "__main__":
    main()

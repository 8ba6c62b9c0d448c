"""Time of one training epoch on Flickr8k's training split, through the very
functions ``train()`` runs (BatchSource, the objective, ``train_step``), on
cached EfficientNet-Lite0 features (built first if missing).

    python benchmarks/bench_train_epoch.py [--decoder show_tell|show_attend_tell]
        [--objective xe|scst] [--in-ram] [--max-batches N]

``--in-ram`` copies the split's features into memory first (the pre-0.2 path)
instead of streaming rows from the memory-mapped cache, to compare the two.
"""
import argparse
import statistics
import time

import numpy as np
import torch
from _common import FLICKR8K, machine

from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import load_split
from showtell.features import FeatureCache, FeatureSet
from showtell.metrics import CiderD
from showtell.model import CaptionModel
from showtell.text import Vocabulary, tokenize
from showtell.training import BatchSource, make_objective, make_optimisation, train_step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--decoder", default="show_tell")
    p.add_argument("--objective", default="xe", choices=["xe", "scst"])
    p.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's (128)")
    p.add_argument("--in-ram", action="store_true", help="copy the features into memory first")
    p.add_argument("--max-batches", type=int, default=0, help="stop after N batches (0: the whole epoch)")
    p.add_argument("--data-root", default=FLICKR8K)
    args = p.parse_args()
    tcfg = TrainConfig(objective=args.objective, **({"batch_size": args.batch_size} if args.batch_size else {}))
    items = load_split(DataConfig(data_root=args.data_root), "train")
    vocab = Vocabulary.build((tokenize(c) for it in items for c in it.captions), 5)
    torch.manual_seed(0)
    model = CaptionModel.build(ModelConfig(decoder=args.decoder), vocab)
    fs = FeatureCache().get("flickr8k", "train", items, model.encoder, progress=False)
    if args.in_ram:
        fs = FeatureSet(fs.items, np.array(fs.pooled), np.array(fs.spatial), fs.skipped)
    device = torch.device("cpu")
    source = BatchSource(model, fs.items, fs, per_image=args.objective == "scst", max_caption_len=40,
                         batch_size=tcfg.batch_size, seed=0, device=device)
    cider = CiderD([[tokenize(c) for c in it.captions] for it in fs.items])
    objective = make_objective(tcfg, model, cider)
    opt = make_optimisation(model, tcfg, device)
    model.train()
    step_times, items_done = [], 0
    t0 = time.perf_counter()
    batches = source.batches(0)
    while True:
        t = time.perf_counter()
        batch = next(batches, None)  # reading the rows is part of the step's cost
        if batch is None or (args.max_batches and len(step_times) == args.max_batches):
            break
        train_step(model, objective, batch, opt)
        step_times.append(time.perf_counter() - t)
        items_done += batch.size
    total = time.perf_counter() - t0
    unit = "images" if args.objective == "scst" else "captions"
    print(f"machine: {machine()}")
    print(f"decoder {args.decoder}, objective {args.objective}, features {'in RAM' if args.in_ram else 'streamed'}: "
          f"{items_done} {unit}, {len(step_times)} steps of {tcfg.batch_size}")
    print(f"epoch {total:.1f} s, median step {1000 * statistics.median(step_times):.0f} ms, "
          f"{items_done / total:.0f} {unit}/s")


if __name__ == "__main__":
    main()

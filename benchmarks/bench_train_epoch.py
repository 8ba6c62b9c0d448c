"""Time of one decoder training epoch over the 30,000 Flickr8k training
captions, on cached EfficientNet-Lite0 features (built first if missing).

    python benchmarks/bench_train_epoch.py [--decoder show_tell|show_attend_tell]
"""
import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import FLICKR8K, machine

from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import load_split
from showtell.features import FeatureCache
from showtell.model import CaptionModel
from showtell.text import Vocabulary, tokenize
from showtell.training import encode_captions, epoch_batches


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--decoder", default="show_tell")
    p.add_argument("--data-root", default=FLICKR8K)
    args = p.parse_args()
    mcfg, tcfg = ModelConfig(decoder=args.decoder), TrainConfig()
    items = load_split(DataConfig(data_root=args.data_root), "train")
    vocab = Vocabulary.build((tokenize(c) for it in items for c in it.captions), 5)
    torch.manual_seed(0)
    model = CaptionModel.build(mcfg, vocab)
    fs = FeatureCache().get("flickr8k", "train", items, model.encoder, progress=False)
    feats = torch.from_numpy(np.array(fs.for_decoder(model.decoder.feature_kind)))
    caps, lengths, image_of = encode_captions(fs.items, vocab, 40)
    opt = torch.optim.Adam(model.decoder.parameters(), lr=tcfg.lr)
    model.decoder.train()
    step_times = []
    t0 = time.perf_counter()
    for rows in epoch_batches(lengths, tcfg.batch_size, 0, 0):
        t = time.perf_counter()
        c = caps[rows, :int(lengths[rows].max())]
        logits = model.decoder(feats[image_of[rows]].float(), c)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), c[:, 1:].reshape(-1), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), tcfg.grad_clip)
        opt.step()
        step_times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    print(f"machine: {machine()}")
    print(f"decoder {args.decoder}: {len(caps)} captions, {len(step_times)} steps of {tcfg.batch_size}")
    print(f"epoch {total:.1f} s (target < 60 s), median step {1000 * statistics.median(step_times):.0f} ms, "
          f"{len(caps) / total:.0f} captions/s")


if __name__ == "__main__":
    main()

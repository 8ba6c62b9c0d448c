"""Guided captioning, measured: captions with and without the encoder's
ImageNet tags as constraints (showtell.guidance, showtell.constrained), on
Flickr8k val (to calibrate the threshold), Flickr8k test (in domain) and
coco-mini's 80 photos (out of domain).

    python benchmarks/bench_guidance.py                      # val sweep + test and coco-mini table
    python benchmarks/bench_guidance.py --sets coco --thresholds 0.3,0.5,0.7

Decoding is caption()'s default (beam 3, max 20 words) on the encoder features
of the feature cache (the real one, ~/.cache/showtell or $SHOWTELL_CACHE: Flickr8k's
are there after training; coco-mini's 80 are computed once). The tags come from
the encoder's own ImageNet head on the cached pooled rows: the same forward
pass's numbers. Each image is decoded twice by CaptionModel.caption (caption()'s
own call), once plain and once guided at the lowest threshold asked for
(constrained to its most probable word tag when that is probable enough); a
threshold t then picks, per image, the
constrained caption when that tag's probability is >= t: exactly what
caption(guidance_threshold=t) gives, since a batch decodes each image as it
would alone (tests/test_constrained.py), without re-decoding for every t.

Reported per set and threshold: BLEU-4, CIDEr-D (and METEOR in the final
table, which starts a JVM), how many captions were guided, the share of guided
captions whose required word one of the photo's references uses
("precision"), and the share of photos whose caption names an object that
one of its references names ("objects named"). An *object word* is a caption
word that some ImageNet class maps to (the word sets of the model's guidance
map: "cat/cats", "dog/dogs", "coffee", "bike/bikes/bicycle/bicycles"...); a
caption names an object of its references when it holds a word of some word
set that one of the references also holds a word of.
"""
import argparse
import hashlib
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from _common import DATA, FLICKR8K, ROOT, machine

from showtell.captioner import BUNDLED_MODEL, GUIDANCE_THRESHOLD
from showtell.config import DataConfig
from showtell.datasets import load_split
from showtell.decoding import DecodeOptions
from showtell.features import FeatureCache, split_features
from showtell.metrics import coco_caption_scores
from showtell.model import CaptionModel
from showtell.text import tokenize

COCO_MINI = os.path.join(DATA, "coco-mini")
SETS = {  # name: (data config, split)
    "val": (DataConfig(dataset="flickr8k", data_root=FLICKR8K), "val"),
    "test": (DataConfig(dataset="flickr8k", data_root=FLICKR8K), "test"),
    "coco": (DataConfig(dataset="coco", annotations=os.path.join(COCO_MINI, "annotations", "captions_train2017.json"),
                        image_root=os.path.join(COCO_MINI, "train2017")), "train"),
}


def decode(model, feats, pooled, opts: DecodeOptions, batch_size: int = 100) -> tuple[list[str], list]:
    """Best caption of each row of cached decoder features, in float32, by
    CaptionModel.caption (caption()'s own call), and each row's word tags."""
    out, tags = [], []
    for i in range(0, len(feats), batch_size):
        x = torch.from_numpy(np.array(feats[i:i + batch_size], dtype=np.float32))
        p = torch.from_numpy(np.array(pooled[i:i + batch_size], dtype=np.float32))
        for found in model.caption(x, opts, p):
            out.append(" ".join(model.vocab.decode(found.hypotheses[0].tokens)))
            tags.append(found.tags)
    return out, tags


def object_sets(model) -> list[set[str]]:
    return [set(ws) for ws in dict.fromkeys(model.guidance.words) if ws]


def names_reference_object(caption: list[str], refs: list[list[str]], sets: list[set[str]]) -> bool:
    said = set(caption)
    ref_words = set(w for r in refs for w in r)
    return any(s & said and s & ref_words for s in sets)


def run_set(model, name: str, opts: DecodeOptions, out: str, min_threshold: float) -> dict:
    """Plain and guided captions of one set (cached in ``out``), with each image's top tag."""
    cfg, split = SETS[name]
    path = os.path.join(out, f"{name}.json")
    items = load_split(cfg, split)
    fs = split_features(model.encoder, cfg.dataset, split, items, FeatureCache(), progress=True)
    # The kept captions hold only for the same photos, guidance map and decoding options.
    digest = hashlib.sha256(json.dumps([model.guidance.to_dict(), repr(opts)]).encode()).hexdigest()[:16]
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if (saved["image_ids"] == [it.image_id for it in fs.items] and saved["min_threshold"] <= min_threshold
                and saved.get("digest") == digest):
            return {**saved, "refs": [[tokenize(c) for c in it.captions] for it in fs.items]}
    feats = fs.for_decoder(model.feature_kind)
    t = time.perf_counter()
    plain, tags = decode(model, feats, fs.pooled, opts)
    t_plain = time.perf_counter() - t
    # Guided at the lowest threshold: each photo whose top tag is that probable
    # gets its constrained caption, the others their plain one.
    t = time.perf_counter()
    guided, _ = decode(model, feats, fs.pooled, replace(opts, guidance_threshold=min_threshold))
    t_guided = time.perf_counter() - t
    rows = [i for i, top in enumerate(tags) if top and top[0].prob >= min_threshold]
    print(f"{name}: {len(items)} photos; plain decoding {t_plain:.0f} s, guided at {min_threshold} "
          f"({len(rows)} constrained) {t_guided:.0f} s")
    saved = {"image_ids": [it.image_id for it in fs.items], "min_threshold": min_threshold, "digest": digest,
             "plain": plain, "guided": guided,
             "top_tag": [list(t[0].words) if t else [] for t in tags],
             "top_prob": [t[0].prob if t else 0.0 for t in tags],
             "top_classes": [list(t[0].classes) if t else [] for t in tags]}
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(saved, f, indent=0)
    return {**saved, "refs": [[tokenize(c) for c in it.captions] for it in fs.items]}


def at_threshold(r: dict, threshold: float | None) -> tuple[list[list[str]], list[int]]:
    """Captions that caption(guidance_threshold=threshold) gives, and which were guided."""
    guided = [] if threshold is None else [i for i, p in enumerate(r["top_prob"]) if p >= threshold]
    chosen = set(guided)
    return [(r["guided"] if i in chosen else r["plain"])[i].split() for i in range(len(r["plain"]))], guided


def measure(model, r: dict, threshold: float | None, meteor: bool) -> dict:
    caps, guided = at_threshold(r, threshold)
    s = coco_caption_scores(r["refs"], caps, meteor=meteor)
    ref_words = [set(w for ref in refs for w in ref) for refs in r["refs"]]
    hits = sum(1 for i in guided if set(r["top_tag"][i]) & ref_words[i])
    sets = object_sets(model)
    named = sum(names_reference_object(c, refs, sets) for c, refs in zip(caps, r["refs"]))
    return {"threshold": threshold, "bleu4": s["bleu4"], "cider": s["cider"], "meteor": s["meteor"],
            "guided": len(guided), "precision": hits / len(guided) if guided else None,
            "objects_named": named / len(caps), "photos": len(caps)}


def fmt(m: dict) -> str:
    meteor = f"{m['meteor']:6.2f}" if m["meteor"] is not None else "     -"
    prec = f"{100 * m['precision']:5.1f}%" if m["precision"] is not None else "     -"
    thr = "off" if m["threshold"] is None else f"{m['threshold']:.2f}"
    return (f"  {thr:>5}  BLEU-4 {m['bleu4']:6.2f}  CIDEr-D {m['cider']:6.2f}  METEOR {meteor}  "
            f"guided {m['guided']:4d}/{m['photos']}  precision {prec}  objects named {100 * m['objects_named']:5.1f}%")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=BUNDLED_MODEL)
    p.add_argument("--sets", default="val,test,coco", help="of: " + ",".join(SETS))
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="the sweep")
    p.add_argument("--threshold", type=float, default=GUIDANCE_THRESHOLD,
                   help="the one for the final table (default: caption()'s)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "guidance"), help="captions are kept here")
    p.add_argument("--no-meteor", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}")
    torch.set_grad_enabled(False)
    model = CaptionModel.from_checkpoint(args.checkpoint)
    opts = DecodeOptions(beam_size=3, n_best=1, max_len=20)  # caption()'s defaults
    thresholds = [float(t) for t in args.thresholds.split(",")]
    table = {}
    for name in args.sets.split(","):
        r = run_set(model, name, opts, args.out, min(thresholds + [args.threshold]))
        print(f"{name}: sweep (METEOR only in the final table)")
        for t in [None] + thresholds:
            print(fmt(measure(model, r, t, meteor=False)))
        if name != "val":  # val calibrates; test and coco-mini are the table
            table[name] = [measure(model, r, t, meteor=not args.no_meteor) for t in (None, args.threshold)]
    if table:
        print(f"\nfinal table (threshold {args.threshold}):")
        for name, rows in table.items():
            print(name)
            for m in rows:
                print(fmt(m))
        with open(os.path.join(args.out, "table.json"), "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()

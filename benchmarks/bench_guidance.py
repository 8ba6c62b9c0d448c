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
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from _common import DATA, FLICKR8K, ROOT, machine

from showtell.captioner import BUNDLED_MODEL, GUIDANCE_THRESHOLD
from showtell.checkpoint import read_checkpoint, save_checkpoint
from showtell.config import DataConfig
from showtell.datasets import dataset_config, load_split
from showtell.decoding import DecodeOptions
from showtell.features import FeatureCache, split_features
from showtell.metrics import coco_caption_scores
from showtell.model import CaptionModel
from showtell.text import tokenize

COCO_MINI = os.path.join(DATA, "coco-mini")
COCO_2733 = dataset_config(os.path.join(DATA, "coco-2733"), DataConfig())
SETS = {  # name: (data config, split)
    "val": (DataConfig(dataset="flickr8k", data_root=FLICKR8K), "val"),
    "test": (DataConfig(dataset="flickr8k", data_root=FLICKR8K), "test"),
    "coco-val": (COCO_2733, "val"),
    "coco-test": (COCO_2733, "test"),
    "coco": (DataConfig(dataset="coco", annotations=os.path.join(COCO_MINI, "annotations", "captions_train2017.json"),
                        image_root=os.path.join(COCO_MINI, "train2017")), "train"),
}


def decode(model, feats, pooled, opts: DecodeOptions, batch_size: int = 100) -> tuple[list[str], list, list]:
    """Best caption of each row of cached decoder features, in float32, by
    CaptionModel.caption (caption()'s own call), each row's word tags and the
    caption's mean log-probability per word."""
    out, tags, lp = [], [], []
    for i in range(0, len(feats), batch_size):
        x = torch.from_numpy(np.array(feats[i:i + batch_size], dtype=np.float32))
        p = torch.from_numpy(np.array(pooled[i:i + batch_size], dtype=np.float32))
        for found in model.caption(x, opts, p):
            out.append(" ".join(model.vocab.decode(found.hypotheses[0].tokens)))
            tags.append(found.tags)
            lp.append(found.hypotheses[0].mean_logprob)
    return out, tags, lp


def object_sets(model) -> list[set[str]]:
    return [set(ws) for ws in dict.fromkeys(model.guidance.words) if ws]


def names_reference_object(caption: list[str], refs: list[list[str]], sets: list[set[str]]) -> bool:
    said = set(caption)
    ref_words = set(w for r in refs for w in r)
    return any(s & said and s & ref_words for s in sets)


def run_set(model, name: str, opts: DecodeOptions, out: str, min_threshold: float, model_hash: str) -> dict:
    """Plain and guided captions of one set (cached in ``out``), with each image's top tag."""
    cfg, split = SETS[name]
    path = os.path.join(out, f"{model_hash[:12]}-{name}.json")
    items = load_split(cfg, split)
    fs = split_features(model.encoder, cfg.dataset, split, items, FeatureCache(), progress=True)
    # The kept captions hold only for the same photos, guidance map and decoding options.
    digest = hashlib.sha256(json.dumps([model_hash, model.guidance.to_dict(), repr(opts)]).encode()).hexdigest()[:16]
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if (saved["image_ids"] == [it.image_id for it in fs.items] and saved["min_threshold"] <= min_threshold
                and saved.get("digest") == digest):
            return {**saved, "refs": [[tokenize(c) for c in it.captions] for it in fs.items]}
    feats = fs.for_decoder(model.feature_kind)
    t = time.perf_counter()
    plain, tags, plain_lp = decode(model, feats, fs.pooled, replace(opts, guidance_threshold=None))
    t_plain = time.perf_counter() - t
    # Guided at the lowest threshold: each photo whose top tag is that probable
    # gets its constrained caption, the others their plain one; none set aside
    # (at_threshold applies a fallback margin afterwards, from the log-probabilities).
    t = time.perf_counter()
    guided, _, guided_lp = decode(model, feats, fs.pooled, replace(opts, guidance_threshold=min_threshold,
                                                                   guidance_fallback=None))
    t_guided = time.perf_counter() - t
    rows = [i for i, top in enumerate(tags) if top and top[0].prob >= min_threshold]
    print(f"{name}: {len(items)} photos; plain decoding {t_plain:.0f} s, guided at {min_threshold} "
          f"({len(rows)} constrained) {t_guided:.0f} s")
    saved = {"image_ids": [it.image_id for it in fs.items], "min_threshold": min_threshold, "digest": digest,
             "plain": plain, "guided": guided, "plain_lp": plain_lp, "guided_lp": guided_lp,
             "top_tag": [list(t[0].words) if t else [] for t in tags],
             "top_prob": [t[0].prob if t else 0.0 for t in tags],
             "top_classes": [list(t[0].classes) if t else [] for t in tags]}
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(saved, f, indent=0)
    return {**saved, "refs": [[tokenize(c) for c in it.captions] for it in fs.items]}


def at_threshold(r: dict, threshold: float | None, fallback: float | None = None) -> tuple[list[list[str]], list[int]]:
    """Captions that caption(guidance_threshold=threshold, guidance_fallback=fallback)
    gives, and which were guided (not set aside)."""
    guided = [] if threshold is None else [
        i for i, p in enumerate(r["top_prob"])
        if p >= threshold and (fallback is None or r["guided_lp"][i] >= r["plain_lp"][i] - fallback)]
    chosen = set(guided)
    return [(r["guided"] if i in chosen else r["plain"])[i].split() for i in range(len(r["plain"]))], guided


def measure(model, r: dict, threshold: float | None, meteor: bool, fallback: float | None = None) -> dict:
    caps, guided = at_threshold(r, threshold, fallback)
    s = coco_caption_scores(r["refs"], caps, meteor=meteor)
    ref_words = [set(w for ref in refs for w in ref) for refs in r["refs"]]
    hits = sum(1 for i in guided if set(r["top_tag"][i]) & ref_words[i])
    sets = object_sets(model)
    named = sum(names_reference_object(c, refs, sets) for c, refs in zip(caps, r["refs"]))
    return {"threshold": threshold, "fallback": fallback, "bleu4": s["bleu4"], "cider": s["cider"], "meteor": s["meteor"],
            "guided": len(guided), "precision": hits / len(guided) if guided else None,
            "objects_named": named / len(caps), "photos": len(caps)}


def fmt(m: dict) -> str:
    meteor = f"{m['meteor']:6.2f}" if m["meteor"] is not None else "     -"
    prec = f"{100 * m['precision']:5.1f}%" if m["precision"] is not None else "     -"
    thr = "off" if m["threshold"] is None else f"{m['threshold']:.2f}"
    fb = "-" if m.get("fallback") is None else f"{m['fallback']:.2f}"
    return (f"  {thr:>5} {fb:>5}  BLEU-4 {m['bleu4']:6.2f}  CIDEr-D {m['cider']:6.2f}  METEOR {meteor}  "
            f"guided {m['guided']:4d}/{m['photos']}  precision {prec}  objects named {100 * m['objects_named']:5.1f}%")


def parse_fallbacks(text: str) -> list[float | None]:
    return [None if f.strip() in ("none", "off", "") else float(f) for f in text.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=BUNDLED_MODEL)
    p.add_argument("--sets", default="val,coco-val,test,coco-test,coco", help="of: " + ",".join(SETS))
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="the sweep")
    p.add_argument("--fallbacks", default="none,0.25,0.5,0.75,1,1.5,2",
                   help="the sweep of guidance_fallback (none: never set a guided caption aside)")
    p.add_argument("--threshold", type=float, default=None,
                   help="the one for the final table (default: the best on the val sets, else caption()'s)")
    p.add_argument("--fallback", default=None, help="the one for the final table (default: as --threshold)")
    p.add_argument("--store", action="store_true",
                   help="write the pair chosen on the val sets into the checkpoint's calibration "
                        "(guidance_threshold, guidance_fallback), which caption() and evaluate then use")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "guidance"), help="captions are kept here")
    p.add_argument("--no-meteor", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}")
    torch.set_grad_enabled(False)
    model = CaptionModel.from_checkpoint(args.checkpoint)
    with open(args.checkpoint, "rb") as f:
        model_hash = hashlib.sha256(f.read()).hexdigest()
    opts = DecodeOptions(beam_size=3, n_best=1, max_len=20)  # caption()'s defaults
    thresholds = [float(t) for t in args.thresholds.split(",")]
    fallbacks = parse_fallbacks(args.fallbacks)
    names = args.sets.split(",")
    results = {name: run_set(model, name, opts, args.out, min(thresholds + [args.threshold or 1.0]), model_hash)
               for name in names}
    val_names = [n for n in names if n.endswith("val")]
    sweep = {}  # (threshold, fallback) -> mean val CIDEr-D
    for name in names:
        print(f"{name}: sweep of threshold x fallback (METEOR only in the final table)")
        print(fmt(measure(model, results[name], None, meteor=False)))
        for t in thresholds:
            for fb in fallbacks:
                m = measure(model, results[name], t, meteor=False, fallback=fb)
                print(fmt(m))
                if name in val_names:
                    sweep.setdefault((t, fb), []).append(m["cider"])
    threshold, fallback = args.threshold, parse_fallbacks(args.fallback)[0] if args.fallback else None
    if sweep:
        plain = np.mean([measure(model, results[n], None, meteor=False)["cider"] for n in val_names])
        (best_t, best_fb), scores = max(sweep.items(), key=lambda kv: (np.mean(kv[1]), kv[0][0]))
        print(f"\nchosen on {'+'.join(val_names)} (mean CIDEr-D): threshold {best_t}, fallback {best_fb}: "
              f"{np.mean(scores):.2f} (unguided {plain:.2f})")
        if threshold is None:
            threshold, fallback = best_t, (best_fb if args.fallback is None else fallback)
        if args.store:
            store_calibration(args.checkpoint, best_t, best_fb)
    threshold = GUIDANCE_THRESHOLD if threshold is None else threshold
    table = {}
    for name in names:
        if name not in val_names:  # val calibrates; the others are the table
            table[name] = [measure(model, results[name], t, meteor=not args.no_meteor, fallback=fb)
                           for t, fb in ((None, None), (threshold, None), (threshold, fallback))]
    if table:
        print(f"\nfinal table (threshold {threshold}, fallback {fallback}):")
        for name, rows in table.items():
            print(name)
            for m in rows:
                print(fmt(m))
        with open(os.path.join(args.out, "table.json"), "w") as f:
            json.dump(table, f, indent=1)


def store_calibration(path: str, threshold: float, fallback: float | None) -> None:
    """Write the chosen guidance settings into the checkpoint's calibration
    (a fallback of None is stored as its absence)."""
    record = read_checkpoint(path)
    calibration = {k: v for k, v in record.calibration.items() if k != "guidance_fallback"}
    calibration["guidance_threshold"] = float(threshold)
    if fallback is not None:
        calibration["guidance_fallback"] = float(fallback)
    save_checkpoint(dataclasses.replace(record, calibration=calibration), path)
    print(f"stored in {path}: {calibration}")


if __name__ == "__main__":
    main()

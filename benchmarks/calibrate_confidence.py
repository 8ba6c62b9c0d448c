"""Calibrate the web page's "not sure" signal (showtell/confidence.py).

Captions photos the model knows (the val splits of the datasets it was trained
on, in domain) and photos unlike them (examples/, seeded random noise images,
and coco-mini's 80 for a model that saw no COCO) with the page's defaults (beam 3, 3 captions), then prints for every
candidate signal the AUC (how often an in-domain photo scores above an
out-of-domain one) overall and per group, and for the kept signal the
threshold with the best balanced accuracy and the accuracy per group there.

    python benchmarks/calibrate_confidence.py [--checkpoint model.pt] [--val 1000] [--noise 40] [--store]

``--store`` writes the chosen threshold into the checkpoint (its calibration),
where caption(), the CLI and the page read it.
"""
import argparse
import glob
import os
import time

import numpy as np
from _common import DATA, FLICKR8K, ROOT, machine
from PIL import Image

from showtell.captioner import Captioner
from showtell.confidence import SIGNAL, THRESHOLD, signals


def noise_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Three kinds of noise: uniform RGB, smooth blobs (upsampled noise), stripes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        elif kind == 1:
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            a = np.asarray(Image.fromarray(small).resize((224, 224), Image.BICUBIC))
        else:
            a = np.repeat(rng.integers(0, 256, (1, 224, 3), dtype=np.uint8), 224, axis=0)
        out.append(Image.fromarray(a))
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """The threshold (midpoint between neighbouring values) with the highest
    balanced accuracy, and that accuracy."""
    values = np.unique(np.concatenate([pos, neg]))
    cuts = (values[:-1] + values[1:]) / 2
    best = max(cuts, key=lambda t: ((pos >= t).mean() + (neg < t).mean()) / 2)
    return float(best), float(((pos >= best).mean() + (neg < best).mean()) / 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--val", type=int, default=1000, help="Flickr8k val photos (1,000 in the split)")
    p.add_argument("--noise", type=int, default=40, help="random noise images")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--n-best", type=int, default=3)
    p.add_argument("--store", action="store_true",
                   help="write the chosen threshold into the checkpoint (calibration['confidence_threshold'])")
    args = p.parse_args()

    with open(os.path.join(FLICKR8K, "Flickr_8k.devImages.txt")) as f:
        val = [os.path.join(FLICKR8K, "Images", line.strip()) for line in f if line.strip()][:args.val]
    from showtell.config import DataConfig
    from showtell.datasets import resolve_sources

    captioner = Captioner(args.checkpoint)
    # In domain: the val splits of the datasets the model was trained on (the
    # threshold is chosen on those and on what is surely out of domain, never on a test split).
    own = resolve_sources(DataConfig(**{k: v for k, v in captioner.card["data_config"].items()
                                        if k in DataConfig.__dataclass_fields__}))
    groups = {f"{s.name} val": [it.path for it in s.split("val")][:args.val] for s in own}
    in_names = list(groups)
    groups.update({
        "examples/": sorted(glob.glob(os.path.join(ROOT, "examples", "*.jpg"))),
        "noise": noise_images(args.noise),
    })
    if not any("coco" in n for n in in_names):  # COCO photos are out of domain for a Flickr8k-only model
        groups["coco-mini"] = sorted(glob.glob(os.path.join(DATA, "coco-mini", "train2017", "*.jpg")))
    t0 = time.perf_counter()
    scores = {}
    for name, images in groups.items():
        results = captioner.caption_each(images, beam_size=args.beam, n_best=args.n_best)
        bad = [r for r in results if not isinstance(r, list)]
        if bad:
            raise SystemExit(f"{name}: {len(bad)} images could not be read, e.g. {bad[0]}")
        scores[name] = [signals(r) for r in results]
        if name == "examples/":
            for path, r, s in zip(images, results, scores[name]):
                print(f"  {os.path.basename(path):<16} {s[SIGNAL]:7.3f}  {r[0].text}")
    print(f"captioned {sum(len(v) for v in groups.values())} images in {time.perf_counter() - t0:.0f} s "
          f"(beam {args.beam}, {args.n_best} captions); {machine()}")
    print(f"groups: " + ", ".join(f"{k} {len(v)}" for k, v in groups.items()))

    out_names = [k for k in groups if k not in in_names]
    inside = [s for k in in_names for s in scores[k]]
    print(f"\nAUC, {' + '.join(in_names)} (in domain) against each out-of-domain group and all of them:")
    print(f"{'signal':<14}" + "".join(f"{k:>14}" for k in out_names) + f"{'all out':>10}")
    for sig in inside[0]:
        pos = np.array([s[sig] for s in inside])
        row = [auc(pos, np.array([s[sig] for s in scores[k]])) for k in out_names]
        allneg = np.array([s[sig] for k in out_names for s in scores[k]])
        print(f"{sig:<14}" + "".join(f"{a:14.3f}" for a in row) + f"{auc(pos, allneg):10.3f}")

    pos = np.array([s[SIGNAL] for s in inside])
    neg = np.array([s[SIGNAL] for k in out_names for s in scores[k]])
    best, bal = best_threshold(pos, neg)
    print(f"\nkept signal: {SIGNAL}; best balanced-accuracy threshold {best:.3f} ({100 * bal:.1f}%)")
    for t in sorted({round(best, 2), captioner.confidence_threshold}):
        marks = "  <- stored with the model" if t == captioner.confidence_threshold else ""
        print(f"at threshold {t:.2f}{marks}: 'sure' on {100 * (pos >= t).mean():.1f}% of the val photos; "
              + ", ".join(f"'not sure' on {100 * (np.array([s[SIGNAL] for s in scores[k]]) < t).mean():.1f}% "
                          f"of {k}" for k in out_names)
              + f"; balanced accuracy {100 * ((pos >= t).mean() + (neg < t).mean()) / 2:.1f}%")
    if args.store:
        import dataclasses

        from showtell.checkpoint import read_checkpoint, save_checkpoint
        from showtell.confidence import CALIBRATION_KEY

        path = captioner.checkpoint
        record = read_checkpoint(path)
        save_checkpoint(dataclasses.replace(record, calibration={**record.calibration,
                                                                 CALIBRATION_KEY: round(best, 3)}), path)
        print(f"stored {CALIBRATION_KEY} = {round(best, 3)} in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

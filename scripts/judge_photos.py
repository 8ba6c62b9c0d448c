"""Judging captions by eye, on the same photos every time.

Draws ``--n`` photos of coco-2733's test split with a fixed seed (the sample
depends on the seed and the split's image ids alone), captions them with each
model given, and keeps everything in one JSON file in the repository
(``docs/judgments.json``): for every photo, each model's caption and a
person's verdict on it:

- ``right``: a person would accept the caption;
- ``partly``: it names the main subject or scene but gets something important wrong;
- ``wrong``: otherwise.

A caption already judged for the same photo (by this model or another that
said the same words) keeps its verdict; a new caption starts unjudged (``null``). Contact sheets (photo + caption, numbered) are
written for the person judging; they edit the verdicts in the JSON file.

    python scripts/judge_photos.py --model bundled-0.2=OLD.pt --model bundled-0.3=showtell/models/showtell-flickr8k.pt \\
        --sheets /tmp/sheets
    python scripts/judge_photos.py --summary
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

JUDGMENTS = os.path.join(ROOT, "docs", "judgments.json")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "coco-2733")
SEED, N = 2733, 40
VERDICTS = ("right", "partly", "wrong")


def draw_sample(data: str, seed: int = SEED, n: int = N) -> list:
    """The photos to judge: ``n`` of the test split drawn with ``seed``, from its image ids in sorted order."""
    from showtell.datasets import resolve_sources
    from showtell.config import DataConfig

    items = sorted(resolve_sources(DataConfig(datasets=(data,)))[0].split("test"), key=lambda it: int(it.image_id))
    return random.Random(seed).sample(items, n)


def load(path: str = JUDGMENTS) -> dict:
    if not os.path.exists(path):
        return {"seed": SEED, "split": "coco-2733 test", "photos": []}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summary(record: dict) -> dict[str, dict[str, int]]:
    """Verdict counts per model: {model: {right, partly, wrong, unjudged}}."""
    out: dict[str, dict[str, int]] = {}
    for photo in record["photos"]:
        for model, judged in photo["captions"].items():
            counts = out.setdefault(model, {v: 0 for v in VERDICTS + ("unjudged",)})
            counts[judged["verdict"] or "unjudged"] += 1
    return out


def contact_sheets(photos: list, captions: dict[str, list[str]], out_dir: str, per_sheet: int = 8) -> list[str]:
    """PNG sheets of the photos, each with its number and every model's caption below it."""
    from PIL import Image, ImageDraw, ImageFont

    from showtell.images import load_image

    os.makedirs(out_dir, exist_ok=True)
    font = ImageFont.load_default()
    tile, text_h, cols = 320, 16 * (1 + len(captions)) + 8, 4
    paths = []
    for s in range(0, len(photos), per_sheet):
        chunk = photos[s:s + per_sheet]
        rows = -(-len(chunk) // cols)
        sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
        draw = ImageDraw.Draw(sheet)
        for j, item in enumerate(chunk):
            x, y = (j % cols) * tile, (j // cols) * (tile + text_h)
            sheet.paste(load_image(item.path).convert("RGB").resize((tile - 8, tile - 8)), (x + 4, y + 4))
            draw.text((x + 8, y + 8), f"#{s + j + 1}", fill="yellow", font=font, stroke_width=2, stroke_fill="black")
            for k, (model, caps) in enumerate(captions.items()):
                draw.text((x + 4, y + tile + 16 * k), f"{model[:8]}: {caps[s + j]}"[:58], fill="black", font=font)
        path = os.path.join(out_dir, f"sheet_{s // per_sheet + 1}.png")
        sheet.save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="caption the sample with this checkpoint, recorded under NAME")
    p.add_argument("--data", default=DEFAULT_DATA, help="the coco-2733 folder")
    p.add_argument("--file", default=JUDGMENTS, help="the judgments file (default: docs/judgments.json)")
    p.add_argument("--sheets", default=None, metavar="DIR", help="write contact sheets here")
    p.add_argument("--summary", action="store_true", help="print the verdict counts per model")
    args = p.parse_args(argv)
    record = load(args.file)
    photos = draw_sample(args.data, record.get("seed", SEED), N)
    by_id = {ph["image_id"]: ph for ph in record["photos"]}
    record["photos"] = [by_id.get(it.image_id, {"image_id": it.image_id, "file": os.path.basename(it.path),
                                                "captions": {}}) for it in photos]
    captions: dict[str, list[str]] = {}
    for spec in args.model:
        name, _, checkpoint = spec.partition("=")
        from showtell.captioner import Captioner

        captioner = Captioner(checkpoint)
        captions[name] = [captioner(it.path) for it in photos]
        for photo, text in zip(record["photos"], captions[name]):
            same = [c["verdict"] for c in photo["captions"].values() if c["caption"] == text and c["verdict"]]
            photo["captions"][name] = {"caption": text, "verdict": same[0] if same else None}
    if args.model:
        os.makedirs(os.path.dirname(os.path.abspath(args.file)), exist_ok=True)
        with open(args.file, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    if args.sheets:
        shown = captions or {m: [ph["captions"].get(m, {}).get("caption", "") for ph in record["photos"]]
                             for m in {m for ph in record["photos"] for m in ph["captions"]}}
        for path in contact_sheets(photos, shown, args.sheets):
            print(path)
    if args.summary or not args.sheets:
        for model, counts in summary(record).items():
            print(f"{model}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

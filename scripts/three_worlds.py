"""Score a model in the three worlds, with intervals against a baseline.

The worlds: Flickr8k test (1,000 photos: people, dogs, outdoor sport),
coco-2733 test (250 everyday COCO photos: kitchens, food, streets, rooms,
animals) and coco-mini (80 COCO photos). For each, ``showtell evaluate`` gives
the model's figures at caption()'s defaults (BLEU-4, METEOR, ROUGE-L,
CIDEr-D, distinct captions) and ``showtell compare`` the paired bootstrap of
the model against the baseline (95 % interval of the CIDEr-D and BLEU-4
differences). A change ships only if it wins beyond chance on coco-2733 test
and does not lose beyond chance on Flickr8k test.

    python scripts/three_worlds.py MODEL.pt [--baseline OLD.pt] [--json out.json]
    python scripts/three_worlds.py MODEL.pt --int8   # MODEL's int8 decoder against its float32 one

Prints a Markdown table (the README's results table).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
WORLDS = (("Flickr8k test", os.path.join(DATA, "flickr8k"), "test"),
          ("coco-2733 test", os.path.join(DATA, "coco-2733"), "test"),
          ("coco-mini", os.path.join(DATA, "coco-mini"), "train"))


def _run(args: list[str]) -> dict:
    """The last JSON line a ``python -m showtell`` command prints."""
    out = subprocess.run([sys.executable, "-m", "showtell", *args, "--no-progress"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def score(model: str, baseline: str | None, int8: bool = False) -> list[dict]:
    """Each world's figures of ``model`` (with ``int8``, decoded in int8) and
    its comparison with ``baseline`` (with ``int8``, by default ``model``
    itself in float32: B is always the model scored, A the baseline in float32)."""
    if int8 and baseline is None:
        baseline = model
    precision = ["--decoder-precision", "int8"] if int8 else []
    rows = []
    for world, path, split in WORLDS:
        args = ["evaluate", model, "--data", path, "--split", split, *precision]
        shown = " ".join(args).replace(path, os.path.relpath(path, ROOT))
        row = {"world": world, "command": f"python -m showtell {shown}", "scores": _run(args)}
        if baseline:
            row["compare"] = _run(["compare", baseline, model, "--data", path, "--split", split,
                                   *(["--int8", "b"] if int8 else [])])
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| world | photos | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | distinct | CIDEr-D vs baseline (95 %) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["scores"]
        diff = ""
        if "compare" in r:
            m = r["compare"]["metrics"]["cider"]
            lo, hi = m["difference_interval"]
            verdict = "beyond chance" if lo > 0 or hi < 0 else "within chance"
            diff = f"{m['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}], {verdict}"
        lines.append(f"| {r['world']} | {s['images']} | {s['bleu4']:.1f} | {s['meteor']:.1f} | {s['rouge_l']:.1f} | "
                     f"{s['cider']:.1f} | {s['distinct_captions']:.0f} % | {diff} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--baseline", default=None, help="compare against this checkpoint (paired bootstrap)")
    p.add_argument("--json", default=None, help="also write every figure here")
    p.add_argument("--int8", action="store_true",
                   help="score MODEL decoded in int8 (--decoder-precision int8), against --baseline in float32 "
                        "or, without one, against MODEL itself in float32")
    args = p.parse_args(argv)
    rows = score(args.model, args.baseline, args.int8)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``showtell compare``: two checkpoints' captions of the same photos, by the
paired bootstrap (:func:`showtell.evaluation.compare_split`)."""
from __future__ import annotations

import argparse
import json

from ..defaults import BOOTSTRAP_RESAMPLES, DECODER_PRECISION
from ..metric_registry import label as metric_label
from .common import OK, check_checkpoint_file, check_device, check_int8_device, positive
from .scoring import add_scoring_flags, data_overrides, scoring_items, scoring_options

SUMMARY = "is B better than A? both scored on the same photos, with bootstrap intervals"
DESCRIPTION = ("Compare two checkpoints' captions of the same photos by the paired bootstrap: BLEU-4, "
               "CIDEr-D and ROUGE-L of each, B - A, and 95 % intervals, so a difference on a small "
               "set (coco-mini's 80 photos) can be told from the luck of the sample. The photos are "
               "A's split, or the one the data flags name.")


def fill_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", metavar="A", help="the reference model (e.g. the bundled one)")
    p.add_argument("other", metavar="B", help="the model compared with it")
    add_scoring_flags(p)
    p.add_argument("--resamples", type=positive, default=BOOTSTRAP_RESAMPLES,
                   help=f"bootstrap draws (default {BOOTSTRAP_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--mirror-average", choices=("a", "b", "both"), default=None,
                   help="caption A's, B's or both models' photos from features averaged with the mirror image's "
                        "(compare a model with itself: showtell compare M M --mirror-average b)")
    p.add_argument("--int8", choices=("a", "b", "both"), default=None,
                   help="decode A's, B's or both models' captions with int8 weights and the other's in float32 "
                        "(default: both as caption() decodes, int8 on a CPU; "
                        "int8 against float32: showtell compare M M --int8 b)")
    return p


def get_parser(prog: str = "python -m showtell compare") -> argparse.ArgumentParser:
    """The flags of ``showtell compare``."""
    return fill_parser(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def _sides(choice: str | None) -> tuple[bool, bool]:
    """Whether an a|b|both flag (None: not given) applies to A and to B."""
    return choice in ("a", "both"), choice in ("b", "both")


def _which(choice: str | None, what: str) -> str:
    """' (A what)', ' (B what)', ' (both what)', or '' for an a|b|both flag not given."""
    side = {"a": "A", "b": "B", "both": "both"}
    return f" ({side[choice]} {what})" if choice else ""


def run(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    scoring_options(args, None)  # a bad flag is a usage error before any model loads
    check_int8_device(args.int8 is not None, device, f"--int8 {args.int8}")
    check_checkpoint_file(args.checkpoint)
    check_checkpoint_file(args.other)

    from ..checkpoint import read_checkpoint
    from ..decoders import resolve_decoder_precision
    from ..evaluation import compare_split
    from ..features import FeatureCache
    from ..model import CaptionModel

    ckpt, other = read_checkpoint(args.checkpoint), read_checkpoint(args.other)
    # Each model captions as caption() would with it: its own calibrated guidance.
    opts = (scoring_options(args, ckpt), scoring_options(args, other))
    dataset, items = scoring_items(ckpt, args.checkpoint, args.split, args.data, data_overrides(args))
    models = [CaptionModel.from_checkpoint(ckpt, device=device), CaptionModel.from_checkpoint(other, device=device)]
    requested = (tuple("int8" if on else "float32" for on in _sides(args.int8)) if args.int8
                 else (DECODER_PRECISION, DECODER_PRECISION))
    precisions = tuple(resolve_decoder_precision(r, device, "float32", m.decoder) for r, m in zip(requested, models))
    result = compare_split(*models, dataset, items, FeatureCache(args.cache_dir), args.split, opts,
                           device=device, progress=not args.no_progress, resamples=args.resamples, seed=args.seed,
                           mirror_average=_sides(args.mirror_average),
                           decoder_precision=precisions)
    print(f"A = {args.checkpoint}\nB = {args.other}{_which(args.mirror_average, 'mirror-averaged')}"
          f"{_which(args.int8, 'in int8')}\n"
          f"{dataset} {args.split}: {result['images']} photos, "
          f"{result['changed_captions']} captions differ; {args.resamples} paired bootstrap draws, 95 % intervals")
    print(f"{'metric':8s} {'A':>22s} {'B':>22s} {'B - A':>24s} {'draws B not ahead':>18s}")
    for name, m in result["metrics"].items():
        a_lo, a_hi = m["a_interval"]
        b_lo, b_hi = m["b_interval"]
        d_lo, d_hi = m["difference_interval"]
        print(f"{metric_label(name):8s} {m['a']:6.2f} [{a_lo:6.2f}, {a_hi:6.2f}] {m['b']:6.2f} [{b_lo:6.2f}, {b_hi:6.2f}] "
              f"{m['difference']:+6.2f} [{d_lo:+6.2f}, {d_hi:+6.2f}] {100 * m['b_not_ahead']:17.1f}%")
    print(json.dumps({"a": args.checkpoint, "b": args.other, "dataset": dataset, "split": args.split,
                      "beam_size": args.beam_size,
                      "guidance_threshold": [o.guidance_threshold for o in opts],
                      "guidance_fallback": [o.guidance_fallback for o in opts],
                      "length_penalty": opts[0].length_penalty, "seed": args.seed,
                      **({"mirror_average": args.mirror_average} if args.mirror_average else {}),
                      "decoder_precision": list(precisions),
                      **({"int8": args.int8} if args.int8 else {}), **result}))
    return OK

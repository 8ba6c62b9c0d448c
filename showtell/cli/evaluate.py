"""``showtell evaluate``: a checkpoint's caption metrics on a dataset split
(:func:`showtell.evaluation.evaluate_checkpoint`, which ``train --test`` calls too)."""
from __future__ import annotations

import argparse
import json

from .common import (OK, UsageError, add_decoder_precision, check_checkpoint_file, check_device, check_int8_device,
                     check_output_file, count)
from ..defaults import DECODER_PRECISION
from .scoring import add_scoring_flags, data_overrides, evaluation_line, scoring_items, scoring_options

SUMMARY = "score a checkpoint on a dataset split (BLEU, METEOR, ROUGE-L, CIDEr-D)"
DESCRIPTION = ("Score a checkpoint on a split with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, and save "
               "its captions.")


def fill_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", help="the model to score (e.g. runs/flickr8k/best.pt)")
    add_scoring_flags(p)
    p.add_argument("--output", default=None, help="write [{image_id, caption}] JSON here")
    p.add_argument("--store", action="store_true",
                   help="also record the scores in the checkpoint (under test_scores / val_scores), "
                        "where the web page's model card reads them")
    p.add_argument("--show", type=count, default=0, metavar="N",
                   help="print the captions of the first N images beside their first reference")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="CHECKPOINT",
                   help="caption with these models too, each word from the mean of their distributions "
                        "(same vocabulary and encoder as CHECKPOINT)")
    p.add_argument("--mirror-average", action="store_true",
                   help="caption from each photo's features averaged with its mirror image's "
                        "(test-time augmentation: twice the encoder's work; caption --mirror-average does the same)")
    add_decoder_precision(p, "the captions scored")
    return p


def get_parser(prog: str = "python -m showtell evaluate") -> argparse.ArgumentParser:
    """The flags of ``showtell evaluate``."""
    return fill_parser(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    scoring_options(args, None)  # a bad flag is a usage error before any model loads
    int8 = args.decoder_precision == "int8"
    if args.store and (args.ensemble or args.length_penalty is not None or args.mirror_average
                       or args.decoder_precision != DECODER_PRECISION):
        raise UsageError("--store records the checkpoint's own scores at the default decoding: "
                         "leave out --ensemble, --length-penalty, --mirror-average and --decoder-precision")
    if args.ensemble and int8:
        raise UsageError("--ensemble decodes in float32 only: leave out --decoder-precision")
    check_int8_device(int8, device, "--decoder-precision int8")
    for path in args.ensemble:
        check_checkpoint_file(path)
    if args.output:
        check_output_file(args.output, "--output")
    check_checkpoint_file(args.checkpoint)

    from ..checkpoint import read_checkpoint
    from ..decoders import resolve_decoder_precision
    from ..evaluation import evaluate_checkpoint
    from ..features import FeatureCache
    from ..model import CaptionModel

    ckpt = read_checkpoint(args.checkpoint)
    opts = scoring_options(args, ckpt)  # guided by the model's own calibrated settings, as caption() is
    name, items = scoring_items(ckpt, args.checkpoint, args.split, args.data, data_overrides(args))
    model = CaptionModel.from_checkpoint(ckpt, device=device)
    if args.ensemble:
        try:
            model = CaptionModel.ensemble([model] + [CaptionModel.from_checkpoint(p, device=device)
                                                     for p in args.ensemble])
        except ValueError as e:
            raise UsageError(f"--ensemble: {e}") from None
    precision = resolve_decoder_precision(args.decoder_precision, device, "float32", model.decoder)
    scores = evaluate_checkpoint(args.checkpoint, ckpt, name, items, args.split, opts, FeatureCache(args.cache_dir),
                                 model=model, store=args.store, device=device, progress=not args.no_progress,
                                 captions_out=args.output, examples=args.show, mirror_average=args.mirror_average,
                                 decoder_precision=precision)
    for image_id, ours, reference in scores.pop("examples", []):
        print(f"{image_id}\n  showtell:  {ours}\n  reference: {reference}")
    print(json.dumps(evaluation_line(args.checkpoint, name, args.split, opts, scores, args.ensemble,
                                     args.mirror_average, precision)))
    return OK

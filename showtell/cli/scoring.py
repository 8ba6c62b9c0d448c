"""What the commands that score a model share (evaluate, compare, and
``train --test``): the split and its data, the decoding flags, and which
photos a checkpoint is scored on."""
from __future__ import annotations

import argparse
import dataclasses

from ..config import DataConfig
from ..datasets import DatasetError, has_split, load_split
from ..defaults import BEAM_SIZE, GUIDANCE_FALLBACK, GUIDANCE_THRESHOLD, MAX_LEN
from .common import (CACHE_HELP, DEVICE_HELP, UsageError, add_guidance_flags, add_length_penalty,
                     coco_splits_message, dataset_sources, decode_options, guidance_option, length_penalty_option)
from .config_flags import FIELD_HELP

DATA_OVERRIDES = ("dataset", "data_root", "image_root", "annotations", "val_annotations", "val_image_root")


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """What evaluate and compare share: the split, its data, and how captions are decoded."""
    p.add_argument("--split", default="test", choices=DataConfig.SPLITS, help="the split captioned (default test)")
    p.add_argument("--beam-size", type=int, default=BEAM_SIZE, help=f"1 = greedy (default {BEAM_SIZE}, as caption())")
    p.add_argument("--max-len", type=int, default=MAX_LEN,
                   help=f"longest caption in words (default {MAX_LEN}, as caption())")
    add_guidance_flags(p, plain="plain captions (no ImageNet-guided words)",
                       guided="guided captions: each must name an ImageNet tag at least this probable "
                              f"(default: the model's own, as caption(); {GUIDANCE_THRESHOLD} for a model "
                              "without one)",
                       fallback="a guided caption whose log-probability per word falls more than this below "
                                f"the unguided one's is set aside for it; 'none' keeps them all (default: the "
                                f"model's own, as caption(); {GUIDANCE_FALLBACK} for a model without one)")
    p.add_argument("--dataset", default=None, choices=DataConfig.DATASETS,
                   help="score on another dataset than the one stored in the checkpoint (with its "
                        "--annotations/--image-root or --data-root), e.g. coco-mini's photos out of domain")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="score on this dataset (a Flickr8k folder, a COCO folder such as coco-2733 or coco-mini, "
                        "or a Karpathy dataset_*.json; as train.py --data takes them), not the checkpoint's")
    p.add_argument("--data-root", default=None, help="override the dataset location stored in the checkpoint")
    p.add_argument("--image-root", default=None, help="coco/karpathy: " + FIELD_HELP["image_root"].split(": ")[1])
    p.add_argument("--annotations", default=None, help=FIELD_HELP["annotations"])
    p.add_argument("--val-annotations", default=None, help=FIELD_HELP["val_annotations"])
    p.add_argument("--val-image-root", default=None, help=FIELD_HELP["val_image_root"])
    add_length_penalty(p)
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def caption_options(ckpt, **flags):
    """caption()'s decoding options for the model of checkpoint record
    ``ckpt`` (guided by its own calibrated threshold and fallback), with
    ``flags`` (beam_size=...) applied: what a model is scored with, so the
    figures are what users get."""
    from ..captioner import default_options

    return decode_options(**{**dataclasses.asdict(default_options(ckpt)), **flags})


def scoring_options(args: argparse.Namespace, ckpt):
    """The decoding options evaluate and compare use for the model of
    ``ckpt``: caption()'s, with the decoding flags given."""
    return caption_options(ckpt, beam_size=args.beam_size, max_len=args.max_len, **guidance_option(args),
                           **length_penalty_option(args))


def data_overrides(args: argparse.Namespace) -> dict:
    """The data flags given (--data-root, --annotations...), by config field."""
    return {k: getattr(args, k) for k in DATA_OVERRIDES if getattr(args, k) is not None}


def scoring_items(ckpt, checkpoint: str, split: str, data: str | None = None, overrides: dict | None = None):
    """The dataset's name (its feature-cache entries) and the items of
    ``split`` that the checkpoint ``ckpt`` (read from ``checkpoint``) is
    scored on: those of ``data`` (a --data path), or of the dataset stored in
    the checkpoint with ``overrides`` (config field -> value) applied."""
    overrides = overrides or {}
    stored = ckpt.data_config
    if data:
        if overrides:
            raise UsageError(f"--data names the whole dataset: leave out --{next(iter(overrides)).replace('_', '-')}")
        source = dataset_sources(DataConfig(datasets=(data,)))[0]
        if not has_split(source.cfg, split):
            raise UsageError(f"--data {data}: no {split} split there")
        try:
            return source.name, source.split(split)
        except DatasetError as e:
            raise DatasetError(f"--data {data}: {e}") from e
    if stored.datasets and not overrides:
        # A model trained on several datasets is scored on one at a time: the first, unless --data names another.
        source = dataset_sources(stored)[0]
        try:
            return source.name, load_split(source.cfg, split)
        except DatasetError as e:
            raise DatasetError(f"{e} (the first dataset stored in {checkpoint}; name one with --data)") from e
    data_cfg = dataclasses.replace(stored, datasets=(), **overrides) if overrides else stored
    if not has_split(data_cfg, split):
        # The official COCO release has no test split: never score val photos labelled test.
        raise UsageError(f"--split {split}: {coco_splits_message(split)}")
    try:
        return data_cfg.dataset, load_split(data_cfg, split)
    except DatasetError as e:
        if overrides:
            raise
        raise DatasetError(f"{e} (the dataset location stored in {checkpoint}; "
                           f"override it with --data-root, --annotations or --image-root)") from e


def evaluation_line(checkpoint: str, dataset: str, split: str, opts, scores: dict, ensemble=(),
                    mirror_average: bool = False, decoder_precision: str = "float32") -> dict:
    """The JSON line evaluate (and ``train --test``) prints: what was scored,
    how it was decoded (``decoder_precision`` as it resolved), and the scores
    (rounded to 2 decimals)."""
    from ..evaluation import decoding_fields

    return {"checkpoint": checkpoint, "dataset": dataset, "split": split, **decoding_fields(opts),
            **({"ensemble": list(ensemble)} if ensemble else {}),
            **({"mirror_average": True} if mirror_average else {}),
            "decoder_precision": decoder_precision,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()}}

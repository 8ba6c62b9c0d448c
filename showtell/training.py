"""Training loop: teacher forcing on cached encoder features, validation BLEU
every epoch, best-checkpoint selection, early stopping and exact resumption.

``train()`` writes into ``out_dir``:
- ``last.pt``  resumable checkpoint (end of every epoch, and every
  ``checkpoint_every`` steps): model, optimizer, scheduler, scaler, epoch,
  step within the epoch, RNG state, best score, history;
- ``best.pt``  the model with the best val BLEU-4 so far (no training state);
- ``log.jsonl`` one record per epoch.
A run killed at any point and started again with ``resume=True`` continues
from ``last.pt`` with the same data order and random state, as if never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .datasets import ImageCaptions, load_split
from .decoding import DecodeOptions
from .evaluation import decode_features, score_captions, split_features
from .features import FeatureCache, ImageTensors, collate_images
from .model import CaptionModel
from .text import Vocabulary, tokenize


def encode_captions(items: list[ImageCaptions], vocab: Vocabulary, max_len: int):
    """All captions of ``items`` as one padded id matrix (N, L), with their
    lengths (N,) and the index of their image (N,)."""
    seqs, image_of = [], []
    for i, item in enumerate(items):
        for text in item.captions:
            seqs.append(vocab.encode(tokenize(text), max_len))
            image_of.append(i)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    caps = torch.full((len(seqs), int(lengths.max())), vocab.pad_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        caps[j, :len(s)] = torch.tensor(s)
    return caps, lengths, torch.tensor(image_of, dtype=torch.long)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The batches of one epoch, a function of (seed, epoch) alone so a resumed
    run sees the same order. Captions of similar length share a batch (less
    padding), and batches come in random order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g)
    batches = []
    chunk = batch_size * 50
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    order = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in order]


class _BatchImages(Dataset):
    """Images of whole batches, for fine-tuning the encoder (no feature cache)."""

    def __init__(self, batches, image_of, items, preprocessing):
        self.batches, self.image_of = batches, image_of
        self.images = ImageTensors(items, preprocessing)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, b):
        rows = self.batches[b]
        loaded = [self.images[int(self.image_of[r])] for r in rows]
        keep = [j for j, (_, x, _) in enumerate(loaded) if x is not None]
        _, images, failed = collate_images(loaded)
        return rows[keep], images, len(failed)


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
    return (f"epoch {rec['epoch']}/{rec['epochs']}  loss {rec['train_loss']:.3f}  val BLEU-1..4 {val}  "
            f"lr {rec['lr']:.1e}  {rec['seconds']:.0f}s (train {rec['train_seconds']:.0f}s)")


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, out_dir: str, *,
          resume: bool = False, encoder_weights: str | None = "default", cache_dir: str | None = None,
          device: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train a captioner; returns a summary (best epoch and val scores, history)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(out_dir, exist_ok=True)
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    ckpt = None
    if resume and os.path.isfile(last_path):
        ckpt = load_checkpoint(last_path)
        model_cfg = config_from_dict(ModelConfig, ckpt["model_config"])
        data_cfg = config_from_dict(DataConfig, ckpt["data_config"])
        train_cfg = config_from_dict(TrainConfig, ckpt["train_config"])
        t = ckpt["training"]
        log(f"resuming from {last_path}: epoch {t['epoch'] + 1}, step {t['step']}")
    elif resume:
        log(f"nothing to resume in {out_dir}: starting a new run")
    elif os.path.isfile(last_path):
        log(f"starting a new run in {out_dir}, replacing the run there (--resume would continue it)")

    # Data and vocabulary (from the training split only).
    train_items = load_split(data_cfg, data_cfg.train_split)
    val_items = load_split(data_cfg, data_cfg.val_split)
    if train_cfg.val_max_images:
        val_items = val_items[:train_cfg.val_max_images]
    if ckpt is not None:
        vocab = Vocabulary(ckpt["vocab"])
    else:
        vocab = Vocabulary.build((tokenize(c) for it in train_items for c in it.captions), data_cfg.min_word_count)

    torch.manual_seed(train_cfg.seed)
    random.seed(train_cfg.seed)
    if ckpt is not None and ckpt["encoder"] is not None:
        encoder_weights = None  # the checkpoint holds them
    model = CaptionModel.build(model_cfg, vocab, encoder_weights=encoder_weights)
    if ckpt is not None:
        if ckpt["encoder"] is not None:
            model.encoder.load_state_dict(ckpt["encoder"])
        model.decoder.load_state_dict(ckpt["decoder"])
    model.to(device)
    fine_tune = model.encoder.trainable()
    cache = FeatureCache(cache_dir)
    dataset = data_cfg.dataset

    if fine_tune:
        kept_train = train_items  # unreadable images are dropped batch by batch
        train_feats = None
    else:
        fs = cache.get(dataset, data_cfg.train_split, train_items, model.encoder, device=device, progress=progress)
        kept_train = fs.items
        train_feats = torch.from_numpy(np.array(fs.for_decoder(model.decoder.feature_kind)))  # (N, C) or (N, P, C)
        val_kept, val_feats = split_features(model, dataset, val_items, cache, data_cfg.val_split,
                                             device=device, progress=progress)
    caps, lengths, image_of = encode_captions(kept_train, vocab, data_cfg.max_caption_len)

    decoder_params = [p for p in model.decoder.parameters()]
    groups = [{"params": decoder_params, "lr": train_cfg.lr}]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": train_cfg.encoder_lr})
    optimizer = torch.optim.Adam(groups, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=train_cfg.lr_decay_every,
                                                gamma=train_cfg.lr_decay)
    use_amp = train_cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "best_score": -1.0, "best_epoch": -1,
             "bad_epochs": 0, "history": [], "finished": False}
    if ckpt is not None:
        t = ckpt["training"]
        optimizer.load_state_dict(t["optimizer"])
        scheduler.load_state_dict(t["scheduler"])
        scaler.load_state_dict(t["scaler"])
        state.update({k: t[k] for k in state})
        _set_rng_state(t["rng"])
    else:
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump({"model": dataclasses.asdict(model_cfg), "data": dataclasses.asdict(data_cfg),
                       "train": dataclasses.asdict(train_cfg), "vocab_size": len(vocab)}, f, indent=1)
        log(f"training {model_cfg.decoder} on {model_cfg.encoder} features: {len(kept_train)} images, "
            f"{len(caps)} captions, vocabulary {len(vocab)}, device {device}")

    def save_last():
        ck = model.checkpoint(data_cfg, train_cfg)
        ck["training"] = {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), "rng": _rng_state()}
        save_checkpoint(ck, last_path)

    opts = DecodeOptions(beam_size=1, max_len=train_cfg.max_decode_len, block_repeat_trigrams=False,
                         block_repeat_words=False, ban_unk=False)
    summary = lambda: {"best_epoch": state["best_epoch"], "best_val_bleu4": state["best_score"],
                       "history": state["history"], "out_dir": out_dir, "finished": state["finished"]}
    if state["finished"]:
        log("this run already finished")
        return summary()

    while state["epoch"] < train_cfg.epochs:
        epoch = state["epoch"]
        t_epoch = time.time()
        batches = epoch_batches(lengths, train_cfg.batch_size, train_cfg.seed, epoch)
        model.train()
        start = state["step"]  # > 0 when resuming mid-epoch
        if fine_tune:
            source = iter(DataLoader(_BatchImages(batches[start:], image_of, kept_train, model.preprocessing),
                                     batch_size=None, num_workers=min(2, os.cpu_count() or 1),
                                     generator=torch.Generator()))
        skipped = 0
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
                   unit="batch", disable=not progress, leave=False)
        for b in range(start, len(batches)):
            if fine_tune:
                rows, images, n_failed = next(source)
                skipped += n_failed
            else:
                rows = batches[b]
            if len(rows) == 0:
                continue
            c = caps[rows, :int(lengths[rows].max())].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if fine_tune:
                    x = model.decoder_input(model.encoder(images.to(device)))
                else:
                    x = train_feats[image_of[rows]].to(device).float()
                logits = model.decoder(x, c)  # (B, T-1, V)
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), c[:, 1:].reshape(-1),
                                       ignore_index=vocab.pad_id)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {b}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            state["loss_sum"] += loss.item() * len(rows)
            state["loss_count"] += len(rows)
            state["step"] = b + 1
            bar.update(1)
            bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_count']:.3f}")
            if train_cfg.checkpoint_every and state["step"] % train_cfg.checkpoint_every == 0 \
                    and state["step"] < len(batches):
                save_last()
        bar.close()
        if skipped:
            warnings.warn(f"epoch {epoch + 1}: skipped {skipped} captions whose image is missing or unreadable")
        train_seconds = time.time() - t_epoch

        # Validation: greedy captions of the val split, corpus BLEU against all references.
        if fine_tune:
            val_kept, val_feats = split_features(model, dataset, val_items, cache, data_cfg.val_split,
                                                 device=device, progress=False)
        scores = score_captions(val_kept, decode_features(model, val_feats, opts, device=device))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        rec = {"epoch": epoch + 1, "epochs": train_cfg.epochs,
               "train_loss": state["loss_sum"] / max(1, state["loss_count"]),
               **{f"val_{k}": v for k, v in scores.items()}, "lr": lr,
               "train_seconds": train_seconds, "seconds": time.time() - t_epoch}
        state["history"].append(rec)
        log(_log_line(rec))
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
        if scores["bleu4"] > state["best_score"]:
            state.update(best_score=scores["bleu4"], best_epoch=epoch + 1, bad_epochs=0)
            best = model.checkpoint(data_cfg, train_cfg)
            best["val_scores"] = scores
            save_checkpoint(best, best_path)
        else:
            state["bad_epochs"] += 1
        if state["epoch"] >= train_cfg.epochs:
            state["finished"] = True
        elif state["bad_epochs"] >= train_cfg.early_stop_patience:
            log(f"early stop: val BLEU-4 has not improved for {state['bad_epochs']} epochs")
            state["finished"] = True
        save_last()
        _write_log(os.path.join(out_dir, "log.jsonl"), state["history"])  # matches last.pt, even after a kill
        if state["finished"]:
            break
    log(f"best val BLEU-4 {state['best_score']:.2f} at epoch {state['best_epoch']}; model in {best_path}")
    return summary()

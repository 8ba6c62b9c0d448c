"""Cached encoder features: with a frozen encoder each image goes through the
CNN once, and training epochs read memory-mapped arrays instead.

A cache entry is a folder named by a key over the dataset, split, image list,
encoder (name and weights) and preprocessing; a change to any of them gives a
new key and so a rebuild. Entries are built in a temporary folder and renamed
into place, so a killed build never leaves a half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import remove_stale_temporaries
from .datasets import ImageCaptions
from .encoders import ImageEncoder
from .images import ImageError, load_image

CACHE_FORMAT = 1


def default_cache_dir() -> str:
    return os.environ.get("SHOWTELL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "showtell"))


class ImageTensors(Dataset):
    """Preprocessed image tensors for a list of items; an unreadable image
    yields ``None`` with its error instead of ending the run."""

    def __init__(self, items: Sequence[ImageCaptions], preprocessing):
        self.items = items
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocessing(load_image(self.items[i].path)), None
        except ImageError as e:
            return i, None, str(e)


def collate_images(batch):
    """Stack the readable images; keep the indices and errors of the others."""
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, err) for i, x, err in batch if x is None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([x for _, x in ok]) if ok else torch.empty(0)
    return idx, images, failed


def warn_skipped(failed: Sequence[tuple[str, str]], total: int, what: str) -> None:
    """One warning that counts the skipped images and shows the first reason."""
    if failed:
        warnings.warn(f"{what}: skipped {len(failed)} of {total} images that are missing or "
                      f"unreadable (first: {failed[0][1]})", stacklevel=3)


@dataclass
class FeatureSet:
    """Features of the readable images of one split, in item order."""

    items: list[ImageCaptions]  # only the images that could be read
    pooled: np.ndarray  # (N, C) float32, memory-mapped
    spatial: np.ndarray  # (N, P, C) float16, memory-mapped; P = h * w positions
    skipped: list[tuple[str, str]]  # (image_id, reason) of those that could not

    def for_decoder(self, feature_kind: str) -> np.ndarray:
        """The array a decoder of this ``feature_kind`` reads: pooled or spatial."""
        return self.pooled if feature_kind == "pooled" else self.spatial


def split_features(encoder: ImageEncoder, dataset: str, split: str, items: Sequence[ImageCaptions],
                   cache: "FeatureCache", device: str | torch.device = "cpu", progress: bool = True) -> FeatureSet:
    """The features of a split's readable images: from the cache for a frozen
    encoder; computed afresh (in a throwaway cache) for one being fine-tuned,
    whose features change every epoch."""
    if encoder.trainable():
        with tempfile.TemporaryDirectory() as tmp:
            fs = FeatureCache(tmp).get(dataset, split, items, encoder, device=device, progress=progress)
            # Copied out of the memory map: the folder is gone when this returns.
            return FeatureSet(fs.items, np.array(fs.pooled), np.array(fs.spatial), fs.skipped)
    return cache.get(dataset, split, items, encoder, device=device, progress=progress)


def cache_key(dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "dataset": dataset, "split": split,
                         "encoder": encoder.name, "weights": encoder.weights_id,
                         "preprocessing": encoder.preprocessing.key()}).encode())
    for item in items:
        h.update(f"{item.image_id}\t{os.path.abspath(item.path)}\n".encode())  # however the root was spelled
    return h.hexdigest()[:16]


class FeatureCache:
    """Memory-mapped encoder features on disk, one folder per key."""

    def __init__(self, root: str | None = None):
        self.root = root or default_cache_dir()

    def path(self, dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder) -> str:
        name = f"{dataset}-{split}-{encoder.name}-{cache_key(dataset, split, items, encoder)}"
        return os.path.join(self.root, "features", name)

    def get(self, dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder,
            batch_size: int = 64, num_workers: int | None = None, device: str = "cpu",
            progress: bool = True) -> FeatureSet:
        """The features of ``items``: read from the cache when the key matches,
        computed (and stored) otherwise."""
        folder = self.path(dataset, split, items, encoder)
        if not os.path.isfile(os.path.join(folder, "meta.json")):
            self._build(folder, items, encoder, batch_size, num_workers, device, progress,
                        desc=f"features {dataset}/{split}")
        feats = self._open(folder, items)
        warn_skipped(feats.skipped, len(items), f"{dataset}/{split}")
        return feats

    @staticmethod
    def _open(folder: str, items: Sequence[ImageCaptions]) -> FeatureSet:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        ok = set(meta["image_ids"])
        kept = [it for it in items if it.image_id in ok]
        pooled = np.load(os.path.join(folder, "pooled.npy"), mmap_mode="r")
        spatial = np.load(os.path.join(folder, "spatial.npy"), mmap_mode="r")
        return FeatureSet(kept, pooled, spatial, [tuple(s) for s in meta["skipped"]])

    def _build(self, folder, items, encoder, batch_size, num_workers, device, progress, desc):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        remove_stale_temporaries(os.path.dirname(folder))  # builds of killed processes
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        fast = encoder.for_inference().to(device)
        if num_workers is None:
            num_workers = min(2, os.cpu_count() or 1)
        loader = DataLoader(ImageTensors(items, encoder.preprocessing), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=collate_images,
                            generator=torch.Generator())  # leave the global RNG (training's) untouched
        n = len(items)
        pooled = spatial = None
        row_of = np.full(n, -1, dtype=np.int64)  # item index -> row among readable images
        failed: list[tuple[str, str]] = []
        rows = 0
        with torch.inference_mode(), tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
            for idx, images, bad in loader:
                failed += [(items[i].image_id, err) for i, err in bad]
                if len(idx):
                    x = images.to(device).contiguous(memory_format=torch.channels_last)
                    out = fast(x)  # pooled (B, C), spatial (B, P, C)
                    b, c = out.pooled.shape
                    if pooled is None:
                        pooled = np.lib.format.open_memmap(os.path.join(tmp, "pooled.npy"), "w+",
                                                           np.float32, (n, c))
                        spatial = np.lib.format.open_memmap(os.path.join(tmp, "spatial.npy"), "w+",
                                                            np.float16, (n, out.spatial.size(1), c))
                    pooled[rows:rows + b] = out.pooled.float().cpu().numpy()
                    spatial[rows:rows + b] = out.spatial.float().cpu().half().numpy()
                    row_of[idx.numpy()] = np.arange(rows, rows + b)
                    rows += b
                bar.update(len(idx) + len(bad))
        if pooled is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ImageError(f"{desc}: none of the {n} images could be read (first: {failed[0][1]})")
        # Rows were written in loader order, which is item order; trim the unused tail.
        pooled.flush(); spatial.flush()
        del pooled, spatial
        for name in ("pooled.npy", "spatial.npy"):
            arr = np.load(os.path.join(tmp, name), mmap_mode="r")
            if rows < n:
                np.save(os.path.join(tmp, name + ".part"), arr[:rows])
                del arr
                os.replace(os.path.join(tmp, name + ".part.npy"), os.path.join(tmp, name))
        ok_ids = [items[i].image_id for i in np.flatnonzero(row_of >= 0)]
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({"format": CACHE_FORMAT, "image_ids": ok_ids, "skipped": failed,
                       "encoder": encoder.name, "weights": encoder.weights_id,
                       "preprocessing": encoder.preprocessing.key()}, f)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

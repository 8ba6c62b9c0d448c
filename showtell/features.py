"""Cached encoder features: with a frozen encoder each image goes through the
CNN once, and training epochs read memory-mapped arrays instead.

A cache entry is a folder named by a key over the dataset, split, image list,
encoder (name and weights) and preprocessing; a change to any of them gives a
new key and so a rebuild. Entries are built in a temporary folder and renamed
into place, so a killed build never leaves a half-written cache behind, and a
full disk ends the build with one line (its arrays' space is reserved before
any feature is written: a memory map on a full disk died of SIGBUS). An entry
is checked each time it is opened (meta.json against its checksum, each
array's dtype, shape and file size) and rebuilt, with a warning, when damaged.
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

from .checkpoint import disk_full, remove_stale_temporaries
from .datasets import ImageCaptions
from .encoders import ImageEncoder
from .images import ImageError, load_image
from .inference import InferenceEncoder

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


class NpyRows:
    """Rows of a ``.npy`` file on disk, read on demand with positioned reads.

    A memory map would do the same job, but every page it touches counts in
    the process's resident memory for as long as the kernel keeps it, so an
    epoch over COCO's 24 GB of spatial features grows the trainer to the size
    of the file. ``os.preadv`` copies just the asked-for rows into a fresh
    array and leaves the caching to the kernel's page cache, which it can
    drop under pressure: resident memory stays at a few batches.

    Indexing takes an int, a slice or an array of row numbers (any order,
    repeats allowed) and returns an ``ndarray``; ``np.asarray(rows)`` reads
    the whole file. ``shape``, ``dtype``, ``ndim`` and ``len`` are the array's.
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: expected a C-ordered numeric array")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self) -> int:
        # One descriptor per process: DataLoader workers (forked or spawned) open their own.
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            return self.read(np.array([i]))[0]
        if isinstance(index, slice):
            return self.read(np.arange(*index.indices(len(self))))
        if isinstance(index, tuple):
            return self[index[0]][(slice(None),) + index[1:]]
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.read(rows.astype(np.int64, copy=False))

    def __array__(self, dtype=None, copy=None):
        whole = self.read(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (1-D ints) as a new array, in that order. Rows are
        read once each, in file order, adjacent rows in one call."""
        rows = rows.reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        rows = np.where(rows < 0, rows + len(self), rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique),) + self.row_shape, dtype=self.dtype)
        if not len(unique):
            return out
        flat = out.reshape(len(unique), -1).view(np.uint8)
        # Runs of consecutive rows: [starts[k], ends[k]) in ``unique``.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        starts = np.concatenate([[0], breaks]).astype(np.int64)
        ends = np.concatenate([breaks, [len(unique)]]).astype(np.int64)
        fd = self._file()
        for a, b in zip(starts.tolist(), ends.tolist()):
            view = memoryview(flat[a:b].reshape(-1))
            pos, done = self.offset + int(unique[a]) * self.row_bytes, 0
            while done < len(view):  # a read may return less than asked
                n = os.preadv(fd, [view[done:]], pos + done)
                if n <= 0:
                    raise OSError(f"{self.path}: file ends before row {int(unique[b - 1])}")
                done += n
        return out if len(unique) == len(rows) and np.array_equal(unique, rows) else out[inverse.reshape(-1)]


class ConcatRows:
    """Several datasets' feature rows (:class:`NpyRows` or arrays of the same
    row shape) read as one, the datasets one after another, each still read
    from its own cache entry."""

    def __init__(self, parts: Sequence[NpyRows | np.ndarray]):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot join feature rows of shapes {sorted(shapes)}: one encoder must make them all")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]),) + shapes.pop()
        self.dtype = np.result_type(*[p.dtype for p in parts])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        rows = np.asarray(index, dtype=np.int64)
        if rows.ndim == 0:
            return self[rows.reshape(1)][0]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} feature rows")
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for d, part in enumerate(self.parts):
            at = np.flatnonzero(which == d)
            if len(at):
                out[at] = part[rows[at] - self.starts[d]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype)


@dataclass
class FeatureSet:
    """Features of the readable images of one split, in item order."""

    items: list[ImageCaptions]  # only the images that could be read
    pooled: NpyRows | ConcatRows | np.ndarray  # (N, C) float32, read from disk row by row
    spatial: NpyRows | ConcatRows | np.ndarray  # (N, P, C) float16; P = h * w positions
    skipped: list[tuple[str, str]]  # (image_id, reason) of those that could not

    def for_decoder(self, feature_kind: str) -> NpyRows | np.ndarray:
        """The array a decoder of this ``feature_kind`` reads: pooled or spatial."""
        return self.pooled if feature_kind == "pooled" else self.spatial


def extraction_workers(on_gpu: bool) -> int:
    """Image-decoding processes for feature extraction. On a GPU, JPEG decoding
    is the bottleneck (an H100 encodes ~19,000 photos/s, a core decodes
    ~100-200): every core but the one feeding it decodes. On a CPU the encoder
    is (a decoding worker used ~6 % of a core while the forward pass took both
    of a 2-core machine), so a quarter of the cores decode and the rest
    encode: on 2 cores one worker gave 35.8 photos/s against 29.3 with two
    (``python benchmarks/bench_features.py --max-images 1500 --workers N``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(32, cores - 1 if on_gpu else cores // 4))


def split_features(encoder: ImageEncoder, dataset: str, split: str, items: Sequence[ImageCaptions],
                   cache: "FeatureCache", device: str | torch.device = "cpu", progress: bool = True,
                   mirror_average: bool = False, mirrored: bool = False) -> FeatureSet:
    """The features of a split's readable images: from the cache for a frozen
    encoder; computed afresh (in a throwaway cache) for one being fine-tuned,
    whose features change every epoch. ``mirror_average``, ``mirrored``: see :meth:`FeatureCache.get`."""
    if encoder.trainable():
        return _uncached(dataset, split, items, encoder, device=device, progress=progress,
                         mirror_average=mirror_average, mirrored=mirrored)
    return cache.get(dataset, split, items, encoder, device=device, progress=progress, mirror_average=mirror_average,
                     mirrored=mirrored)


def trunk_features(encoder: ImageEncoder, dataset: str, split: str, items: Sequence[ImageCaptions],
                   cache: "FeatureCache", device: str | torch.device = "cpu", progress: bool = True,
                   mirrored: bool = False) -> FeatureSet:
    """For an encoder whose last stage is being fine-tuned, the features of
    the part that is not (:meth:`~showtell.encoders.ImageEncoder.trunk`: its
    map as spatial rows), cached like a frozen encoder's: the trunk's weights
    are the ones the encoder names. Random weights name nothing, so theirs
    go in a throwaway cache. ``mirrored``: see :meth:`FeatureCache.get`."""
    trunk = encoder.trunk()
    if trunk.weights_id == "random":
        return _uncached(dataset, split, items, trunk, device=device, progress=progress, mirrored=mirrored)
    return cache.get(dataset, split, items, trunk, device=device, progress=progress, mirrored=mirrored)


def _uncached(dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder,
              **options) -> FeatureSet:
    """Features computed in a throwaway cache (``options`` as for :meth:`FeatureCache.get`),
    for weights no cache key can name."""
    with tempfile.TemporaryDirectory() as tmp:
        fs = FeatureCache(tmp).get(dataset, split, items, encoder, **options)
        # Copied out of the memory map: the folder is gone when this returns.
        return FeatureSet(fs.items, np.array(fs.pooled), np.array(fs.spatial), fs.skipped)


def cache_key(dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder,
              mirror_average: bool = False, mirrored: bool = False) -> str:
    h = hashlib.sha256()
    # The mirror options are named only when set, so plain features keep the keys they always had.
    h.update(json.dumps({"format": CACHE_FORMAT, "dataset": dataset, "split": split,
                         "encoder": encoder.name, "weights": encoder.weights_id,
                         "preprocessing": encoder.preprocessing.key(),
                         **({"mirror_average": True} if mirror_average else {}),
                         **({"mirrored": True} if mirrored else {})}).encode())
    for item in items:
        h.update(f"{item.image_id}\t{os.path.abspath(item.path)}\n".encode())  # however the root was spelled
    return h.hexdigest()[:16]


def _reserve(path: str) -> None:
    """Allocate the disk blocks of the (sparse) file at ``path`` now: a full disk
    is then an OSError here, not a SIGBUS when a memory-mapped page is written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# name, dtype and number of dimensions of each array of a cache entry
_ARRAYS = (("pooled.npy", np.float32, 2), ("spatial.npy", np.float16, 3))


def cache_problem(folder: str) -> str | None:
    """What is wrong with the cache entry in ``folder`` (None: nothing): a
    meta.json that cannot be read or does not match its checksum (entries
    written before the checksum have none), an array of the wrong dtype or
    shape, or a file shorter or longer than its header says."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        rows = len(meta["image_ids"])
        if not isinstance(meta["skipped"], list):
            raise TypeError("skipped is not a list")
    except FileNotFoundError:
        return "no meta.json"
    except (OSError, ValueError, TypeError, KeyError) as e:
        return f"meta.json cannot be read: {type(e).__name__}: {e}"
    if "checksum" in meta and meta["checksum"] != _meta_checksum(meta):
        return "meta.json does not match its checksum"
    widths = set()
    for name, dtype, ndim in _ARRAYS:
        path = os.path.join(folder, name)
        try:
            arr = NpyRows(path)
            size = os.path.getsize(path)
        except (OSError, ValueError) as e:
            return f"{name} cannot be read: {e}"
        if arr.dtype != dtype or arr.ndim != ndim or arr.shape[0] != rows:
            return f"{name} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} with {ndim} dimensions " \
                   f"and {rows} rows"
        if size != arr.offset + rows * arr.row_bytes:
            return f"{name} is {size:,} bytes, its header says {arr.offset + rows * arr.row_bytes:,}"
        widths.add(arr.shape[-1])
    if len(widths) != 1:
        return "pooled.npy and spatial.npy disagree on the feature width"
    return None


class FeatureCache:
    """Memory-mapped encoder features on disk, one folder per key."""

    def __init__(self, root: str | None = None):
        self.root = root or default_cache_dir()

    def path(self, dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder,
             mirror_average: bool = False, mirrored: bool = False) -> str:
        view = "-mirror" if mirror_average else "-mirrored" if mirrored else ""
        name = f"{dataset}-{split}-{encoder.name}{view}-{cache_key(dataset, split, items, encoder, mirror_average, mirrored)}"
        return os.path.join(self.root, "features", name)

    def get(self, dataset: str, split: str, items: Sequence[ImageCaptions], encoder: ImageEncoder,
            batch_size: int | None = None, num_workers: int | None = None, device: str = "cpu",
            progress: bool = True, runtime: str = "auto", mirror_average: bool = False,
            mirrored: bool = False) -> FeatureSet:
        """The features of ``items``: read from the cache when the key matches,
        computed (and stored) otherwise (``batch_size``, photos per encoder call,
        and ``runtime``, what runs it: see :class:`~showtell.inference.InferenceEncoder`;
        ``mirror_average``: each photo's features averaged with its mirror image's,
        :func:`~showtell.encoders.mirror_averaged`, cached apart from the plain ones;
        ``mirrored``: the features of each photo's mirror image alone, for training
        with mirrored photos, :attr:`~showtell.config.TrainConfig.mirror_augment`).
        An entry found damaged (:func:`cache_problem`) is rebuilt, with a warning."""
        if mirror_average and mirrored:
            raise ValueError("mirror_average and mirrored are two different features: ask for one")
        folder = self.path(dataset, split, items, encoder, mirror_average, mirrored)
        problem = cache_problem(folder) if os.path.exists(folder) else "missing"
        if problem is not None:
            if problem != "missing":
                warnings.warn(f"the feature cache {folder} is damaged ({problem}): rebuilding it", stacklevel=2)
            view = " (mirror-averaged)" if mirror_average else " (mirrored)" if mirrored else ""
            self._build(folder, items, encoder, batch_size, num_workers, device, progress, runtime,
                        desc=f"features {dataset}/{split}{view}", mirror_average=mirror_average, mirrored=mirrored)
        feats = self._open(folder, items)
        warn_skipped(feats.skipped, len(items), f"{dataset}/{split}")
        return feats

    @staticmethod
    def _open(folder: str, items: Sequence[ImageCaptions]) -> FeatureSet:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        ok = set(meta["image_ids"])
        kept = [it for it in items if it.image_id in ok]
        pooled = NpyRows(os.path.join(folder, "pooled.npy"))
        spatial = NpyRows(os.path.join(folder, "spatial.npy"))
        return FeatureSet(kept, pooled, spatial, [tuple(s) for s in meta["skipped"]])

    def _build(self, folder, items, encoder, batch_size, num_workers, device, progress, runtime, desc,
               mirror_average=False, mirrored=False):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        remove_stale_temporaries(os.path.dirname(folder))  # builds of killed processes
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._build_in(tmp, folder, items, encoder, batch_size, num_workers, device, progress, runtime, desc,
                           mirror_average, mirrored)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full(e, f"the feature cache {folder}")
            if full is not None:
                raise full from None
            raise

    def _build_in(self, tmp, folder, items, encoder, batch_size, num_workers, device, progress, runtime, desc,
                  mirror_average, mirrored):
        os.makedirs(tmp)
        # The features caption() computes from the same photos: the same runner, in float32.
        fast = InferenceEncoder(encoder, device, runtime, mirror_average=mirror_average, batch_size=batch_size)
        on_gpu = torch.device(device).type == "cuda"
        if num_workers is None:
            num_workers = extraction_workers(on_gpu)
        # Workers decode the next batches while this process runs the encoder on the current one.
        loader = DataLoader(ImageTensors(items, encoder.preprocessing), batch_size=fast.batch_size,
                            num_workers=num_workers, collate_fn=collate_images, pin_memory=on_gpu,
                            prefetch_factor=4 if num_workers else None,
                            generator=torch.Generator())  # leave the global RNG (training's) untouched
        n = len(items)
        pooled = spatial = None
        row_of = np.full(n, -1, dtype=np.int64)  # item index -> row among readable images
        failed: list[tuple[str, str]] = []
        rows = 0
        with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
            for idx, images, bad in loader:
                failed += [(items[i].image_id, err) for i, err in bad]
                if len(idx):
                    if mirrored:
                        images = images.flip(-1)  # (B, 3, H, W) left to right
                    out = fast(images)  # pooled (B, C), spatial (B, P, C)
                    b, c = out.pooled.shape
                    if pooled is None:
                        pooled = np.lib.format.open_memmap(os.path.join(tmp, "pooled.npy"), "w+",
                                                           np.float32, (n, c))
                        spatial = np.lib.format.open_memmap(os.path.join(tmp, "spatial.npy"), "w+",
                                                            np.float16, (n, out.spatial.size(1), c))
                        _reserve(os.path.join(tmp, "pooled.npy"))
                        _reserve(os.path.join(tmp, "spatial.npy"))
                    pooled[rows:rows + b] = out.pooled.cpu().numpy()
                    spatial[rows:rows + b] = out.spatial.cpu().half().numpy()
                    row_of[idx.numpy()] = np.arange(rows, rows + b)
                    rows += b
                bar.update(len(idx) + len(bad))
        if pooled is None:
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
        meta = {"format": CACHE_FORMAT, "image_ids": ok_ids, "skipped": failed,
                "encoder": encoder.name, "weights": encoder.weights_id,
                "preprocessing": encoder.preprocessing.key(), "mirror_average": mirror_average,
                **({"mirrored": True} if mirrored else {})}
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({**meta, "checksum": _meta_checksum(meta)}, f)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

"""Readers for captioning datasets: Flickr8k, MS-COCO (official json through
pycocotools) and Karpathy's split files (``dataset_{coco,flickr8k,flickr30k}.json``).

Every reader returns a list of :class:`ImageCaptions`, one per image, in file
order. Splits are named ``train``, ``val`` and ``test`` everywhere.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass

from .config import DataConfig, parse_dataset_spec

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageCaptions:
    image_id: str  # unique within the dataset: the file name, or COCO's numeric id
    path: str  # where the image file is
    captions: tuple[str, ...]  # raw human captions


class DatasetError(ValueError):
    """A dataset file is missing or not in the expected format."""


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path}")


def read_flickr8k(root: str, split: str) -> list[ImageCaptions]:
    """Flickr8k from its original release: ``Flickr8k.token.txt``, the official
    ``Flickr_8k.{train,dev,test}Images.txt`` split files and ``Images/``."""
    split_files = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                   "test": "Flickr_8k.testImages.txt"}
    if split not in split_files:
        raise DatasetError(f"unknown Flickr8k split {split!r}; expected one of {SPLITS}")
    token_file = os.path.join(root, "Flickr8k.token.txt")
    split_file = os.path.join(root, split_files[split])
    _require_file(token_file, "Flickr8k caption file")
    _require_file(split_file, "Flickr8k split file")
    captions: dict[str, list[str]] = {}
    try:
        with open(token_file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                key, sep, text = line.partition("\t")
                if not sep or "#" not in key:
                    raise DatasetError(f"{token_file}:{line_no}: expected 'IMAGE.jpg#k<TAB>caption'")
                captions.setdefault(key.rsplit("#", 1)[0], []).append(text.strip())
        with open(split_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise DatasetError(f"a Flickr8k file under {root} is not UTF-8 text ({e.reason})") from None
    missing = [n for n in names if n not in captions]
    if missing:
        raise DatasetError(f"{len(missing)} images of {split_file} have no captions, e.g. {missing[0]}")
    image_dir = os.path.join(root, "Images")
    return [ImageCaptions(n, os.path.join(image_dir, n), tuple(captions[n])) for n in names]


def _read_json(path: str, what: str):
    """The parsed JSON of ``path``; a file that is not UTF-8 JSON is a DatasetError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not a {what}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not a {what}: not valid JSON ({e})") from None
    except RecursionError:
        raise DatasetError(f"{path} is not a {what}: JSON nested too deeply") from None


def _check_coco(data, path: str) -> None:
    """Raise DatasetError naming the first image or annotation entry that a
    captions file cannot hold, before pycocotools indexes it."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path} is not a COCO captions file: it needs 'images' and 'annotations' lists")
    for i, info in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(info, dict):
            raise DatasetError(f"{where} is {type(info).__name__}, not an object")
        if not isinstance(info.get("id"), (int, str)) or isinstance(info.get("id"), bool):
            raise DatasetError(f"{where} has no usable 'id'")
        where = f"{path}: image id {info['id']} (images[{i}])"
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise DatasetError(f"{where} has no 'file_name' (the image file it names)")
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is {type(ann).__name__}, not an object")
        where = f"{path}: annotation id {ann.get('id', '?')} (annotations[{i}], image id {ann.get('image_id', '?')})"
        if "image_id" not in ann or "id" not in ann:
            raise DatasetError(f"{where} lacks 'image_id' or 'id'")
        if "caption" not in ann:
            raise DatasetError(f"{where} has no 'caption': is this an instances file, not a captions file?")
        if not isinstance(ann["caption"], str):
            raise DatasetError(f"{where}: the caption is {type(ann['caption']).__name__} "
                               f"{ann['caption']!r:.60}, not text")


def read_coco(annotation_file: str, image_dir: str) -> list[ImageCaptions]:
    """An official MS-COCO captions file (``captions_{train,val}{2014,2017}.json``)
    read with pycocotools, with the folder holding its images."""
    _require_file(annotation_file, "COCO annotation file")
    from pycocotools.coco import COCO

    data = _read_json(annotation_file, "COCO captions file")
    _check_coco(data, annotation_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = data
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{annotation_file} is not a COCO captions file: {e!r}") from e
    items = []
    for image_id in sorted(coco.getImgIds(), key=lambda i: (isinstance(i, str), i)):
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        caps = tuple(a["caption"].strip() for a in anns if a["caption"].strip())
        if caps:
            items.append(ImageCaptions(str(image_id), os.path.join(image_dir, info["file_name"]), caps))
    if not items:
        raise DatasetError(f"{annotation_file} holds no captions")
    return items


def _karpathy_captions(entry: dict, where: str) -> tuple[str, ...]:
    sentences = entry.get("sentences", [])
    if not isinstance(sentences, list):
        raise DatasetError(f"{where}: 'sentences' is {type(sentences).__name__}, not a list")
    caps = []
    for j, s in enumerate(sentences):
        if not isinstance(s, dict):
            raise DatasetError(f"{where}: sentences[{j}] is {type(s).__name__}, not an object")
        raw, tokens = s.get("raw"), s.get("tokens")
        if isinstance(raw, str) and raw.strip():
            caps.append(raw.strip())
        elif isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
            caps.append(" ".join(tokens))
        else:
            raise DatasetError(f"{where}: sentences[{j}] has neither a 'raw' text nor a 'tokens' list of words")
    return tuple(caps)


def read_karpathy(split_file: str, image_root: str, split: str) -> list[ImageCaptions]:
    """Karpathy's split file (``dataset_coco.json`` and friends). ``restval``
    counts as train. Image paths are ``image_root/filepath/filename``
    (``filepath`` is absent in the Flickr files)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    _require_file(split_file, "Karpathy split file")
    data = _read_json(split_file, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{split_file} has no 'images' list: not a Karpathy split file")
    wanted = {"train", "restval"} if split == "train" else {split}
    items = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise DatasetError(f"{split_file}: images[{i}] is {type(entry).__name__}, not an object")
        if entry.get("split") not in wanted:
            continue
        ident = entry.get("cocoid", entry.get("imgid"))
        where = f"{split_file}: images[{i}]" + (f" (id {ident})" if ident is not None else "")
        filename, filepath = entry.get("filename"), entry.get("filepath", "")
        if not isinstance(filename, str) or not filename:
            raise DatasetError(f"{where} has no 'filename'")
        if not isinstance(filepath, str):
            raise DatasetError(f"{where}: 'filepath' is {type(filepath).__name__}, not a folder name")
        caps = _karpathy_captions(entry, where)
        if caps:
            items.append(ImageCaptions(str(ident if ident is not None else filename),
                                       os.path.join(image_root, filepath, filename), caps))
    return items


def load_split(cfg: DataConfig, split: str) -> list[ImageCaptions]:
    """The images and captions of one split of the dataset ``cfg`` names."""
    if cfg.dataset == "flickr8k":
        return read_flickr8k(cfg.data_root, split)
    if cfg.dataset == "karpathy":
        return read_karpathy(cfg.annotations, cfg.image_root or cfg.data_root, split)
    if cfg.dataset == "coco":
        # The official release has one file per split; its val serves as val,
        # and as test when no other test file is given.
        if split == "train":
            return read_coco(cfg.annotations, cfg.image_root)
        if split == "test":
            if not cfg.test_annotations:
                raise DatasetError("this COCO dataset has no test split: the official release gives train "
                                   "and val captions files only (a test file goes in --test-annotations)")
            return read_coco(cfg.test_annotations, cfg.val_image_root or cfg.image_root)
        if not cfg.val_annotations:
            raise DatasetError("the COCO dataset needs --val-annotations for its val/test split")
        return read_coco(cfg.val_annotations, cfg.val_image_root or cfg.image_root)
    raise DatasetError(f"unknown dataset {cfg.dataset!r}; expected flickr8k, coco or karpathy")


# --- several datasets at once ----------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of a run: its name (validation figures, cache entries), its
    sampling weight, and the single-dataset config :func:`load_split` reads."""

    name: str
    weight: float
    cfg: DataConfig

    def split(self, split: str) -> list[ImageCaptions]:
        """The items of ``split``, at most ``cfg.max_images`` of them (0: all)."""
        items = load_split(self.cfg, split)
        return items[:self.cfg.max_images] if self.cfg.max_images else items


def _first_file(folder: str, names: list[str]) -> str:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), "")


def dataset_config(path: str, base: DataConfig) -> DataConfig:
    """The single-dataset config for a folder or file, its kind told by what it holds:
    - a Flickr8k folder (``Flickr8k.token.txt``, the split files, ``Images/``);
    - a COCO-format folder: ``annotations/captions_{train,val,test}[2014|2017].json`` with the
      photos in ``images/`` or ``{split}2017/`` / ``{split}2014/`` (the official layout, coco-2733's);
    - a Karpathy split file (``dataset_*.json``), its ``filepath``s relative to the file's folder,
      or a folder holding one.
    Caption-length and vocabulary settings come from ``base``."""
    keep = {k: getattr(base, k) for k in ("min_word_count", "max_caption_len", "max_images")}
    if os.path.isfile(path):
        return DataConfig(dataset="karpathy", annotations=path, image_root=os.path.dirname(path) or ".", **keep)
    if not os.path.isdir(path):
        raise DatasetError(f"--data {path}: no such file or folder")
    if os.path.isfile(os.path.join(path, "Flickr8k.token.txt")):
        return DataConfig(dataset="flickr8k", data_root=path, **keep)
    ann = os.path.join(path, "annotations")
    files = {split: _first_file(ann, [f"captions_{split}.json", f"captions_{split}2017.json",
                                      f"captions_{split}2014.json"]) for split in SPLITS}
    if files["train"] or files["val"] or files["test"]:
        def images(split: str) -> str:
            for name in ("images", f"{split}2017", f"{split}2014"):
                if os.path.isdir(os.path.join(path, name)):
                    return os.path.join(path, name)
            return os.path.join(path, "images")
        return DataConfig(dataset="coco", annotations=files["train"], image_root=images("train"),
                          val_annotations=files["val"], test_annotations=files["test"],
                          val_image_root=images("val"), **keep)
    karpathy = sorted(n for n in os.listdir(path) if n.startswith("dataset_") and n.endswith(".json"))
    if len(karpathy) == 1:
        return DataConfig(dataset="karpathy", annotations=os.path.join(path, karpathy[0]), image_root=path, **keep)
    raise DatasetError(f"--data {path}: not a dataset folder showtell knows (a Flickr8k folder with "
                       f"Flickr8k.token.txt, a COCO folder with annotations/captions_<split>.json, or one "
                       f"Karpathy dataset_*.json)")


def resolve_sources(cfg: DataConfig) -> list[DatasetSource]:
    """The datasets a config trains on: those of ``cfg.datasets`` (``--data``), or
    the one dataset its other fields describe, named by its kind."""
    if not cfg.datasets:
        return [DatasetSource(cfg.dataset, 1.0, cfg)]
    return [DatasetSource(spec.name, spec.weight, dataset_config(spec.path, cfg))
            for spec in map(parse_dataset_spec, cfg.datasets)]


def has_split(cfg: DataConfig, split: str) -> bool:
    """Whether a single-dataset config names a file for ``split`` (a COCO
    release may lack a test file; the other kinds hold every split)."""
    if cfg.dataset != "coco":
        return True
    return bool({"train": cfg.annotations, "val": cfg.val_annotations, "test": cfg.test_annotations}[split])

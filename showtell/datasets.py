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

from .config import DataConfig

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
    missing = [n for n in names if n not in captions]
    if missing:
        raise DatasetError(f"{len(missing)} images of {split_file} have no captions, e.g. {missing[0]}")
    image_dir = os.path.join(root, "Images")
    return [ImageCaptions(n, os.path.join(image_dir, n), tuple(captions[n])) for n in names]


def read_coco(annotation_file: str, image_dir: str) -> list[ImageCaptions]:
    """An official MS-COCO captions file (``captions_{train,val}{2014,2017}.json``)
    read with pycocotools, with the folder holding its images."""
    _require_file(annotation_file, "COCO annotation file")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco = COCO(annotation_file)
        except (KeyError, AssertionError, json.JSONDecodeError) as e:
            raise DatasetError(f"{annotation_file} is not a COCO captions file: {e!r}") from e
    items = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        caps = tuple(a["caption"].strip() for a in anns if a.get("caption"))
        if caps:
            items.append(ImageCaptions(str(image_id), os.path.join(image_dir, info["file_name"]), caps))
    if not items:
        raise DatasetError(f"{annotation_file} holds no captions")
    return items


def read_karpathy(split_file: str, image_root: str, split: str) -> list[ImageCaptions]:
    """Karpathy's split file (``dataset_coco.json`` and friends). ``restval``
    counts as train. Image paths are ``image_root/filepath/filename``
    (``filepath`` is absent in the Flickr files)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    _require_file(split_file, "Karpathy split file")
    with open(split_file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{split_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{split_file} has no 'images' list: not a Karpathy split file")
    wanted = {"train", "restval"} if split == "train" else {split}
    items = []
    for entry in data["images"]:
        if entry.get("split") not in wanted:
            continue
        path = os.path.join(image_root, entry.get("filepath", ""), entry["filename"])
        image_id = str(entry.get("cocoid", entry.get("imgid", entry["filename"])))
        caps = tuple(s["raw"].strip() if s.get("raw") else " ".join(s["tokens"])
                     for s in entry.get("sentences", []))
        if caps:
            items.append(ImageCaptions(image_id, path, caps))
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
        if not cfg.val_annotations:
            raise DatasetError("the COCO dataset needs --val-annotations for its val/test split")
        return read_coco(cfg.val_annotations, cfg.val_image_root or cfg.image_root)
    raise DatasetError(f"unknown dataset {cfg.dataset!r}; expected flickr8k, coco or karpathy")

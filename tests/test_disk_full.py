"""A full disk anywhere ends in one clear line, keeps the last good file and
leaves no temporaries; a damaged feature cache is found on open and rebuilt
(issue 22). The full disk is simulated: a write that fails with ENOSPC after
some bytes, as on a real one (a tmpfs of 300 KB behaves the same)."""
import errno
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from showtell import checkpoint, features
from showtell.checkpoint import DiskFullError, save_checkpoint
from showtell.cli import main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import ImageCaptions
from showtell.encoders import build_encoder
from showtell.features import FeatureCache
from showtell.model import CaptionModel
from showtell.overlay import write_attention
from showtell.text import SPECIAL_TOKENS, Vocabulary

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class _FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left."""

    room = 1000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _full_fdopen(fd, mode="r", *args, **kwargs):
    assert "b" in mode
    return io.BufferedWriter(_FullDisk(fd, "w", closefd=kwargs.get("closefd", True)))


@pytest.fixture(scope="module")
def small_ckpt():
    model = CaptionModel.build(ModelConfig(embed_dim=8, hidden_dim=8), Vocabulary(list(SPECIAL_TOKENS) + ["a"]),
                               encoder_weights=None)
    return model.checkpoint(DataConfig(), TrainConfig())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "tmp" in p.name)


def test_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_last_good_file(tmp_path, small_ckpt, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(small_ckpt, str(path))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.os, "fdopen", _full_fdopen)
    with pytest.raises(DiskFullError) as caught:  # torch.save raised "RuntimeError: unexpected pos"
        save_checkpoint(small_ckpt, str(path))
    assert str(caught.value) == (f"no space left on the disk to write {path} (No space left on device); nothing "
                                 "was replaced: free some space and run again")
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_export_onto_a_full_disk_is_one_line(tmp_path, small_ckpt, monkeypatch, capsys):
    src = tmp_path / "model.pt"
    save_checkpoint(small_ckpt, str(src))
    monkeypatch.setattr(checkpoint.os, "fdopen", _full_fdopen)
    assert main(["export", str(src), str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the disk to write"), err
    assert not (tmp_path / "out.pt").exists() and _leftovers(tmp_path) == []


def test_overlays_on_a_full_disk_keep_the_files_there(tmp_path, monkeypatch):
    photo = Image.new("RGB", (64, 48), (200, 100, 50))
    attention = np.full((2, 7, 7), 1 / 49, dtype=np.float32)
    paths = write_attention(photo, ["a", "dog"], attention, str(tmp_path), "photo")
    before = {p: Path(p).read_bytes() for p in paths}
    monkeypatch.setattr("os.fdopen", _full_fdopen)
    monkeypatch.setattr(_FullDisk, "room", 100)
    with pytest.raises(OSError) as caught:
        write_attention(photo, ["a", "dog"], attention[::-1] * 2, str(tmp_path), "photo")
    assert caught.value.errno == errno.ENOSPC
    assert {p: Path(p).read_bytes() for p in paths} == before
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


# --- the feature cache ----------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("resnet18", weights=None)


ITEMS = [ImageCaptions(p.stem, str(p), ("a photo",)) for p in sorted(EXAMPLES.glob("*.jpg"))[:3]]


def _get(cache, encoder):
    return cache.get("x", "train", ITEMS, encoder, batch_size=4, num_workers=0, progress=False, runtime="torch")


def test_feature_cache_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, encoder, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(features.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"^no space left on the disk to write the feature cache .*x-train-"):
        _get(FeatureCache(str(tmp_path)), encoder)
    assert os.listdir(tmp_path / "features") == []


def _damage_meta_json(folder):
    Path(folder, "meta.json").write_text('{"format": 1, "image_ids": ["a"')


def _damage_ids(folder):
    meta = json.loads(Path(folder, "meta.json").read_text())
    meta["image_ids"] = meta["image_ids"][::-1]
    Path(folder, "meta.json").write_text(json.dumps(meta))


def _truncate_spatial(folder):
    with open(Path(folder, "spatial.npy"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 1000)


def _reshape_pooled(folder):
    np.save(Path(folder, "pooled.npy"), np.zeros((2, 512), dtype=np.float64))


@pytest.mark.parametrize("damage, problem", [
    (_damage_meta_json, "meta.json cannot be read: JSONDecodeError"),
    (_damage_ids, "meta.json does not match its checksum"),
    (_truncate_spatial, "spatial.npy is 149,656 bytes, its header says 150,656"),
    (_reshape_pooled, "pooled.npy holds float64 (2, 512), expected float32 with 2 dimensions and 3 rows"),
])
def test_a_damaged_feature_cache_is_rebuilt_saying_so(tmp_path, encoder, damage, problem):
    cache = FeatureCache(str(tmp_path))
    first = _get(cache, encoder)
    pooled, spatial = np.asarray(first.pooled), np.asarray(first.spatial)
    folder = cache.path("x", "train", ITEMS, encoder)
    assert features.cache_problem(folder) is None
    damage(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _get(cache, encoder)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1 and problem in messages[0] and "rebuilding it" in messages[0], messages
    assert np.array_equal(np.asarray(again.pooled), pooled) and np.array_equal(np.asarray(again.spatial), spatial)
    assert features.cache_problem(folder) is None

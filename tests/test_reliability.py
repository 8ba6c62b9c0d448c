"""Hostile files, oversized requests and leftovers (issue 10): each case ends
in a clear error naming the problem, quickly and with bounded memory."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from showtell.checkpoint import (CheckpointError, load_checkpoint, load_resumable, remove_stale_temporaries,
                                 save_checkpoint)
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import DatasetError, read_coco, read_flickr8k, read_karpathy
from showtell.encoders import build_encoder
from showtell.images import MAX_IMAGE_BYTES, ImageError, load_image
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORDS = list(SPECIAL_TOKENS) + "a dog runs on the grass".split()


def _load_within(source, seconds=1.0, **kw):
    """The ImageError load_image raises for ``source``, in under ``seconds``.
    Runs in a thread, so a read that blocks fails the test instead of hanging it."""
    result = {}

    def run():
        try:
            load_image(source, **kw)
            result["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            result["error"] = e

    start = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    elapsed = time.perf_counter() - start
    assert "error" in result, f"load_image({source!r}) still running after 10 s"
    assert isinstance(result["error"], ImageError), repr(result["error"])
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    return result["error"]


# --- 1. unbounded reads ----------------------------------------------------------

def test_fifo_named_like_a_photo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    try:
        err = _load_within(str(fifo))
    finally:
        # Had the loader blocked in open(), a writer would release it.
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert "FIFO" in str(err) and str(fifo) in str(err)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_symlink_to_a_device_is_refused(tmp_path, device):
    link = tmp_path / "photo.jpg"
    link.symlink_to(device)
    err = _load_within(link)
    assert "character device" in str(err) and str(link) in str(err)


def test_huge_sparse_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(3_000_000_000)  # sparse: 3 GB apparent, no disk used
    err = _load_within(path)
    assert "3,000,000,000 bytes" in str(err) and "limit of 10,000,000" in str(err)


def test_byte_limit_is_an_option_that_cannot_be_removed(tmp_path):
    data = (EXAMPLES / "cat.jpg").read_bytes()
    path = tmp_path / "cat.jpg"
    path.write_bytes(data)
    assert load_image(path, max_bytes=len(data)).mode == "RGB"
    for source in (path, data):
        with pytest.raises(ImageError, match=f"limit of {len(data) - 1:,}"):
            load_image(source, max_bytes=len(data) - 1)
    for bad in (None, 0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes"):
            load_image(path, max_bytes=bad)
    assert MAX_IMAGE_BYTES == 10_000_000  # the web app's upload limit


def test_overlong_and_malformed_paths_are_image_errors(tmp_path):
    long_path = str(tmp_path / ("x" * 5000 + ".jpg"))
    err = _load_within(long_path)
    assert "cannot be read" in str(err) and "5,0" in str(err) and len(str(err)) < 400
    err = _load_within(str(tmp_path / "a\0b.jpg"))
    assert "cannot be read" in str(err)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert "cannot be read" in str(_load_within(loop))


def test_captioner_applies_its_byte_limit(tmp_path):
    from showtell import Captioner, caption

    data = (EXAMPLES / "cat.jpg").read_bytes()
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    small = tmp_path / "small.png"
    load_image(data).resize((64, 48)).save(small)
    start = time.perf_counter()
    results = Captioner(max_image_bytes=len(data) - 1).caption_each([str(fifo), EXAMPLES / "cat.jpg", small])
    assert isinstance(results[0], ImageError) and "FIFO" in str(results[0])
    assert isinstance(results[1], ImageError) and "limit" in str(results[1])
    assert results[2][0].text and time.perf_counter() - start < 20  # the good image is still captioned
    with pytest.raises(ImageError, match="limit"):
        caption(str(EXAMPLES / "cat.jpg"), max_image_bytes=len(data) - 1)
    assert caption(str(EXAMPLES / "cat.jpg"))  # the shared captioner keeps the default


# --- 5. leftovers of killed writers ----------------------------------------------

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def model_checkpoint():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", decoder="show_tell", embed_dim=16, hidden_dim=16, attention_dim=8)
    model = CaptionModel.build(cfg, Vocabulary(WORDS), encoder_weights=None)
    return model.checkpoint(DataConfig(), TrainConfig())


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, model_checkpoint):
    from showtell.checkpoint import _host

    dead, alive, host = _dead_pid(), os.getpid(), _host()
    stale_ckpt = tmp_path / f"last.pt.{host}.pid{dead}.abc123_x.tmp"
    live_ckpt = tmp_path / f"last.pt.{host}.pid{alive}.def456.tmp"
    other_host = tmp_path / f"last.pt.otherbox.pid{dead}.ghi789.tmp"
    old_unnamed = tmp_path / "last.pt.k2j3h4.tmp"
    new_unnamed = tmp_path / "best.pt.z9y8x7.tmp"
    for p in (stale_ckpt, live_ckpt, other_host, old_unnamed, new_unnamed):
        p.write_bytes(b"partial")
    os.utime(old_unnamed, (time.time() - 7200,) * 2)
    stale_cache = tmp_path / f"flickr8k-train-key.tmp-{dead}"
    live_cache = tmp_path / f"flickr8k-val-key.tmp-{alive}"
    for d in (stale_cache, live_cache):
        d.mkdir()
        (d / "pooled.npy").write_bytes(b"x" * 100)
    keep = tmp_path / "last.pt"
    keep.write_bytes(b"a real checkpoint")

    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(str(p) for p in (stale_ckpt, old_unnamed, stale_cache))
    for p in (live_ckpt, other_host, new_unnamed, live_cache, keep):
        assert p.exists()
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []

    # save_checkpoint cleans its folder first, and names its own temporary.
    stale_ckpt.write_bytes(b"partial")
    save_checkpoint(model_checkpoint, str(tmp_path / "last.pt"))
    assert not stale_ckpt.exists() and live_ckpt.exists()
    assert load_checkpoint(str(tmp_path / "last.pt"))["vocab"] == WORDS


def test_killed_save_leaves_a_temporary_the_next_save_removes(tmp_path, model_checkpoint):
    torch.save(model_checkpoint, tmp_path / "ck.pt")  # handed to the child
    code = ("import os, torch, sys\n"
            "import showtell.checkpoint as c\n"
            "real = torch.save\n"
            "def save_then_die(obj, f):\n"
            "    real(obj, f); f.flush(); os._exit(9)\n"
            "torch.save = save_then_die\n"
            f"c.save_checkpoint(torch.load(sys.argv[1], weights_only=True), sys.argv[2])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck.pt"), str(tmp_path / "run" / "last.pt")],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=120)
    assert out.returncode == 9, out.stderr.decode()[-2000:]
    left = list((tmp_path / "run").glob("*.tmp"))
    assert len(left) == 1 and ".pid" in left[0].name and not (tmp_path / "run" / "last.pt").exists()
    save_checkpoint(model_checkpoint, str(tmp_path / "run" / "last.pt"))
    assert list((tmp_path / "run").glob("*.tmp")) == []


def test_model_checkpoint_is_not_a_resumable_run(tmp_path, model_checkpoint):
    path = str(tmp_path / "best.pt")
    save_checkpoint(model_checkpoint, path)
    with pytest.raises(CheckpointError, match=r"a model \(like best.pt\), not a resumable run.*--init-from"):
        load_resumable(path)
    resumable = {**model_checkpoint, "training": {"epoch": 1, "step": 10}}
    save_checkpoint(resumable, str(tmp_path / "last.pt"))
    assert load_resumable(str(tmp_path / "last.pt"))["training"]["step"] == 10
    for load in (load_checkpoint, load_resumable):
        with pytest.raises(CheckpointError, match="is a folder"):
            load(str(tmp_path))


HOSTILE = [
    (("model_config", "hidden_dim"), "512", "model_config.*hidden_dim must be int"),
    (("model_config", "embed_dim"), -16, r"embed_dim .*must be at least 1"),
    (("model_config", "num_layers"), 10**6, r"num_layers .*must be at most"),
    (("model_config", "dropout"), float("nan"), "dropout must be float"),
    (("model_config", "decoder"), "transformer", "decoder 'transformer' is unknown"),
    (("model_config", "encoder"), "vit_h14", "encoder 'vit_h14' is unknown"),
    (("model_config",), ["not", "a", "dict"], "model_config.*expected a dict"),
    (("train_config", "lr"), "fast", "train_config.*lr must be float"),
    (("data_config", "min_word_count"), 2.5, "min_word_count must be int"),
    (("vocab",), 12, "vocab must be a list of words"),
    (("vocab",), ["a", "b"], "vocab: a vocabulary must start with"),
    (("decoder",), [1, 2, 3], "decoder must be a state_dict"),
    (("encoder",), {"w": "not a tensor"}, "encoder must be a state_dict"),
    (("encoder_weights",), 7, "encoder_weights must be a string"),
]


@pytest.mark.parametrize("where, value, message", HOSTILE, ids=[".".join(h[0]) for h in HOSTILE])
def test_hostile_config_values_are_checkpoint_errors_naming_the_field(tmp_path, model_checkpoint,
                                                                      where, value, message):
    ck = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model_checkpoint.items()}
    if len(where) == 1:
        ck[where[0]] = value
    else:
        ck[where[0]][where[1]] = value
    path = str(tmp_path / "hostile.pt")
    torch.save(ck, path)  # weights-only loadable: plain values in the wrong places
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        CaptionModel.from_checkpoint(path)


def test_unknown_config_keys_of_old_checkpoints_are_ignored(tmp_path, model_checkpoint):
    ck = {**model_checkpoint, "model_config": {**model_checkpoint["model_config"], "retired_option": 3}}
    path = str(tmp_path / "old.pt")
    save_checkpoint(ck, path)
    assert CaptionModel.from_checkpoint(path).cfg.hidden_dim == 16


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_encoder_weights_are_refused_clearly(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        build_encoder("resnet18", weights=str(path))
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a weights file")
    with pytest.raises(CheckpointError, match="not a weights file that can be read safely"):
        build_encoder("resnet18", weights=str(tmp_path / "garbage.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        build_encoder("resnet18", weights=str(tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match="is a folder"):
        build_encoder("resnet18", weights=str(tmp_path))


# --- 5. malformed annotation files ----------------------------------------------

def _coco(tmp_path, images=None, annotations=None, raw=None):
    path = tmp_path / "captions.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        images = images if images is not None else [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
        annotations = annotations if annotations is not None else [
            {"id": 10, "image_id": 1, "caption": "a dog runs"}, {"id": 11, "image_id": 2, "caption": "a cat"}]
        path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return str(path)


def test_wellformed_coco_file_reads(tmp_path):
    items = read_coco(_coco(tmp_path), "imgs")
    assert [(it.image_id, it.path, it.captions) for it in items] == [
        ("1", os.path.join("imgs", "a.jpg"), ("a dog runs",)), ("2", os.path.join("imgs", "b.jpg"), ("a cat",))]


@pytest.mark.parametrize("case, message", [
    ({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 7}]}, r"image id 7 \(images\[1\]\) has no 'file_name'"),
    ({"annotations": [{"id": 10, "image_id": 1, "caption": 42}]}, r"annotation id 10 .*image id 1.*caption is int"),
    ({"annotations": [{"id": 11, "image_id": 2, "caption": ["a", "cat"]}]}, r"annotation id 11 .*caption is list"),
    ({"annotations": [{"id": 12, "image_id": 2, "bbox": [0, 0, 1, 1]}]}, r"annotation id 12 .*no 'caption'"),
    ({"images": {"id": 1}}, "needs 'images' and 'annotations' lists"),
    ({"raw": "caption: a dog".encode("utf-16")}, "not UTF-8"),
    ({"raw": b'{"images": [}'}, "not valid JSON"),
    ({"raw": b"[" * 100_000}, "not a COCO captions file"),
])
def test_malformed_coco_files_are_dataset_errors_naming_the_entry(tmp_path, case, message):
    with pytest.raises(DatasetError, match=message):
        read_coco(_coco(tmp_path, **case), "imgs")


def _karpathy(tmp_path, images):
    path = tmp_path / "dataset_test.json"
    path.write_text(json.dumps({"images": images}))
    return str(path)


@pytest.mark.parametrize("entry, message", [
    ({"split": "train", "cocoid": 5, "sentences": [{"raw": "a dog"}]}, r"images\[0\] \(id 5\) has no 'filename'"),
    ({"split": "train", "filename": "a.jpg", "imgid": 3, "sentences": "a dog"}, "'sentences' is str"),
    ({"split": "train", "filename": "a.jpg", "sentences": [7]}, r"sentences\[0\] is int"),
    ({"split": "train", "filename": "a.jpg", "sentences": [{"tokens": "a dog"}]}, "neither a 'raw' text"),
    ({"split": "train", "filename": "a.jpg", "filepath": 3, "sentences": [{"raw": "x"}]}, "'filepath' is int"),
])
def test_malformed_karpathy_files_are_dataset_errors_naming_the_entry(tmp_path, entry, message):
    with pytest.raises(DatasetError, match=message):
        read_karpathy(_karpathy(tmp_path, [entry]), "imgs", "train")


def test_karpathy_file_reads_and_non_utf8_files_are_refused(tmp_path):
    good = {"split": "restval", "filename": "a.jpg", "filepath": "val2014", "cocoid": 9,
            "sentences": [{"raw": " A dog. ", "tokens": ["a", "dog"]}, {"tokens": ["a", "pup"]}]}
    items = read_karpathy(_karpathy(tmp_path, [good, {"split": "test", "filename": "t.jpg"}]), "imgs", "train")
    assert items[0].image_id == "9" and items[0].captions == ("A dog.", "a pup")
    assert items[0].path == os.path.join("imgs", "val2014", "a.jpg")
    (tmp_path / "latin1.json").write_bytes('{"images": [{"filename": "caf\xe9.jpg"}]}'.encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_karpathy(str(tmp_path / "latin1.json"), "imgs", "train")


def test_non_utf8_flickr8k_caption_file_is_a_dataset_error(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_bytes("a.jpg#0\tun caf\xe9\n".encode("latin-1"))
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_flickr8k(str(tmp_path), "train")

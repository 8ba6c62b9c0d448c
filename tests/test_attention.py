"""Attention you can see: explain() on the bundled model and a real Flickr8k
photo, the overlay drawing (showtell/overlay.py) and `caption --attention`."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from showtell import cli
from showtell.captioner import get_captioner
from showtell.checkpoint import save_checkpoint
from showtell.confidence import NOT_SURE_MARK
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.model import CaptionModel
from showtell.overlay import attention_grid, attention_overlay, colormap, upsample, write_attention
from showtell.text import SPECIAL_TOKENS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "examples" / "cat.jpg"


@pytest.fixture(scope="module")
def val_photo(flickr8k_root):
    with open(os.path.join(flickr8k_root, "Flickr_8k.devImages.txt")) as f:
        name = f.readline().strip()
    return os.path.join(flickr8k_root, "Images", name)


@pytest.fixture(scope="module")
def explanation(val_photo):
    return get_captioner().explain(val_photo, beam_size=3)


def test_explain_gives_one_map_per_word_each_summing_to_one(explanation, val_photo):
    e = explanation
    assert e.words == e.text.split() and len(e.words) >= 3
    assert e.text == get_captioner()(val_photo, beam_size=3)  # the caption caption() gives
    assert e.attention.dtype == np.float32 and e.attention.shape == (len(e.words), 7, 7)
    assert (e.attention >= 0).all()
    np.testing.assert_allclose(e.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)


def test_attention_moves_between_words(explanation):
    maps = explanation.attention.reshape(len(explanation.words), -1)
    # Not one map repeated: most pairs of words differ clearly (total variation distance).
    distance = 0.5 * np.abs(maps[:, None] - maps[None]).sum(-1)
    pairs = distance[np.triu_indices(len(maps), 1)]
    assert (pairs > 0.05).mean() > 0.5, pairs
    assert len({int(m.argmax()) for m in maps}) >= 2  # the peak moves at least once
    assert (maps.max(1) > 2 / maps.shape[1]).all()  # each map is peaked, not uniform


def test_overlay_has_the_photo_size_and_is_smooth():
    photo = Image.open(CAT).convert("RGB")
    a = np.zeros((7, 7), np.float32)
    a[2, 5] = 1.0  # all attention on one cell
    out = attention_overlay(photo, a)
    assert out.size == photo.size and out.mode == "RGB"
    heat = upsample(a, photo.size)
    assert heat.shape == (photo.height, photo.width) and heat.max() == pytest.approx(1.0)
    assert len(np.unique(heat.round(3))) > 100  # smooth, not 49 flat blocks
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert abs(x / photo.width - 5.5 / 7) < 0.1 and abs(y / photo.height - 2.5 / 7) < 0.1
    # Where the model looked is brighter than where it did not.
    lum = np.asarray(out.convert("L"), np.float32)
    assert lum[heat > 0.8].mean() > lum[heat < 0.05].mean() + 30
    with pytest.raises(ValueError, match="2-D"):
        attention_overlay(photo, np.ones(49, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        attention_overlay(photo, np.full((7, 7), np.nan, np.float32))


def test_colormap_runs_dark_to_bright():
    rgb = colormap(np.linspace(0, 1, 11))
    assert rgb.shape == (11, 3) and rgb.dtype == np.uint8
    lum = rgb.astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(lum) > 0).all() and lum[0] < 10 and lum[-1] > 230


def test_grid_holds_one_tile_per_word(explanation, val_photo):
    photo = Image.open(val_photo)
    grid = attention_grid(photo, explanation.words, explanation.attention, columns=4, tile=100)
    rows = -(-len(explanation.words) // 4)
    small_w, small_h = (100, round(100 * photo.height / photo.width)) if photo.width >= photo.height else \
        (round(100 * photo.width / photo.height), 100)
    assert grid.width == 4 * small_w and abs(grid.height - rows * (small_h + 20)) <= rows
    with pytest.raises(ValueError, match="3 words but"):
        attention_grid(photo, ["a", "b", "c"], explanation.attention[:2])


def test_caption_command_writes_one_overlay_per_word(tmp_path, capsys):
    out = tmp_path / "att"
    assert cli.main(["caption", str(CAT), "--attention", str(out)]) == 0
    caption = capsys.readouterr().out.strip().split("\t")[1]
    words = caption.removesuffix(" " + NOT_SURE_MARK).split()  # the text output marks an unsure caption
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"cat_{i:02d}_{w}.png" for i, w in enumerate(words, 1)] + ["cat_grid.png"])
    first = Image.open(out / files[0])
    assert first.size == Image.open(CAT).size  # the photo's size (at most 640 px: cat.jpg is 400)
    tiles = [np.asarray(Image.open(out / f"cat_{i:02d}_{w}.png"), np.float32) for i, w in enumerate(words, 1)]
    assert max(np.abs(t - tiles[0]).mean() for t in tiles[1:]) > 2  # the overlays differ between words


def test_caption_command_refuses_attention_for_a_model_without_it(tmp_path, capsys):
    torch.manual_seed(0)
    words = list(SPECIAL_TOKENS) + "a dog runs on the grass".split()
    model = CaptionModel.build(ModelConfig(embed_dim=16, hidden_dim=16, decoder="show_tell"), Vocabulary(words))
    ckpt = tmp_path / "nic.pt"
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig()), str(ckpt))
    out = tmp_path / "att"
    assert cli.main(["caption", str(CAT), "--checkpoint", str(ckpt), "--attention", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no attention to show" in err[0] and "show_tell" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_caption_command_refuses_a_file_as_the_attention_folder(tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"x")
    assert cli.main(["caption", str(CAT), "--attention", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_write_attention_names_files_by_word(tmp_path):
    photo = Image.new("RGB", (50, 30), "white")
    maps = np.full((2, 7, 7), 1 / 49, np.float32)
    paths = write_attention(photo, ["dog's", "run"], maps, str(tmp_path), "p")
    assert [os.path.basename(p) for p in paths] == ["p_01_dogs.png", "p_02_run.png", "p_grid.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)

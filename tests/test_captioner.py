"""caption(), Captioner and the command line, on a small checkpoint made here
and on the bundled model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from showtell import BUNDLED_MODEL, Captioner, ImageError, ScoredCaption, caption
from showtell.checkpoint import save_checkpoint
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = CaptionModel.build(ModelConfig(embed_dim=16, hidden_dim=16), Vocabulary(WORDS))
    with torch.no_grad():
        model.decoder.out.bias[2] = -2.0  # captions of a few words
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig()), str(path))
    return str(path)


@pytest.fixture(scope="module")
def captioner(small_checkpoint):
    return Captioner(small_checkpoint)


def test_every_input_kind_gives_the_same_caption(captioner):
    path = EXAMPLES / "coffee.jpg"
    pil = Image.open(path)
    expected = captioner(str(path))
    assert isinstance(expected, str) and expected
    assert set(expected.split()) <= set(WORDS[4:])
    for source in (path, path.read_bytes(), pil, np.asarray(pil.convert("RGB"))):
        assert captioner(source) == expected
    assert captioner([str(path), EXAMPLES / "cat.jpg"]) == [expected, captioner(EXAMPLES / "cat.jpg")]


def test_batched_captions_equal_one_at_a_time(captioner):
    paths = sorted(str(p) for p in EXAMPLES.glob("*.jpg")) * 3
    captioner.batch_size = 4
    assert captioner(paths, beam_size=3) == [captioner(p, beam_size=3) for p in paths]


def test_n_best_returns_scored_captions_best_first(captioner):
    best = captioner(EXAMPLES / "cat.jpg", beam_size=4, n_best=3)
    assert len(best) == 3 and all(isinstance(c, ScoredCaption) for c in best)
    assert [c.score for c in best] == sorted((c.score for c in best), reverse=True)
    assert len({c.text for c in best}) == 3
    assert all(c.logprob < 0 for c in best)
    assert best[0].text == captioner(EXAMPLES / "cat.jpg", beam_size=4)
    with pytest.raises(ValueError, match="n_best"):
        captioner(EXAMPLES / "cat.jpg", beam_size=2, n_best=3)
    with pytest.raises(TypeError, match="unknown decoding option"):
        captioner(EXAMPLES / "cat.jpg", beam_width=2)


def test_bad_images_raise_image_error_and_caption_each_keeps_the_good_ones(captioner, tmp_path):
    (tmp_path / "bad.jpg").write_text("not a photo")
    with pytest.raises(ImageError, match="not an image"):
        captioner(str(tmp_path / "bad.jpg"))
    with pytest.raises(ImageError, match="no such file"):
        captioner([EXAMPLES / "cat.jpg", tmp_path / "nope.jpg"])
    results = captioner.caption_each([EXAMPLES / "cat.jpg", tmp_path / "bad.jpg", EXAMPLES / "coffee.jpg"])
    assert isinstance(results[1], ImageError)
    assert results[0][0].text == captioner(EXAMPLES / "cat.jpg")
    assert results[2][0].text == captioner(EXAMPLES / "coffee.jpg")


def test_command_line_two_photos_and_one_bad_file(small_checkpoint, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((EXAMPLES / "cat.jpg").read_bytes()[:400])
    cmd = [sys.executable, "-m", "showtell", "caption", str(EXAMPLES / "cat.jpg"), str(bad),
           str(EXAMPLES / "coffee.jpg"), "--checkpoint", small_checkpoint, "--beam-size", "3", "--n-best", "2", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["image"]).name for r in lines] == ["cat.jpg", "broken.jpg", "coffee.jpg"]
    assert len(lines[0]["captions"]) == 2 and len(lines[2]["captions"]) == 2
    assert "truncated" in lines[1]["error"]
    ok = subprocess.run(cmd[:5] + [str(EXAMPLES / "coffee.jpg"), "--checkpoint", small_checkpoint], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ok.returncode == 0
    assert [line.split("\t")[0] for line in ok.stdout.splitlines()] == [str(EXAMPLES / "cat.jpg"),
                                                                        str(EXAMPLES / "coffee.jpg")]


def test_readme_example_with_the_bundled_model():
    assert os.path.getsize(BUNDLED_MODEL) <= 25 * 1024 * 1024
    text = caption(str(EXAMPLES / "cat.jpg"))
    assert isinstance(text, str) and len(text.split()) >= 3
    three = caption(str(EXAMPLES / "cat.jpg"), beam_size=3, n_best=3)
    assert three[0].text == text


def test_default_precision_gives_evaluates_captions(flickr8k_root):
    """caption() and evaluate decode the same way by default (the encoder in
    float32, the decoder's int8 steps on a CPU), so the figures `evaluate`
    reports are what a user gets."""
    from showtell.datasets import read_flickr8k
    from showtell.decoding import DecodeOptions
    from showtell.evaluation import caption_features
    from showtell.features import FeatureCache

    from showtell.decoders import FusedAttendSteps

    cap = Captioner()
    assert cap.precision == "float32"
    assert cap.decoder_precision == "int8"
    fused = cap.model.decoder._fused["int8"][1]
    assert isinstance(fused, FusedAttendSteps)  # made at load: caption() and evaluate both decode through it
    items = read_flickr8k(flickr8k_root, "test")[:8]
    fs = FeatureCache().get("flickr8k", "test", items, cap.model.encoder, num_workers=0, progress=False)
    # caption() is guided by default: evaluate's cached rows with the same threshold (and its tags
    # from the cached pooled rows) give the same captions.
    opts = DecodeOptions(beam_size=3, guidance_threshold=cap.defaults.guidance_threshold)
    cached = caption_features(cap.model, fs.for_decoder(cap.model.feature_kind), opts, pooled=fs.pooled)
    assert cap([it.path for it in items], beam_size=3) == [" ".join(c) for c in cached]
    plain = caption_features(cap.model, fs.for_decoder(cap.model.feature_kind), DecodeOptions(beam_size=3))
    assert cap([it.path for it in items], beam_size=3, guided=False) == [" ".join(c) for c in plain]
    with torch.no_grad():
        assert cap.model.decoder.decoding_steps("int8") is fused  # captioning changed no weight: never remade


def test_explain_returns_one_attention_map_per_word():
    cap = Captioner()
    photo = str(EXAMPLES / "cat.jpg")
    ex = cap.explain(photo, beam_size=3)
    assert ex.text == cap(photo, beam_size=3)
    assert ex.words == ex.text.split()
    assert ex.attention.shape == (len(ex.words), 7, 7) and ex.attention.dtype == np.float32
    assert np.allclose(ex.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
    # Where the model looks moves from word to word.
    assert any(not np.allclose(ex.attention[0], a, atol=1e-3) for a in ex.attention[1:])

"""Test-time augmentation: each photo's features averaged with its mirror image's,
the same through caption(), the feature cache and evaluate."""
from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.captioner import Captioner
from showtell.confidence import with_mark
from showtell.datasets import read_flickr8k
from showtell.decoding import DecodeOptions
from showtell.encoders import EncoderOutput, mirror_averaged
from showtell.evaluation import caption_features
from showtell.features import FeatureCache

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_mirrored_map_is_flipped_back_before_averaging():
    # An "encoder" whose map is the image itself: the mirror image's map, flipped
    # back, is the image again, so the average must equal the plain features;
    # averaging it unflipped would blur left into right.
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 1.5
    plain = EncoderOutput.of_map(images)
    got = mirror_averaged(EncoderOutput.of_map, images)
    assert got.grid == (4, 5)
    assert torch.allclose(got.spatial, plain.spatial) and torch.allclose(got.pooled, plain.pooled)
    # and what it averages is two different maps: the unflipped mean is not the plain map
    wrong = (plain.spatial + EncoderOutput.of_map(images.flip(-1)).spatial) / 2
    assert not torch.allclose(wrong, plain.spatial)
    # a map that is not the image: the average of a map and its mirror's, position by position
    def encode(x):
        return EncoderOutput.of_map(torch.nn.functional.avg_pool2d(x * x.mean(), 2))
    a, b = encode(images), encode(images.flip(-1))
    h, w = a.grid
    expected = (a.spatial + b.spatial.reshape(2, h, w, 3).flip(2).reshape(2, h * w, 3)) / 2
    assert torch.allclose(mirror_averaged(encode, images).spatial, expected)


@pytest.fixture(scope="module")
def captioners():
    return Captioner(), Captioner(mirror_average=True)


def test_captioner_cache_and_evaluate_agree_on_mirror_averaged_features(flickr8k_root, captioners, tmp_path):
    plain, mirrored = captioners
    items = read_flickr8k(flickr8k_root, "test")[:12]
    paths = [it.path for it in items]
    x = torch.stack([plain.pixels(p) for p in paths])
    a, m = plain.encode(x), mirrored.encode(x)
    flipped = plain.encode(x.flip(-1))
    assert torch.allclose(m.pooled, (a.pooled + flipped.pooled) / 2, atol=1e-6)
    assert not torch.allclose(m.spatial, a.spatial, atol=1e-3)  # it does change the features
    # the feature cache keeps them apart from the plain ones and stores the same rows
    cache = FeatureCache(str(tmp_path))
    enc = plain.model.encoder
    assert cache.path("flickr8k", "test", items, enc, mirror_average=True) != cache.path("flickr8k", "test", items, enc)
    fs = cache.get("flickr8k", "test", items, enc, num_workers=0, progress=False, mirror_average=True)
    assert np.allclose(fs.pooled, m.pooled.numpy(), atol=1e-4)
    assert np.allclose(np.asarray(fs.spatial, np.float32), m.spatial.numpy(), rtol=2e-3, atol=1e-3)
    # evaluate's captions from the cached rows are caption()'s
    opts = DecodeOptions(beam_size=3, guidance_threshold=mirrored.defaults.guidance_threshold)
    cached = caption_features(mirrored.model, fs.for_decoder(mirrored.model.feature_kind), opts, pooled=fs.pooled)
    assert mirrored(paths) == [" ".join(c) for c in cached]


def test_mirror_average_is_off_by_default_and_explain_follows_it(captioners):
    plain, mirrored = captioners
    assert (plain.mirror_average, mirrored.mirror_average) == (False, True)  # Captioner() is plain
    photo = str(EXAMPLES / "cat.jpg")
    ex = mirrored.explain(photo)
    assert ex.text == mirrored(photo)  # the caption explained is the mirror-averaged one
    assert ex.attention.shape == (len(ex.words), 7, 7)
    assert np.allclose(ex.attention.sum(axis=(1, 2)), 1, atol=1e-4)


def test_command_line_flags(tmp_path, capsys):
    from showtell.cli import get_compare_parser, main

    # --store records the checkpoint's own scores at the default decoding: not mirror-averaged ones
    bundled = str(Path(__file__).resolve().parent.parent / "showtell" / "models" / "showtell-flickr8k.pt")
    assert main(["evaluate", bundled, "--mirror-average", "--store"]) == 2
    assert "--mirror-average" in capsys.readouterr().err
    assert get_compare_parser().parse_args(["m.pt", "m.pt", "--mirror-average", "b"]).mirror_average == "b"
    with pytest.raises(SystemExit):
        get_compare_parser().parse_args(["m.pt", "m.pt", "--mirror-average", "yes"])
    # caption --mirror-average captions as Captioner(mirror_average=True) does
    photo = str(EXAMPLES / "cat.jpg")
    assert main(["caption", photo, "--mirror-average"]) == 0
    out = capsys.readouterr().out.strip().split("\t")
    (best,) = Captioner(mirror_average=True).caption_each([photo])[0]
    assert out == [photo, with_mark(best.text, best.confidence)]  # "(not sure)" appended when it is not

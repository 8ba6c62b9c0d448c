import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import ImageCaptions, read_flickr8k
from showtell.decoding import DecodeOptions, greedy_decode
from showtell.encoders import build_encoder
from showtell.features import FeatureCache
from showtell.images import load_image
from showtell.training import encode_captions, epoch_batches
from showtell.text import Vocabulary, tokenize


def _items(flickr8k_root, n, split="train"):
    return read_flickr8k(flickr8k_root, split)[:n]


def test_feature_cache_reuses_and_invalidates(flickr8k_root, tmp_path, monkeypatch):
    items = _items(flickr8k_root, 6)
    enc = build_encoder("resnet18", weights=None)
    cache = FeatureCache(str(tmp_path))
    calls = []
    original = type(enc).for_inference

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(type(enc), "for_inference", counting)
    first = cache.get("flickr8k", "train", items, enc, batch_size=4, num_workers=0, progress=False)
    assert first.pooled.shape == (6, 512) and first.spatial.shape == (6, 49, 512)
    assert first.spatial.dtype == np.float16
    with torch.no_grad():
        x = torch.stack([enc.preprocessing(load_image(it.path)) for it in items[:2]])
        expected = enc(x).pooled.numpy()
    assert np.allclose(first.pooled[:2], expected, atol=1e-3)
    assert len(calls) == 1
    again = cache.get("flickr8k", "train", items, enc, progress=False)
    assert len(calls) == 1  # reused: the CNN did not run again
    assert np.array_equal(again.pooled, first.pooled)
    # A different image list, preprocessing or encoder weights each give a new entry.
    cache.get("flickr8k", "train", items[:5], enc, num_workers=0, progress=False)
    assert len(calls) == 2
    object.__setattr__(enc, "preprocessing", type(enc.preprocessing)(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3))
    cache.get("flickr8k", "train", items, enc, num_workers=0, progress=False)
    assert len(calls) == 3
    enc.weights_id = "file:other"
    cache.get("flickr8k", "train", items, enc, num_workers=0, progress=False)
    assert len(calls) == 4
    assert len(os.listdir(tmp_path / "features")) == 4
    assert not [d for d in os.listdir(tmp_path / "features") if ".tmp" in d]


def test_missing_and_corrupt_images_are_skipped_with_one_warning(flickr8k_root, tmp_path):
    items = _items(flickr8k_root, 4)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(open(items[0].path, "rb").read()[:500])
    bad = [ImageCaptions("gone.jpg", str(tmp_path / "gone.jpg"), ("a dog",)),
           ImageCaptions("corrupt.jpg", str(corrupt), ("a cat",))]
    enc = build_encoder("resnet18", weights=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs = FeatureCache(str(tmp_path / "c")).get("x", "train", items[:2] + bad + items[2:], enc,
                                                   num_workers=0, progress=False)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1
    assert "skipped 2 of 6 images" in messages[0]
    assert [it.image_id for it in fs.items] == [it.image_id for it in items]
    assert fs.pooled.shape[0] == 4
    assert {s[0] for s in fs.skipped} == {"gone.jpg", "corrupt.jpg"}


def test_epoch_batches_cover_every_caption_once_and_depend_only_on_seed_and_epoch():
    lengths = torch.randint(5, 30, (1000,))
    a = epoch_batches(lengths, 64, seed=3, epoch=2)
    b = epoch_batches(lengths, 64, seed=3, epoch=2)
    c = epoch_batches(lengths, 64, seed=3, epoch=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(1000))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_encode_captions_packs_ids_compactly_and_exactly():
    items = [ImageCaptions("a", "a.jpg", ("A dog runs.", "the dog")),
             ImageCaptions("b", "b.jpg", ("a cat sits on a very long mat indeed",)),
             ImageCaptions("c", "c.jpg", ("zebra dog",))]
    vocab = Vocabulary.build([tokenize(c) for it in items for c in it.captions], min_count=1)
    caps, lengths, image_of = encode_captions(items, vocab, max_len=5)
    assert caps.dtype == torch.int16  # a small vocabulary fits int16: COCO's ids in a quarter of int64
    assert image_of.tolist() == [0, 0, 1, 2]
    expected = [vocab.encode(tokenize(c), 5) for it in items for c in it.captions]
    assert lengths.tolist() == [len(e) for e in expected]
    assert caps.shape == (4, 7)  # the longest row: <start> + 5 words + <end>
    for row, e in zip(caps.tolist(), expected):
        assert row == e + [vocab.pad_id] * (7 - len(e))
    big = Vocabulary.build([[f"w{i}" for i in range(40_000)]], min_count=1)
    wide, _, _ = encode_captions([ImageCaptions("d", "d.jpg", ("w39999 w1",))], big, max_len=5)
    assert wide.dtype == torch.int32 and wide[0, 1] == big.index["w39999"] > 32_767


def test_tiny_model_overfits_real_pairs_until_greedy_reproduces_caption(flickr8k_root):
    """Four real photos with one caption each: the decoder must learn to say them."""
    from showtell.decoders import build_decoder

    items = _items(flickr8k_root, 4)
    enc = build_encoder("efficientnet_lite0")
    fs = FeatureCache().get("flickr8k", "train", items, enc, num_workers=0, progress=False)
    feats = torch.from_numpy(np.array(fs.pooled))
    texts = [it.captions[0] for it in items]
    vocab = Vocabulary.build([tokenize(t) for t in texts], min_count=1)
    one_caption = [ImageCaptions(it.image_id, it.path, (t,)) for it, t in zip(items, texts)]
    caps, lengths, image_of = encode_captions(one_caption, vocab, max_len=40)
    caps = caps.long()
    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(decoder="show_tell", embed_dim=64, hidden_dim=128, dropout=0.0), len(vocab),
                        enc.feature_dim)  # NIC: pooled features
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(300):
        logits = dec(feats[image_of], caps)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), caps[:, 1:].reshape(-1),
                                                 ignore_index=vocab.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    opts = DecodeOptions(beam_size=1, max_len=40, block_repeat_words=False, block_repeat_trigrams=False)
    hyps = greedy_decode(dec, feats, opts, vocab.end_id, vocab.start_id, vocab.unk_id)
    assert [vocab.decode(h.tokens) for h in hyps] == [tokenize(t) for t in texts]
    assert all(h.finished for h in hyps)


@pytest.mark.parametrize("cores, cpu, gpu", [(1, 1, 1), (2, 1, 1), (16, 4, 15), (64, 16, 32)])
def test_feature_extraction_sizes_its_loader_and_batches_to_the_machine(monkeypatch, cores, cpu, gpu):
    from showtell.features import extraction_workers
    from showtell.inference import encoder_batch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    # On a CPU the encoder needs the cores (decoding is cheap); on a GPU decoding is the bottleneck.
    assert (extraction_workers(on_gpu=False), extraction_workers(on_gpu=True)) == (cpu, gpu)
    assert encoder_batch(on_gpu=False) < encoder_batch(on_gpu=True)

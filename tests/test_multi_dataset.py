"""Training on several datasets at once (``train.py --data A --data B@2``), on
small slices of the real Flickr8k and coco-2733: each dataset keeps its own
splits, its sampling weight is honoured, one vocabulary covers both, and a
killed run resumes to the same model."""
import json
import os

import numpy as np
import pytest
import torch

from showtell.checkpoint import load_checkpoint
from showtell.cli import get_train_parser
from showtell.cli.config_flags import config_from_args as _config_from_args
from showtell.config import DataConfig, DatasetSpec, ModelConfig, TrainConfig, parse_dataset_spec
from showtell.datasets import DatasetError, ImageCaptions, resolve_sources
from showtell.features import ConcatRows
from showtell.metrics import CiderD
from showtell.text import tokenize
from showtell.training import PerDatasetCider, combine_scores, epoch_batches, epoch_rows, train

from conftest import DATA

COCO2733 = os.path.join(DATA, "coco-2733")


@pytest.fixture(scope="session")
def coco2733() -> str:
    from conftest import _need

    return _need(os.path.join(COCO2733, "annotations", "captions_train.json")) and COCO2733


def test_dataset_specs_name_weight_and_refuse_what_cannot_work():
    assert parse_dataset_spec("../data/coco-2733@2.5") == DatasetSpec("coco-2733", "../data/coco-2733", 2.5)
    assert parse_dataset_spec("mine=/x/y/") == DatasetSpec("mine", "/x/y", 1.0)
    assert parse_dataset_spec("/x/dataset_coco.json").name == "coco"
    for bad, words in (("x@0", "above 0"), ("x@nan", "above 0"), ("x@two", "must be a number"), ("", "PATH"),
                       ("a b=/x", "may hold only")):
        with pytest.raises(ValueError, match=words):
            parse_dataset_spec(bad)
    with pytest.raises(ValueError, match="given twice"):
        DataConfig(datasets=("/a/flickr8k", "/b/flickr8k"))
    # The train.py flag, repeated, fills the config; a checkpoint's list comes back as the same tuple.
    args = get_train_parser().parse_args(["--data", "/a/f8k", "--data", "coco=/b/c@3"])
    cfg = _config_from_args(DataConfig, args)
    assert cfg.datasets == ("/a/f8k", "coco=/b/c@3")
    assert DataConfig(datasets=list(cfg.datasets)) == cfg


def test_each_dataset_is_told_by_its_folder_and_keeps_its_own_splits(flickr8k_root, coco_mini, coco2733, tmp_path):
    sources = resolve_sources(DataConfig(datasets=(flickr8k_root, coco2733 + "@2", "mini=" + coco_mini,
                                                   os.path.join(coco2733, "dataset_coco2733.json"))))
    assert [(s.name, s.weight, s.cfg.dataset) for s in sources] == [
        ("flickr8k", 1.0, "flickr8k"), ("coco-2733", 2.0, "coco"), ("mini", 1.0, "coco"),
        ("coco2733", 1.0, "karpathy")]
    flickr, coco, mini, karpathy = sources
    assert [len(flickr.split(s)) for s in ("train", "val", "test")] == [6000, 1000, 1000]
    ids = {s: {it.image_id for it in coco.split(s)} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [2233, 250, 250]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # The official-format folder and the Karpathy file give the same split, photos and captions.
    for split in ("train", "test"):
        assert {it.image_id for it in karpathy.split(split)} == ids[split]
    first = coco.split("test")[0]
    assert os.path.isfile(first.path) and len(first.captions) >= 5
    assert len(mini.split("train")) == 80
    with pytest.raises(DatasetError, match="needs --val-annotations"):
        mini.split("val")  # coco-mini holds a train split only: never another split's photos in its place
    with pytest.raises(DatasetError, match="not a dataset folder"):
        resolve_sources(DataConfig(datasets=(str(tmp_path),)))


def test_weights_set_how_often_each_dataset_is_seen_per_epoch():
    g = lambda: torch.Generator().manual_seed(5)
    a, b = torch.arange(0, 100), torch.arange(100, 130)
    rows = epoch_rows(130, [(a, 1.0), (b, 2.5)], g())
    counts = torch.bincount(rows, minlength=130)
    assert (counts[:100] == 1).all()
    assert sorted(counts[100:].tolist()) == [2] * 15 + [3] * 15  # 2.5 x 30 = 75 rows: every one twice, half thrice
    assert torch.equal(rows, epoch_rows(130, [(a, 1.0), (b, 2.5)], g()))  # a function of the seed alone
    half = torch.bincount(epoch_rows(130, [(a, 0.5), (b, 1.0)], g()), minlength=130)
    assert half[:100].sum() == 50 and half[:100].max() == 1 and (half[100:] == 1).all()
    # All weights 1: exactly the single-dataset order, so such runs train as they always did.
    lengths = torch.randint(5, 20, (130,))
    plain = epoch_batches(lengths, 16, seed=3, epoch=1)
    same = epoch_batches(lengths, 16, seed=3, epoch=1, groups=[(a, 1.0), (b, 1.0)])
    assert all(torch.equal(x, y) for x, y in zip(plain, same))


def test_joined_feature_rows_and_per_dataset_cider_read_each_part():
    parts = [np.random.rand(5, 3, 2).astype(np.float16), np.random.rand(7, 3, 2).astype(np.float16)]
    joined = ConcatRows(parts)
    whole = np.concatenate(parts)
    rows = np.array([11, 0, 5, 4, 5, 6])
    assert joined.shape == (12, 3, 2) and len(joined) == 12
    assert np.array_equal(joined[rows], whole[rows]) and np.array_equal(np.asarray(joined), whole)
    with pytest.raises(ValueError, match="shapes"):
        ConcatRows([np.zeros((2, 3)), np.zeros((2, 4))])
    refs_a = [[tokenize("a dog runs on the grass"), tokenize("a brown dog runs")], [tokenize("two men play")]]
    refs_b = [[tokenize("a plate of food on a table"), tokenize("food on a plate")]]
    cider = PerDatasetCider([CiderD(refs_a), CiderD(refs_b)])
    hyps = [tokenize("a dog runs"), tokenize("a plate of food"), tokenize("men play")]
    mean, each = cider.score_indices(hyps, [0, 2, 1])
    assert each[1] == pytest.approx(CiderD(refs_b).score_indices([hyps[1]], [0])[1][0])
    assert each[0] == pytest.approx(CiderD(refs_a).score_indices([hyps[0]], [0])[1][0])
    assert mean == pytest.approx(each.mean())


def test_combined_validation_is_the_plain_mean_with_each_dataset_kept():
    scores = combine_scores({"f": {"cider": 40.0, "bleu4": 20.0}, "c": {"cider": 60.0, "bleu4": 10.0}})
    assert scores["cider"] == 50.0 and scores["bleu4"] == 15.0
    assert scores["f/cider"] == 40.0 and scores["c/bleu4"] == 10.0
    assert combine_scores({"f": {"cider": 1.0}}) == {"cider": 1.0}


def _configs(flickr8k_root, coco2733, epochs=2):
    model = ModelConfig(encoder="resnet18", decoder="show_attend_tell", embed_dim=16, hidden_dim=16,
                        attention_dim=16)
    data = DataConfig(datasets=(flickr8k_root, coco2733 + "@2"), max_images=8, min_word_count=1)
    cfg = TrainConfig(epochs=epochs, batch_size=8, early_stop_patience=100, max_decode_len=8, checkpoint_every=2)
    return model, data, cfg


def test_two_datasets_train_together_with_one_vocabulary_and_resume_exactly(flickr8k_root, coco2733, tmp_path,
                                                                           monkeypatch):
    import showtell.training as training

    model_cfg, data_cfg, cfg = _configs(flickr8k_root, coco2733)
    cache = str(tmp_path / "cache")
    common = dict(encoder_weights=None, cache_dir=cache, device="cpu", progress=False, log=lambda s: None)
    real_step, calls = training.train_step, []

    def counted_step(*a, **k):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt("killed")
        return real_step(*a, **k)

    monkeypatch.setattr(training, "train_step", counted_step)
    die_at = -1
    summary = train(model_cfg, data_cfg, cfg, str(tmp_path / "whole"), **common)
    assert summary["finished"] and summary["best_epoch"] >= 1
    best = load_checkpoint(str(tmp_path / "whole" / "best.pt"))
    # The weight: every Flickr8k caption once an epoch, every COCO caption twice (batches of 8).
    flickr, coco = resolve_sources(data_cfg)
    n_caps = lambda source: sum(len(it.captions) for it in source.split("train"))
    assert len(calls) == 2 * -(-(n_caps(flickr) + 2 * n_caps(coco)) // 8)
    # One vocabulary over both: words that only one dataset's 8 photos use are in it.
    words = lambda source: {w for it in source.split("train") for c in it.captions for w in tokenize(c)}
    only_coco, only_flickr = words(coco) - words(flickr), words(flickr) - words(coco)
    assert only_coco and only_flickr and (only_coco | only_flickr) <= set(best["vocab"])
    # Validation: each dataset's figures, and best.pt chosen on their mean.
    rec = summary["history"][0]
    assert rec["val_cider"] == pytest.approx((rec["val_flickr8k/cider"] + rec["val_coco-2733/cider"]) / 2)
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["data"]["datasets"] == list(data_cfg.datasets)
    # Each dataset's features have their own cache entries, named by the dataset.
    entries = os.listdir(os.path.join(cache, "features"))
    assert {e.split("-train-")[0] for e in entries if "-train-" in e} == {"flickr8k", "coco-2733"}

    # Killed at its 4th step (mid-epoch, after the checkpoint of step 2), then resumed:
    # the same model and history as the run never stopped.
    calls.clear()
    die_at = 4
    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, data_cfg, cfg, str(tmp_path / "killed"), **common)
    die_at = -1
    resumed = train(model_cfg, data_cfg, cfg, str(tmp_path / "killed"), resume=True, **common)
    timeless = lambda history: [{k: v for k, v in r.items() if "seconds" not in k} for r in history]
    assert timeless(resumed["history"]) == timeless(summary["history"])
    again = load_checkpoint(str(tmp_path / "killed" / "best.pt"))
    assert all(torch.equal(again["decoder"][k], best["decoder"][k]) for k in best["decoder"])


def test_mirror_augment_reads_the_mirror_images_features_for_the_drawn_rows():
    from types import SimpleNamespace

    from showtell.features import FeatureSet
    from showtell.text import Vocabulary
    from showtell.training import BatchSource

    items = [ImageCaptions(str(i), f"{i}.jpg", (f"a dog number {i}", "a dog")) for i in range(6)]
    vocab = Vocabulary.build([tokenize(c) for it in items for c in it.captions], min_count=1)
    model = SimpleNamespace(vocab=vocab, feature_kind="pooled", preprocessing=None)
    plain = FeatureSet(items, np.arange(6, dtype=np.float32)[:, None].repeat(4, 1), np.zeros((6, 1, 4)), [])
    mirror = FeatureSet(items, -plain.pooled - 100, np.zeros((6, 1, 4)), [])
    source = lambda p: BatchSource(model, items, plain, per_image=False, max_caption_len=8, batch_size=4, seed=1,
                                   device=torch.device("cpu"), mirror_augment=p, mirrored=mirror)
    half = source(0.5)
    flags = half.mirror_flags(0, half.epoch(0))
    assert [torch.equal(a, b) for a, b in zip(flags, half.mirror_flags(0, half.epoch(0)))] == [True] * len(flags)
    drawn = torch.cat(flags)
    assert 0 < drawn.sum() < len(drawn)  # 12 rows at p = 0.5: some of each
    for rows, flip in zip(half.epoch(0), flags):
        feats = half.make_batch(rows, flip).features[:, 0]
        images = half.image_of[rows].float()
        assert torch.equal(feats, torch.where(flip, -images - 100, images))
    with pytest.raises(ValueError, match="mirrored features"):
        BatchSource(model, items, plain, per_image=False, max_caption_len=8, batch_size=4, seed=1,
                    device=torch.device("cpu"), mirror_augment=0.5, mirrored=None)


def test_mirrored_cache_holds_the_flipped_photos_features(flickr8k_root, tmp_path):
    from showtell.datasets import read_flickr8k
    from showtell.encoders import build_encoder
    from showtell.features import FeatureCache
    from showtell.images import load_image

    items = read_flickr8k(flickr8k_root, "val")[:2]
    torch.manual_seed(0)
    enc = build_encoder("resnet18", weights=None).eval()
    cache = FeatureCache(str(tmp_path / "c"))
    mirrored = cache.get("x", "val", items, enc, num_workers=0, progress=False, mirrored=True, runtime="torch")
    plain = cache.get("x", "val", items, enc, num_workers=0, progress=False, runtime="torch")
    assert len(os.listdir(os.path.join(str(tmp_path / "c"), "features"))) == 2  # cached apart
    x = torch.stack([enc.preprocessing(load_image(it.path)) for it in items])
    with torch.inference_mode():
        want = enc(x.flip(-1)).pooled.numpy()
    assert np.allclose(np.asarray(mirrored.pooled), want, atol=1e-4)
    assert not np.allclose(np.asarray(plain.pooled), want, atol=1e-4)


def test_scores_of_each_dataset_are_stored_by_name_and_shown_on_the_card():
    from types import SimpleNamespace

    from showtell.captioner import BUNDLED_MODEL
    from showtell.checkpoint import read_checkpoint
    from showtell.webapp import model_card

    ckpt = read_checkpoint(BUNDLED_MODEL)
    coco = {"bleu4": 20.0, "cider": 60.0, "images": 250, "beam_size": 3}
    own = {"bleu4": 22.0, "cider": 55.0, "images": 1000, "beam_size": 3}
    out = ckpt.with_scores("test", coco, dataset="coco-2733", own=False).with_scores("test", own, dataset="flickr8k")
    assert out.scores["test"] == own and out.dataset_scores == {"coco-2733": {"test": coco}, "flickr8k": {"test": own}}
    card = {"model_config": {}, "data_config": {"datasets": ["a/flickr8k", "a/coco-2733@2"]},
            "test_scores": own, "dataset_scores": out.dataset_scores, "val_scores": {"cider": 50.0, "flickr8k/cider": 1.0}}
    text = model_card(SimpleNamespace(card=card, confidence_threshold=-1.0, checkpoint="m.pt"))
    assert "Test scores on coco-2733:** BLEU-4 20.0, CIDEr-D 60.0 (250 photos, beam 3)" in text
    assert "Test scores on flickr8k" not in text  # the same as the model's own test scores, shown once
    assert "mean of 2 datasets' val splits" in text and "flickr8k/cider" not in text

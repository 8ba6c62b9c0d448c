import json
import os

import pytest

from showtell.config import DataConfig
from showtell.datasets import DatasetError, load_split, read_coco, read_flickr8k, read_karpathy
from showtell.text import END, PAD, START, UNK, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog's ball, on  the GRASS .") == ["a", "dog's", "ball", "on", "the", "grass"]
    assert tokenize("'quoted' -- words!") == ["quoted", "words"]
    assert tokenize("...") == []


def test_vocabulary_min_count_special_tokens_and_round_trip():
    caps = [tokenize(c) for c in ["a dog runs", "a dog jumps", "a cat sits", "the dog"]]
    vocab = Vocabulary.build(caps, min_count=2)
    assert vocab.words[:4] == [PAD, START, END, UNK]
    assert set(vocab.words[4:]) == {"a", "dog"}  # seen at least twice
    assert vocab.words[4] == "a" or vocab.words[4] == "dog"
    ids = vocab.encode(["a", "dog", "flies"])
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert ids[3] == vocab.unk_id
    assert vocab.decode(ids) == ["a", "dog", UNK]
    assert vocab.decode(vocab.encode(["a", "dog"]) + [vocab.index["a"]]) == ["a", "dog"]  # stops at <end>
    assert Vocabulary(list(vocab.words)) == vocab
    assert len(vocab.encode(["a"] * 50, max_len=10)) == 12


def test_vocabulary_rejects_bad_word_lists():
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError):
        Vocabulary([PAD, START, END, UNK, "a", "a"])


def test_flickr8k_reader_official_splits(flickr8k_root):
    sizes = {s: len(read_flickr8k(flickr8k_root, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 6000, "val": 1000, "test": 1000}
    test = read_flickr8k(flickr8k_root, "test")
    assert all(len(it.captions) == 5 for it in test)
    assert all(os.path.isfile(it.path) for it in test[:20])
    train_ids = {it.image_id for it in read_flickr8k(flickr8k_root, "train")}
    assert not train_ids & {it.image_id for it in test}
    with pytest.raises(DatasetError, match="split"):
        read_flickr8k(flickr8k_root, "dev2")
    with pytest.raises(DatasetError, match="not found"):
        read_flickr8k("/nonexistent", "train")


def test_coco_reader_on_real_coco_slice(coco_mini):
    items = read_coco(os.path.join(coco_mini, "annotations", "captions_train2017.json"),
                      os.path.join(coco_mini, "train2017"))
    assert len(items) == 80
    assert sum(len(it.captions) for it in items) == 400
    assert all(os.path.isfile(it.path) for it in items)
    assert all(it.image_id.isdigit() for it in items)
    cfg = DataConfig(dataset="coco", annotations=os.path.join(coco_mini, "annotations", "captions_train2017.json"),
                     image_root=os.path.join(coco_mini, "train2017"))
    assert load_split(cfg, "train") == items
    with pytest.raises(DatasetError, match="val-annotations"):
        load_split(cfg, "val")


def test_coco_reader_rejects_non_coco_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DatasetError):
        read_coco(str(bad), str(tmp_path))


def test_karpathy_reader_restval_counts_as_train(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 1,
         "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 2,
         "sentences": [{"tokens": ["a", "cat"], "raw": "A cat."}, {"tokens": ["cat"], "raw": "Cat"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "val", "cocoid": 3,
         "sentences": [{"tokens": ["a", "bird"], "raw": "A bird."}]},
        {"filepath": "val2014", "filename": "d.jpg", "split": "test", "cocoid": 4,
         "sentences": [{"tokens": ["a", "fish"]}]},
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    train = read_karpathy(str(path), "/coco", "train")
    assert [it.image_id for it in train] == ["1", "2"]
    assert train[1].path == os.path.join("/coco", "val2014", "b.jpg")
    assert train[1].captions == ("A cat.", "Cat")
    assert [it.image_id for it in read_karpathy(str(path), "/coco", "val")] == ["3"]
    test = read_karpathy(str(path), "/coco", "test")
    assert test[0].captions == ("a fish",)  # tokens joined when raw is absent
    cfg = DataConfig(dataset="karpathy", annotations=str(path), image_root="/coco")
    assert load_split(cfg, "train") == train
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DatasetError, match="images"):
        read_karpathy(str(tmp_path / "bad.json"), "/coco", "train")

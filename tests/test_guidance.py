"""ImageNet classes -> caption words, tags from classifier logits, constraints,
and the map's checkpoint round trip."""
import io
import json
import os

import pytest
import torch

from showtell.guidance import (CLASS_TABLE, STOP_SYNSETS, GuidanceMap, WordTag, class_words,
                               confident_constraints, load_class_table)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt")


@pytest.fixture(scope="module")
def table():
    return load_class_table()


@pytest.fixture(scope="module")
def vocab_words():
    return torch.load(BUNDLED, weights_only=True)["vocab"]


@pytest.fixture(scope="module")
def guide(vocab_words, table):
    return GuidanceMap.for_vocabulary(vocab_words, table)


def _index(table, name):
    return next(c["index"] for c in table["classes"] if c["name"] == name)


def test_class_table_is_in_classifier_order(table):
    classes = table["classes"]
    assert [c["index"] for c in classes] == list(range(1000))
    assert [c["wnid"] for c in classes] == sorted(c["wnid"] for c in classes)
    for i, wnid, name in [(0, "n01440764", "tench"), (207, "n02099601", "golden retriever"),
                          (281, "n02123045", "tabby"), (671, "n03792782", "mountain bike"),
                          (967, "n07920052", "espresso")]:
        assert (classes[i]["wnid"], classes[i]["name"]) == (wnid, name)
    for c in classes:  # every path runs from the class up to WordNet's root
        for path in c["paths"]:
            assert path[0] == c["wnid"] and path[-1] == "n00001740"
            assert all(s in table["synsets"] for s in path)
    # espresso -> coffee -> beverage -> food ...
    espresso = classes[967]["paths"][0]
    assert [table["synsets"][s]["lemmas"][0] for s in espresso[:4]] == ["espresso", "coffee", "beverage", "food"]


def test_stop_synsets_are_the_synsets_they_name(table):
    for wnid, lemmas in STOP_SYNSETS.items():
        if wnid in table["synsets"]:
            assert table["synsets"][wnid]["lemmas"][0] == lemmas.split(", ")[0], wnid


def test_known_classes_map_to_expected_words(table, vocab_words, guide):
    words = dict(zip(guide.names, guide.words))
    for name in ("tabby", "tiger cat", "Persian cat"):
        assert words[name] == ("cat", "cats")
    for name in ("golden retriever", "beagle", "Border terrier", "standard poodle", "Chihuahua"):
        assert words[name] == ("dog", "dogs"), name
    assert words["espresso"] == ("coffee",)
    assert set(words["mountain bike"]) == {"bike", "bikes", "bicycle", "bicycles"}  # not "wheel", "cycle"
    assert words["ski"] == ("ski", "skis")
    assert words["coffee mug"] == ("mug",)
    # Below a superordinate stop, the basic-level word still names the class.
    assert words["rocking chair"] == ("chair", "chairs")
    # The most specific word of the vocabulary on the path: COCO's captions say "pickup" (truck).
    assert words["pickup"] == (("pickup",) if "pickup" in vocab_words else ("truck", "trucks"))
    assert words["medicine chest"] == ()
    # Nothing maps to the words of the over-general synsets.
    general = {"animal", "thing", "object", "food", "device", "container", "structure", "person",
               "furniture", "vehicle", "vehicles", "machine", "tool", "clothing", "barrier"}
    assert not general & {w for ws in guide.words for w in ws}
    # Classes whose nearest in-vocabulary word would be over-general give no constraint.
    assert words["axolotl"] == ()
    # ... and a word the vocabulary holds names its class (COCO's captions say "clock").
    assert words["analog clock"] == (("clock", "clocks") if "clock" in vocab_words else ())
    # Every word is in the vocabulary.
    assert {w for ws in guide.words for w in ws} <= set(vocab_words)


def test_mapping_follows_the_vocabulary(table):
    vocab = ["<pad>", "<start>", "<end>", "<unk>", "a", "retriever", "terrier", "the", "dog"]
    words = class_words(table, vocab)
    # "dog" is not 10x more frequent than "retriever" here, so the specific word stays.
    assert words[_index(table, "golden retriever")] == ("retriever",)
    assert words[_index(table, "Border terrier")] == ("terrier",)
    assert words[_index(table, "beagle")] == ("dog",)  # no closer word in this vocabulary
    assert words[_index(table, "espresso")] == ()
    frequent_dog = ["<pad>", "<start>", "<end>", "<unk>", "dog"] + [f"w{i}" for i in range(40)] + ["retriever"]
    assert class_words(table, frequent_dog)[_index(table, "golden retriever")] == ("dog",)


def test_tags_and_merged_word_probabilities(guide, table):
    cat, tiger_cat, espresso = (_index(table, n) for n in ("tabby", "tiger cat", "espresso"))
    dogs = [_index(table, n) for n in ("beagle", "golden retriever", "Border terrier", "pug", "boxer")]
    logits = torch.full((2, 1000), -20.0)
    logits[0, dogs] = 0.0  # five breeds, ~20% each
    logits[1, [cat, tiger_cat]] = torch.tensor([1.0, 0.0])
    logits[1, espresso] = 0.5
    tags = guide.tags(logits, k=3)
    assert len(tags) == 2 and [len(t) for t in tags] == [3, 3]
    assert tags[1][0].class_index == cat and tags[1][0].name == "tabby" and tags[1][0].words == ("cat", "cats")
    assert tags[0][0].prob == pytest.approx(0.2, abs=1e-3)
    probs = [t.prob for t in tags[1]]
    assert probs == sorted(probs, reverse=True)
    word_tags = guide.word_tags(logits, k=2)
    assert word_tags[0][0].words == ("dog", "dogs")
    assert word_tags[0][0].prob == pytest.approx(1.0, abs=1e-3)  # no single breed is confident; "dog" is
    assert len(word_tags[0][0].classes) == 3 and set(word_tags[0][0].classes) <= {guide.names[i] for i in dogs}
    expected_cat = (torch.tensor([1.0, 0.0, 0.5]).softmax(0)[:2].sum()).item()
    assert word_tags[1][0].words == ("cat", "cats") and word_tags[1][0].prob == pytest.approx(expected_cat, abs=1e-3)
    assert word_tags[1][1].words == ("coffee",)
    with pytest.raises(ValueError, match="logits of shape"):
        guide.tags(torch.zeros(2, 10))


def test_confident_constraints():
    index = {"cat": 10, "cats": 11, "coffee": 12, "dog": 13}
    tags = [WordTag(("cat", "cats"), 0.6, ("tabby",)), WordTag(("coffee",), 0.3, ("espresso",))]
    assert confident_constraints(tags, index, threshold=0.5) == [(10, 11)]
    assert confident_constraints(tags, index, threshold=0.7) == []
    assert confident_constraints(tags, index, threshold=0.25, max_constraints=2) == [(10, 11), (12,)]
    assert confident_constraints(tags, index, threshold=0.25, max_constraints=1) == [(10, 11)]
    with pytest.raises(ValueError, match="another vocabulary"):
        confident_constraints([WordTag(("kitten",), 0.9, ("tabby",))], index, threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        confident_constraints(tags, index, threshold=0.0)


def test_checkpoint_round_trip(guide, vocab_words):
    buf = io.BytesIO()
    torch.save({"guidance": guide.to_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["guidance"]
    back = GuidanceMap.from_dict(loaded, vocab_words)
    assert back == guide
    logits = torch.randn(3, 1000)
    assert back.word_tags(logits) == guide.word_tags(logits)
    json.dumps(guide.to_dict())  # plain data all the way down
    with pytest.raises(ValueError, match="not in the vocabulary"):
        GuidanceMap.from_dict(guide.to_dict(), ["<pad>", "<start>", "<end>", "<unk>", "cat"])
    with pytest.raises(ValueError, match="keys"):
        GuidanceMap.from_dict({"names": []})
    with pytest.raises(ValueError, match="class names but"):
        GuidanceMap.from_dict({"names": ["a", "b"], "words": [["cat"]]})


def test_real_classifier_tags_the_example_photos(guide):
    """EfficientNet-Lite0's own ImageNet head, from the pooled features the
    captioner computes anyway, on two of the example photos."""
    from showtell.encoders import build_encoder
    from showtell.images import load_image

    enc = build_encoder("efficientnet_lite0")
    images = torch.stack([enc.preprocessing(load_image(os.path.join(ROOT, "examples", f)))
                          for f in ("cat.jpg", "coffee.jpg")])
    with torch.no_grad():
        logits = enc.classify_pooled(enc(images).pooled)
    cat, coffee = guide.word_tags(logits)
    assert cat[0].words == ("cat", "cats") and cat[0].prob > 0.8
    assert coffee[0].words == ("coffee",) and coffee[0].prob > 0.5
    assert guide.tags(logits)[1][0].name == "espresso"


def test_class_table_file_is_committed_json():
    with open(CLASS_TABLE) as f:
        assert len(json.load(f)["classes"]) == 1000

"""Caption metrics: our CIDEr-D against pycocoevalcap's on the Flickr8k test
captions, the COCO metrics (ROUGE-L, METEOR in Java) through
coco_caption_scores, what is reported when a scorer cannot run, and BLEU's
zero case. No model is needed: human captions serve as hypotheses."""
import math
import os
import random
import sys

import numpy as np
import pytest
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.cider.cider import Cider

from showtell.datasets import read_flickr8k
from showtell.metrics import CiderD, bleu_scores, caption_statistics, coco_caption_scores
from showtell.text import tokenize


@pytest.fixture(scope="module")
def test_refs(flickr8k_root):
    """The five tokenized captions of each of the 1,000 Flickr8k test images."""
    return [[tokenize(c) for c in item.captions] for item in read_flickr8k(flickr8k_root, "test")]


def held_out(refs):
    """Caption 0 of each image as its hypothesis, scored against the other four."""
    return [r[0] for r in refs], [r[1:] for r in refs]


def perturbed(refs):
    """Caption 0 of each image with a word dropped and two swapped, or for every
    fourth image another image's caption, against the image's other four."""
    rng = random.Random(0)
    hyps = []
    for i, r in enumerate(refs):
        words = list(refs[(i + 1) % len(refs)][0] if i % 4 == 3 else r[0])
        if len(words) > 3:
            del words[rng.randrange(len(words))]
            a, b = rng.sample(range(len(words)), 2)
            words[a], words[b] = words[b], words[a]
        hyps.append(words)
    return hyps, [r[1:] for r in refs]


def pycoco_cider(hyps, refs):
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    mean, per_image = Cider().compute_score(gts, res)
    return mean, np.asarray(per_image)


@pytest.mark.parametrize("make", [held_out, perturbed])
def test_cider_d_equals_pycocoevalcap(test_refs, make):
    hyps, refs = make(test_refs)
    want_mean, want = pycoco_cider(hyps, refs)
    cider = CiderD(refs)  # df from the scored references, as pycocoevalcap takes it
    mean, per_image = cider.score_indices(hyps, np.arange(len(hyps)))
    assert mean == pytest.approx(want_mean, abs=1e-4)
    np.testing.assert_allclose(per_image, want, atol=1e-4, rtol=0)
    mean2, per_image2 = cider.score(hyps, refs)
    assert mean2 == pytest.approx(want_mean, abs=1e-4)
    np.testing.assert_allclose(per_image2, want, atol=1e-4, rtol=0)
    assert want.std() > 0.1  # the comparison covers a real spread of scores, not a constant


def test_cider_d_repeated_indices_score_each_sample(test_refs):
    """SCST's shape: k samples per image, each against that image's references."""
    cider = CiderD(test_refs)
    images = np.repeat([3, 14, 159], 5)
    hyps = [test_refs[7 * j][j % 5] for j in range(15)]
    _, per_sample = cider.score_indices(hyps, images)
    _, expected = cider.score(hyps, [test_refs[i] for i in images])
    np.testing.assert_allclose(per_sample, expected, rtol=1e-12)
    assert per_sample.shape == (15,)


def test_cider_d_high_for_a_reference_and_zero_for_unrelated_words(test_refs):
    cider = CiderD(test_refs)
    idx = np.arange(len(test_refs))
    mean_same, same = cider.score_indices([r[0] for r in test_refs], idx)
    _, other = cider.score_indices([test_refs[(i + 500) % 1000][0] for i in idx], idx)
    _, unrelated = cider.score_indices([["zzyzx", "quux", "frobnicated"]] * 10, idx[:10])
    assert mean_same > 2.0 and same.min() > 1.0
    assert other.mean() < 0.1 * mean_same
    assert np.all(unrelated == 0.0)
    _, empty = cider.score_indices([[]], [0])
    assert empty[0] == 0.0


def test_cider_d_idf_comes_from_the_constructor_corpus():
    """A word present in every reference set of the df corpus weighs nothing."""
    hyp, refs = [["the", "dog"]], [[["a", "dog"]]]
    # "dog" in one set of two: idf ln 2 for "dog" and "the" (unseen), 0 for "a" (in both sets).
    # Unigram cosine = ln2^2 / (sqrt(2) ln2 * ln2) = 1/sqrt(2); no shared bigram; orders 3, 4 empty.
    rare = CiderD([[["a", "dog"]], [["a", "cat"]]])
    assert rare.score(hyp, refs)[0] == pytest.approx(10 * (1 / math.sqrt(2)) / 4, abs=1e-12)
    # "dog" in both sets: its idf is 0, so the only shared word counts for nothing.
    common = CiderD([[["a", "dog"]], [["the", "dog"]]])
    assert common.score(hyp, refs)[0] == 0.0


def test_cider_d_with_df_from_another_split(test_refs, flickr8k_root):
    dev = [[tokenize(c) for c in item.captions] for item in read_flickr8k(flickr8k_root, "val")]
    hyps, refs = held_out(test_refs)
    own = CiderD(refs).score(hyps, refs)[1]
    other = CiderD(dev).score(hyps, refs)[1]
    assert not np.allclose(own, other, atol=1e-4)  # df really changes
    assert np.corrcoef(own, other)[0, 1] > 0.95  # but two Flickr8k splits weigh n-grams alike


def test_cider_d_rejects_bad_input(test_refs):
    cider = CiderD(test_refs[:10])
    with pytest.raises(TypeError, match="list of words"):
        cider.score_indices(["a dog runs"], [0])
    with pytest.raises(TypeError, match="list of words"):
        cider.score_indices([[1, 2, 3]], [0])
    with pytest.raises(ValueError, match=r"indices must be integers in \[0, 10\)"):
        cider.score_indices([["a", "dog"]], [10])
    with pytest.raises(ValueError, match="as many indices"):
        cider.score_indices([["a", "dog"]], [0, 1])
    with pytest.raises(ValueError, match="reference set 1 must be a non-empty"):
        CiderD([[["a"]], []])
    with pytest.raises(ValueError, match="2 reference sets for 1 hypotheses"):
        cider.score([["a"]], [[["a"]], [["b"]]])


@pytest.fixture(scope="module")
def coco(test_refs):
    """One METEOR run (its JVM start is the expensive part) over three groups of
    hypotheses: 50 that are one of their references, 100 held-out human
    captions, 100 captions of other images."""
    same = [(r[0], r) for r in test_refs[:50]]
    human = [(r[0], r[1:]) for r in test_refs[50:150]]
    other = [(test_refs[(i + 500) % 1000][0], test_refs[i][1:]) for i in range(150, 250)]
    pairs = same + human + other
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    return hyps, refs, coco_caption_scores(refs, hyps, per_image=True)


def test_coco_caption_scores_report_every_metric(coco):
    hyps, refs, scores = coco
    assert scores["images"] == 250
    assert scores["notes"] == ["no SPICE: it downloads the Stanford CoreNLP models at run time"]
    assert {k: scores[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")} == bleu_scores(refs, hyps)
    assert scores["cider"] == pytest.approx(100 * CiderD(refs).score(hyps, refs)[0], abs=1e-2)
    assert scores["distinct_captions"] == 100.0
    assert scores["mean_length"] == pytest.approx(np.mean([len(h) for h in hyps]))
    for key in ("meteor", "rouge_l"):
        assert 5.0 < scores[key] < 100.0, key
        per = scores["per_image"][key]
        assert per.shape == (250,)
        same, human, other = per[:50], per[50:150], per[150:]
        assert same.min() > 90.0, key  # a hypothesis equal to a reference
        assert human.mean() > 2 * other.mean(), key  # human captions of the image beat other images'


def test_coco_caption_scores_without_pycocoevalcap(coco, monkeypatch):
    """Evaluation goes on without the optional package: BLEU and our CIDEr-D, and notes."""
    hyps, refs, full = coco
    for name in ("pycocoevalcap", "pycocoevalcap.cider.cider", "pycocoevalcap.rouge.rouge"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    scores = coco_caption_scores(refs, hyps)
    assert scores["rouge_l"] is None and scores["meteor"] is None
    assert scores["cider"] == pytest.approx(full["cider"], abs=1e-2)
    assert scores["bleu4"] == full["bleu4"]
    assert any("pycocoevalcap is not installed" in n for n in scores["notes"])


def _fake_java(tmp_path, monkeypatch, script):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n" + script + "\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")


@pytest.mark.parametrize("case", ["no java", "java fails", "java hangs"])
def test_coco_caption_scores_without_a_working_java(test_refs, tmp_path, monkeypatch, case):
    hyps, refs = held_out(test_refs[:20])
    if case == "no java":
        monkeypatch.setenv("PATH", str(tmp_path))
        why = "no 'java' on PATH"
    elif case == "java fails":
        _fake_java(tmp_path, monkeypatch, 'echo "Error: could not reserve enough space" >&2; exit 1')
        why = "could not reserve enough space"
    else:
        _fake_java(tmp_path, monkeypatch, "exec sleep 60")
        why = "timed out after 1 s"
    scores = coco_caption_scores(refs, hyps, meteor_timeout=1.0)
    assert scores["meteor"] is None
    assert any(n.startswith("no METEOR") and why in n for n in scores["notes"]), scores["notes"]
    assert scores["rouge_l"] > 0 and scores["cider"] > 0  # the rest is still reported


def test_bleu_is_zero_when_an_order_has_no_match():
    refs, hyps = [[["a", "b", "c", "d"]]], [["a", "b", "x", "y"]]
    scores = bleu_scores(refs, hyps)
    assert scores["bleu3"] == 0.0 and scores["bleu4"] == 0.0  # nltk alone gives ~1e-101 and ~1e-152
    assert scores["bleu1"] == pytest.approx(50.0)
    assert scores["bleu2"] == pytest.approx(100 * math.sqrt(0.5 * 1 / 3))
    assert bleu_scores(refs, [["x", "y"]]) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}


def test_bleu_is_nltk_corpus_bleu_on_real_captions(test_refs):
    hyps, refs = perturbed(test_refs)
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    want = corpus_bleu(refs, hyps, weights=weights)
    assert list(bleu_scores(refs, hyps).values()) == [100 * w for w in want]
    with pytest.raises(TypeError, match="list of words"):
        bleu_scores([["a dog"]], ["a dog"])


def test_caption_statistics():
    stats = caption_statistics([["a", "dog"], ["a", "dog"], ["a", "cat", "runs"], ["two", "dogs"]])
    assert stats == {"distinct_captions": 75.0, "mean_length": 2.25}

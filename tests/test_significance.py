"""The paired bootstrap (showtell.significance, `showtell compare`): BLEU from
per-photo statistics equals nltk's corpus BLEU, the draws are paired and
seeded, and the intervals tell a real difference from none. Human captions of
the Flickr8k test photos serve as hypotheses; the command runs the bundled
model against itself on coco-mini."""
import json
import os
import random

import numpy as np
import pytest

from showtell.cli import main
from showtell.datasets import read_flickr8k
from showtell.metrics import bleu_scores, coco_caption_scores
from showtell.significance import bleu_from_statistics, bleu_statistics, draws, paired_bootstrap
from showtell.text import tokenize

BUNDLED = os.path.join(os.path.dirname(__file__), "..", "showtell", "models", "showtell-flickr8k.pt")


@pytest.fixture(scope="module")
def test_refs(flickr8k_root):
    return [[tokenize(c) for c in item.captions] for item in read_flickr8k(flickr8k_root, "test")]


def _scored(refs, hyps):
    per = coco_caption_scores(refs, hyps, meteor=False, per_image=True)["per_image"]
    return {"captions": hyps, "per_image": per}


def test_bleu_from_per_photo_statistics_is_nltks_corpus_bleu(test_refs):
    rng = random.Random(0)
    hyps, refs = [], [r[1:] for r in test_refs]
    for i, r in enumerate(test_refs):
        words = list(r[0])
        if i % 3 == 0:
            words = words[:rng.randrange(1, 4)]  # shorter than 4 words: nltk counts such a sentence as 1 n-gram
        if i % 7 == 0:
            words = test_refs[(i + 5) % len(test_refs)][0]  # another photo's caption
        hyps.append(words)
    hyps[10] = []  # an empty caption counts too
    totals = bleu_statistics(refs, hyps).sum(axis=0)
    want = bleu_scores(refs, hyps)
    for n in range(1, 5):
        assert float(bleu_from_statistics(totals, n)) == pytest.approx(want[f"bleu{n}"], abs=1e-9)


def test_bleu_from_statistics_is_zero_without_a_match_of_some_order():
    refs, hyps = [[["a", "dog", "runs", "fast"]]], [["a", "cat", "sits", "down"]]
    totals = bleu_statistics(refs, hyps).sum(axis=0)
    assert float(bleu_from_statistics(totals, 1)) > 0
    assert float(bleu_from_statistics(totals, 2)) == 0.0 == bleu_scores(refs, hyps)["bleu2"]


def test_draws_are_seeded_counts_of_every_photo():
    w = draws(50, 200, seed=3)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    assert (w == draws(50, 200, seed=3)).all() and not (w == draws(50, 200, seed=4)).all()
    assert (w == 0).any(axis=1).mean() > 0.9  # with replacement: most draws leave some photo out
    with pytest.raises(ValueError, match="no photos"):
        draws(0, 10)


def test_the_same_captions_differ_by_nothing(test_refs):
    refs = [r[1:] for r in test_refs[:200]]
    hyps = [r[0] for r in test_refs[:200]]
    a = _scored(refs, hyps)
    result = paired_bootstrap(refs, a, a, resamples=300)
    assert set(result) == {"bleu4", "cider", "rouge_l"}
    for m in result.values():
        assert m["difference"] == 0.0 and m["difference_interval"] == (0.0, 0.0) and m["b_not_ahead"] == 1.0
        lo, hi = m["a_interval"]
        assert lo < m["a"] < hi and m["a_interval"] == m["b_interval"]


def test_better_captions_win_and_the_intervals_cover_the_full_sample(test_refs):
    refs = [r[1:] for r in test_refs[:300]]
    good = [r[0] for r in test_refs[:300]]
    poor = [test_refs[(i + 1) % 300][0] if i % 2 else r[0] for i, r in enumerate(test_refs[:300])]
    a, b = _scored(refs, poor), _scored(refs, good)
    result = paired_bootstrap(refs, a, b, resamples=500)
    want = coco_caption_scores(refs, good, meteor=False)
    for name, m in result.items():
        assert m["b"] == pytest.approx(want[name], abs=1e-9)
        assert m["difference"] == pytest.approx(m["b"] - m["a"])
        lo, hi = m["difference_interval"]
        assert 0 < lo < m["difference"] < hi and m["b_not_ahead"] == 0.0
    # The other way round, A is ahead in every draw.
    back = paired_bootstrap(refs, b, a, resamples=500)
    assert all(m["b_not_ahead"] == 1.0 and m["difference_interval"][1] < 0 for m in back.values())


def test_a_small_difference_on_few_photos_is_not_called_a_win(test_refs):
    """Eight photos of 40 with a slightly better caption: B is ahead, but the
    draws often leave those photos out, so the interval spans 0."""
    refs = [r[1:] for r in test_refs[:40]]
    a_caps = [r[0][:-1] if len(r[0]) > 4 else r[0] for r in test_refs[:40]]
    b_caps = [r[0] if i % 5 == 0 else c for i, (r, c) in enumerate(zip(test_refs[:40], a_caps))]
    result = paired_bootstrap(refs, _scored(refs, a_caps), _scored(refs, b_caps), resamples=1000)
    m = result["cider"]
    assert m["difference"] > 0 and m["difference_interval"][0] <= 0 < m["difference_interval"][1]


def test_captions_of_different_photos_are_refused(test_refs):
    refs = [r[1:] for r in test_refs[:5]]
    a = _scored(refs, [r[0] for r in test_refs[:5]])
    with pytest.raises(ValueError, match="not the same photos"):
        paired_bootstrap(refs, a, {"captions": a["captions"][:4], "per_image": {}})


def test_compare_command_on_coco_mini(coco_mini, capsys):
    """`showtell compare` scores both checkpoints on the same photos: the bundled
    model against itself differs by nothing, and the JSON line carries
    evaluate's figures for it."""
    ann = os.path.join(coco_mini, "annotations", "captions_train2017.json")
    flags = ["--dataset", "coco", "--annotations", ann, "--image-root", os.path.join(coco_mini, "train2017"),
             "--split", "train", "--no-progress", "--resamples", "200"]
    assert main(["compare", BUNDLED, BUNDLED] + flags) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["images"] == 80 and result["changed_captions"] == 0 and result["resamples"] == 200
    assert "80 photos, 0 captions differ" in out and "CIDEr-D" in out
    for m in result["metrics"].values():
        assert m["difference"] == 0 and m["b_not_ahead"] == 1.0
    assert main(["evaluate", BUNDLED] + flags[:-2]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # caption()'s decoding, as evaluate's: each model (here both) with its own calibrated guidance
    assert result["guidance_threshold"] == [evaluated["guidance_threshold"]] * 2
    assert result["guidance_fallback"] == [evaluated["guidance_fallback"]] * 2
    for name in ("bleu4", "cider", "rouge_l"):
        assert result["metrics"][name]["a"] == pytest.approx(evaluated[name], abs=0.006)  # evaluate rounds to 2 places


def test_compare_flag_mistakes_come_before_loading(tmp_path, capsys):
    assert main(["compare", BUNDLED, str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["compare", BUNDLED, BUNDLED, "--resamples", "0"]) == 2
    assert "--resamples" in capsys.readouterr().err

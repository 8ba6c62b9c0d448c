"""The 'not sure' signal (showtell/confidence.py): the candidate signals on
hand-made n-best lists, then the kept one on the bundled model: a Flickr8k val
photo of the kind the model knows against random noise."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from showtell.captioner import ScoredCaption, get_captioner
from showtell.confidence import THRESHOLD, agreement, best_share, confidence, mean_logprob, signals


def test_mean_logprob_counts_the_end_token():
    assert mean_logprob("a dog runs", -4.0) == pytest.approx(-1.0)


def test_best_share_and_agreement():
    assert best_share([-1.0, -1.0]) == pytest.approx(0.5)
    assert best_share([-1.0, -1.0 - math.log(3)]) == pytest.approx(0.75)
    assert agreement(["a dog runs"]) == 1.0
    assert agreement(["a dog runs", "a dog runs", "the cat sleeps"]) == pytest.approx(0.5)


def test_confidence_is_not_sure_below_the_threshold():
    words = "a dog runs on the grass"
    sure = confidence([ScoredCaption(words, (THRESHOLD + 0.01) * 7, 0.0)])
    unsure = confidence([ScoredCaption(words, (THRESHOLD - 0.01) * 7, 0.0)])
    assert sure.sure and sure.label == "fairly sure"
    assert not unsure.sure and unsure.label == "not sure"
    assert unsure.as_dict() == {"signal": "mean_logprob", "value": round(unsure.value, 4),
                                "threshold": THRESHOLD, "sure": False, "label": "not sure"}
    assert set(signals([ScoredCaption(words, -7.0, 0.0)] * 2)) == {"mean_logprob", "best_share", "agreement"}


def test_the_bundled_model_is_surer_of_a_flickr8k_photo_than_of_noise(flickr8k_root):
    with open(os.path.join(flickr8k_root, "Flickr_8k.devImages.txt")) as f:
        photos = [os.path.join(flickr8k_root, "Images", next(f).strip()) for _ in range(8)]
    rng = np.random.default_rng(0)
    # The calibration's three kinds of noise: uniform, smooth blobs, stripes.
    noise = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(6)]
    noise += [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((224, 224), Image.BICUBIC)
              for _ in range(6)]
    noise += [Image.fromarray(np.repeat(rng.integers(0, 256, (1, 224, 3), dtype=np.uint8), 224, axis=0))
              for _ in range(6)]
    captioner = get_captioner()
    results = captioner.caption_each(photos + noise, beam_size=3, n_best=3)
    threshold = captioner.confidence_threshold  # the one stored with the model, chosen on its val splits
    values = np.array([confidence(r, threshold).value for r in results])
    in_domain, out = values[:8], values[8:]
    # The signal is a tendency, not a guarantee, and a weak one for this model:
    # AUC 0.71 against noise on the calibration set (0.90 for the 0.2 model); it
    # is sure of uniform and blob noise (docs/confidence.md). Val photos are
    # still "sure" more often than noise, and stripes are "not sure".
    assert (in_domain >= threshold).mean() > (out >= threshold).mean(), (in_domain, out)
    assert (out[12:] < threshold).sum() >= 5, out

"""How sure the model is of its caption, from the model itself.

The signal is computed from the n-best list that beam search returns, with no
second model: :func:`signals` gives the candidates that
``benchmarks/calibrate_confidence.py`` compares on photos the model knows
(Flickr8k val) against photos it does not (examples/, coco-mini, noise);
:func:`confidence` is the one kept, with the threshold that script chose.
Rerun the script after retraining the model: the threshold belongs to a model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

# From `python benchmarks/calibrate_confidence.py` on the bundled model (beam 3,
# 3 captions, the page's decoding: guided, length penalty 1): the threshold on
# the mean per-word log-probability of the best caption that best separates
# Flickr8k val photos from the out-of-domain ones (AUC 0.81 against all
# out-of-domain photos; balanced accuracy 75.7% at -0.98; it was -1.05 with
# length penalty 0). See the README's "Confidence" for the figures per group.
SIGNAL = "mean_logprob"
THRESHOLD = -0.98


@dataclass(frozen=True)
class Confidence:
    """The confidence signal of one caption and what it means for a reader."""

    value: float  # the signal (see SIGNAL); higher is surer
    sure: bool  # value >= threshold
    threshold: float

    @property
    def label(self) -> str:
        return "fairly sure" if self.sure else "not sure"

    def as_dict(self) -> dict:
        return {"signal": SIGNAL, "value": round(self.value, 4), "threshold": self.threshold,
                "sure": self.sure, "label": self.label}


def _words(text: str) -> list[str]:
    return text.split()


def mean_logprob(text: str, logprob: float) -> float:
    """Log-probability per predicted token (the words and <end>)."""
    return logprob / (len(_words(text)) + 1)


def best_share(logprobs: Sequence[float]) -> float:
    """The best caption's share of the n-best probability mass (softmax)."""
    top = max(logprobs)
    return 1.0 / sum(math.exp(lp - top) for lp in logprobs)


def agreement(texts: Sequence[str]) -> float:
    """Mean word overlap (Jaccard) between the best caption and the others:
    captions that say the same thing in different words mean the model is sure
    of the content; 1.0 for a single caption."""
    if len(texts) < 2:
        return 1.0
    best = set(_words(texts[0]))
    others = [set(_words(t)) for t in texts[1:]]
    return sum(len(best & o) / max(1, len(best | o)) for o in others) / len(others)


def signals(captions: Sequence) -> dict[str, float]:
    """Every candidate signal of one image's n-best list (objects with ``text``
    and ``logprob``, best first)."""
    texts = [c.text for c in captions]
    lps = [c.logprob for c in captions]
    return {"mean_logprob": mean_logprob(texts[0], lps[0]), "best_share": best_share(lps),
            "agreement": agreement(texts)}


def confidence(captions: Sequence, threshold: float = THRESHOLD) -> Confidence:
    """The confidence of the best caption of an n-best list (best first)."""
    value = signals(captions)[SIGNAL]
    return Confidence(value, value >= threshold, threshold)


__all__ = ["Confidence", "confidence", "signals", "mean_logprob", "best_share", "agreement", "SIGNAL",
           "THRESHOLD"]

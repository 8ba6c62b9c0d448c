"""How sure the model is of its caption, from the model itself.

The signal is computed from the n-best list that beam search returns, with no
second model: :func:`signals` gives the candidates that
``benchmarks/calibrate_confidence.py`` compares on photos the model knows
(Flickr8k val) against photos it does not (examples/, coco-mini, noise);
:func:`confidence` is the one kept, with the threshold that script chose.
The threshold belongs to a model, so it is stored with it: a checkpoint's
optional ``calibration`` mapping holds ``confidence_threshold``
(:func:`threshold_of`); a checkpoint without one gets :data:`THRESHOLD`, the
bundled model's. Rerun the script after retraining.

Every surface says the same thing from this one definition: ``ScoredCaption.confidence``
in Python, ``"confidence"`` in ``showtell caption --json`` and in the web API,
the marker :data:`NOT_SURE_MARK` in the command line's text, the badge on the page.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# From `python benchmarks/calibrate_confidence.py` on the bundled model (beam 3,
# 3 captions, the page's decoding: guided, length penalty 1): the threshold on
# the mean per-word log-probability of the best caption that best separates
# Flickr8k val photos from the out-of-domain ones (AUC 0.81 against all
# out-of-domain photos; balanced accuracy 75.7% at -0.98; it was -1.05 with
# length penalty 0). See the README's "Confidence" for the figures per group.
SIGNAL = "mean_logprob"
THRESHOLD = -0.98
CALIBRATION_KEY = "confidence_threshold"  # in a checkpoint's optional "calibration" mapping
NOT_SURE_MARK = "(not sure)"  # what the command line's text output appends to a caption the model is not sure of


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


def threshold_of(checkpoint: Mapping[str, Any]) -> float:
    """The confidence threshold stored with a model: ``checkpoint["calibration"]
    ["confidence_threshold"]`` when the checkpoint has one, else :data:`THRESHOLD`.
    A stored value that is not a finite number raises ValueError naming it."""
    calibration = checkpoint.get("calibration") or {}
    if not isinstance(calibration, Mapping):
        raise ValueError(f"calibration must be a mapping, got {type(calibration).__name__}")
    value = calibration.get(CALIBRATION_KEY, THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"calibration[{CALIBRATION_KEY!r}] must be a finite number, got {value!r}")
    return float(value)


def caption_confidence(text: str, logprob: float, threshold: float = THRESHOLD) -> Confidence:
    """The confidence of one caption (its words and summed log-probability)."""
    value = mean_logprob(text, logprob)
    return Confidence(value, value >= threshold, threshold)


def with_mark(text: str, conf: Confidence | None) -> str:
    """A caption as the command line prints it: marked when the model is not sure."""
    return text if conf is None or conf.sure else f"{text} {NOT_SURE_MARK}"


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
    return caption_confidence(captions[0].text, captions[0].logprob, threshold)


__all__ = ["Confidence", "confidence", "caption_confidence", "threshold_of", "with_mark", "signals",
           "mean_logprob", "best_share", "agreement", "SIGNAL", "THRESHOLD", "CALIBRATION_KEY", "NOT_SURE_MARK"]

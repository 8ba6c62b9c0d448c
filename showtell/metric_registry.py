"""The caption metrics showtell reports, declared once.

Every place that names a metric reads this table: the score dicts of
``evaluate`` (:func:`showtell.metrics.coco_caption_scores`, in this order),
``compare``'s paired bootstrap (:data:`showtell.significance.RESAMPLED`), the
choice of best.pt (``TrainConfig.SELECT_METRICS``, ``--select-metric``), the
command line's labels and the model card's. Plain data, without numpy or
torch, so the configs and ``--help`` can read it for free.

To add a metric: compute it in ``metrics.py`` (:func:`coco_caption_scores`)
and add its row here (CONTRIBUTING.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str  # its key in score dicts and checkpoints ("cider")
    label: str  # how people write it ("CIDEr-D")
    resampled: bool = False  # compare's paired bootstrap gives it intervals (showtell.significance)
    selects: bool = False  # may pick best.pt and stop early (--select-metric): validation computes it


# In the order score dicts list them.
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("bleu1", "BLEU-1"),
    Metric("bleu2", "BLEU-2"),
    Metric("bleu3", "BLEU-3"),
    Metric("bleu4", "BLEU-4", resampled=True, selects=True),
    Metric("cider", "CIDEr-D", resampled=True, selects=True),
    Metric("rouge_l", "ROUGE-L", resampled=True),
    Metric("meteor", "METEOR"),
)}


def metric(key: str) -> Metric:
    """The metric ``key``; a clear error names the known ones."""
    if key not in METRICS:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)}")
    return METRICS[key]


def label(key: str) -> str:
    """How a score's key is written for people ("cider" -> "CIDEr-D"); a key
    that is no metric (``images``, ``distinct_captions``) is returned as it is."""
    return METRICS[key].label if key in METRICS else key

"""Is model B really better than model A on these photos? The paired bootstrap.

A caption metric on a few hundred photos (or coco-mini's 80) moves by a
point or two with the sample of photos alone. The paired bootstrap (Koehn
2004, "Statistical significance tests for machine translation evaluation")
draws the photos with replacement many times, scores both models' captions
on each draw, and reads the spread of B - A: the 95 % interval of the
difference, and how often B is not ahead.

Every metric is recomputed on each draw the way the corpus figure is:
- BLEU-n from per-photo sufficient statistics (clipped n-gram matches,
  n-gram counts, caption length, closest reference length) summed over the
  draw, exactly as ``nltk``'s ``corpus_bleu`` sums them (a test checks that
  the full sample gives :func:`showtell.metrics.bleu_scores`);
- CIDEr-D and ROUGE-L as means of per-photo scores, CIDEr-D's document
  frequencies staying those of the whole reference set (as the COCO scorer
  fixes them for the set it is given).
METEOR is not resampled: its corpus score comes from the Java scorer's own
aggregation, not a mean of per-photo scores.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .defaults import BOOTSTRAP_RESAMPLES
from .metric_registry import METRICS
from .metrics import Tokens, _check_pairs

MAX_N = 4
# Columns of bleu_statistics: caption length, closest reference length, then
# clipped matches and n-gram counts for n = 1..MAX_N.
_HYP, _REF, _MATCH, _COUNT = 0, 1, 2, 2 + MAX_N
# What compare resamples (showtell.metric_registry): BLEU-4 from summed
# statistics, the others as means of per-photo scores.
RESAMPLED = tuple(k for k, m in METRICS.items() if m.resampled)


def bleu_statistics(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> np.ndarray:
    """(N, 2 + 2 * MAX_N) per-photo sufficient statistics of corpus BLEU, as
    nltk's ``corpus_bleu`` counts them: caption length, the closest reference
    length (ties to the shorter), then clipped n-gram matches and the n-gram
    count (at least 1, as nltk's denominator) for n = 1..4."""
    _check_pairs(references, hypotheses)
    stats = np.zeros((len(hypotheses), 2 + 2 * MAX_N), dtype=np.int64)
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        stats[i, _HYP] = len(hyp)
        stats[i, _REF] = min((len(r) for r in refs), key=lambda n: (abs(n - len(hyp)), n))
        for n in range(1, MAX_N + 1):
            counts = Counter(zip(*(hyp[j:] for j in range(n))))
            most: Counter = Counter()
            for r in refs:
                most |= Counter(zip(*(r[j:] for j in range(n))))  # max count over the references
            stats[i, _MATCH + n - 1] = sum(min(c, most[g]) for g, c in counts.items())
            stats[i, _COUNT + n - 1] = max(1, sum(counts.values()))
    return stats


def bleu_from_statistics(totals: np.ndarray, n: int = 4) -> np.ndarray:
    """BLEU-n (x100) of summed statistics: ``totals`` (..., 2 + 2 * MAX_N),
    e.g. one row per bootstrap draw. 0 where some order up to n has no match,
    as :func:`showtell.metrics.bleu_scores` reports it."""
    totals = np.asarray(totals, dtype=np.float64)
    c, r = totals[..., _HYP], totals[..., _REF]
    match, count = totals[..., _MATCH:_MATCH + n], totals[..., _COUNT:_COUNT + n]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.where(match > 0, np.log(np.maximum(match, 1e-300)) - np.log(count), 0.0).mean(axis=-1)
        bp = np.where(c > r, 1.0, np.where(c > 0, np.exp(1.0 - r / np.maximum(c, 1e-300)), 0.0))
    return np.where((match > 0).all(axis=-1), 100.0 * bp * np.exp(log_p), 0.0)


def draws(n_photos: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n_photos) counts: how often each photo is in each draw of
    ``n_photos`` photos with replacement. The same draws score both models."""
    if n_photos < 1:
        raise ValueError("no photos to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_photos, size=(resamples, n_photos))
    offsets = (np.arange(resamples) * n_photos)[:, None]
    return np.bincount((picks + offsets).ravel(), minlength=resamples * n_photos).reshape(resamples, n_photos)


def resampled_scores(weights: np.ndarray, bleu_stats: np.ndarray, per_image: dict[str, np.ndarray]) -> dict:
    """Each metric of RESAMPLED (that ``per_image`` has, plus BLEU-4) on each
    draw: ``weights`` (R, N) from :func:`draws`, ``bleu_stats`` (N, ...) from
    :func:`bleu_statistics`, ``per_image`` metric -> (N,) scores."""
    w = weights.astype(np.float64)
    out = {"bleu4": bleu_from_statistics(w @ bleu_stats.astype(np.float64), 4)}
    for name in RESAMPLED:
        if name != "bleu4" and per_image.get(name) is not None:
            out[name] = w @ np.asarray(per_image[name], dtype=np.float64) / weights.shape[1]
    return out


def paired_bootstrap(references: Sequence[Sequence[Tokens]], a: dict, b: dict, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of two models' captions of the same photos.

    ``a`` and ``b``: {"captions": tokenized captions, "per_image": {"cider",
    "rouge_l"} arrays (x100, as :func:`showtell.metrics.coco_caption_scores`
    returns with per_image=True; None where not computed)}.

    Returns metric -> {"a", "b", "difference" (b - a on all photos),
    "a_interval", "b_interval", "difference_interval" (the central ``level``
    share of the draws), "b_not_ahead" (share of draws where b - a <= 0)} for
    BLEU-4 and whichever of CIDEr-D and ROUGE-L both have."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if len(a["captions"]) != len(b["captions"]):
        raise ValueError(f"{len(a['captions'])} captions against {len(b['captions'])}: not the same photos")
    n = len(references)
    everything = np.ones((1, n), dtype=np.int64)
    weights = draws(n, resamples, seed)
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    results = {}
    stats = [bleu_statistics(references, m["captions"]) for m in (a, b)]
    full = [resampled_scores(everything, s, m["per_image"]) for s, m in zip(stats, (a, b))]
    drawn = [resampled_scores(weights, s, m["per_image"]) for s, m in zip(stats, (a, b))]
    for name in RESAMPLED:
        if name not in drawn[0] or name not in drawn[1]:
            continue
        da, db = drawn[0][name], drawn[1][name]
        diff = db - da
        results[name] = {
            "a": float(full[0][name][0]), "b": float(full[1][name][0]),
            "difference": float(full[1][name][0] - full[0][name][0]),
            "a_interval": tuple(float(x) for x in np.percentile(da, tails)),
            "b_interval": tuple(float(x) for x in np.percentile(db, tails)),
            "difference_interval": tuple(float(x) for x in np.percentile(diff, tails)),
            "b_not_ahead": float(np.mean(diff <= 0)),
        }
    return results

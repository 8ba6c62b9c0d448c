"""Caption metrics: BLEU-1..4 (nltk), a fast CIDEr-D for training, and the
COCO caption metrics (CIDEr-D, ROUGE-L, METEOR) from pycocoevalcap.

Every metric sees the same tokens: references and hypotheses are word lists
from :func:`showtell.text.tokenize` (lowercase, punctuation dropped), and
pycocoevalcap receives them joined by single spaces instead of running its
own PTB tokenizer, so BLEU, CIDEr-D, ROUGE-L and METEOR all score one text.

CIDEr-D: Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image
Description Evaluation", CVPR 2015 (arXiv:1411.5726), in the "-D" form that
pycocoevalcap's ``Cider`` computes.

SPICE (Anderson et al. 2016) is left out: pycocoevalcap's SPICE downloads the
Stanford CoreNLP 3.6.0 models (a zip of several hundred MB from
nlp.stanford.edu) on its first run, and nothing may download at run time.
"""
from __future__ import annotations

import itertools
import math
import shutil
import threading
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nltk.translate.bleu_score import corpus_bleu

from .metric_registry import METRICS

BLEU_WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]

Tokens = Sequence[str]


def _check_sentences(sentences: Sequence[Tokens], what: str) -> None:
    # A string is a sequence too: iterating it would score characters, not words.
    for i, s in enumerate(sentences):
        if isinstance(s, str) or not all(isinstance(w, str) for w in s):
            raise TypeError(f"{what} {i} must be a list of words (tokenized), got {type(s).__name__} {s!r:.60}")


def _check_pairs(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    _check_sentences(hypotheses, "hypothesis")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"reference set {i} must be a non-empty list of tokenized captions, got {refs!r:.60}")
        _check_sentences(refs, f"reference set {i}: caption")


# --- BLEU ---------------------------------------------------------------------------------------------------------

def _has_match(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n: int) -> bool:
    """Whether any hypothesis shares an n-gram with one of its references."""
    for refs, hyp in zip(references, hypotheses):
        grams = set(zip(*(hyp[i:] for i in range(n))))
        if grams and any(grams.intersection(zip(*(r[i:] for i in range(n)))) for r in refs):
            return True
    return False


def bleu_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> dict[str, float]:
    """BLEU-1..4 (x100) of tokenized hypotheses against lists of tokenized references.

    ``nltk.translate.bleu_score.corpus_bleu`` with uniform weights and no
    smoothing, except that BLEU-n is exactly 0 when some order up to n has no
    matching n-gram in the whole corpus (nltk returns about 1e-77..1e-230 there,
    from the float minimum it puts in place of a zero precision).
    """
    _check_pairs(references, hypotheses)
    references = [[list(r) for r in refs] for refs in references]
    hypotheses = [list(h) for h in hypotheses]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when an n-gram order has no match at all
        scores = corpus_bleu(references, hypotheses, weights=BLEU_WEIGHTS)
    out, matched = {}, True
    for n, s in enumerate(scores, 1):
        matched = matched and _has_match(references, hypotheses, n)
        out[f"bleu{n}"] = 100.0 * s if matched else 0.0
    return out


# --- CIDEr-D ------------------------------------------------------------------------------------------------------

_KEY = 1 << 32   # packs (row, n-gram id) into one int64: row * _KEY + id
_WORD = 1 << 24  # packs (id of an n-gram's first n-1 words, its last word id) into one int64


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """lo[0]..hi[0]-1, lo[1]..hi[1]-1, ... concatenated, without a Python loop."""
    count = hi - lo
    return np.arange(int(count.sum())) + np.repeat(lo - (np.cumsum(count) - count), count)


@dataclass(frozen=True)
class _NGrams:
    """The n-grams of a batch of sentences: one entry per occurrence."""
    gid: np.ndarray     # (E,) n-gram id: the corpus's, or past them for n-grams it lacks
    row: np.ndarray     # (E,) sentence of each occurrence
    length: np.ndarray  # (S,) CIDEr's length of each sentence (see CiderD._ngrams)
    extra_order: np.ndarray  # order - 1 of the ids past the corpus's, in id order


@dataclass(frozen=True)
class _References:
    """The reference captions of M images, as sparse tf rows sorted for lookup."""
    first: np.ndarray   # (M + 1,) references of image m are rows first[m]:first[m + 1]
    length: np.ndarray  # (R,) CIDEr's length of each reference
    norm: np.ndarray    # (R, n) L2 norm of each reference's tf-idf vector per n-gram order
    keys: np.ndarray    # (E,) image * _KEY + n-gram id, sorted: one entry per distinct n-gram of a reference
    row: np.ndarray     # (E,) the reference (row) of each entry
    tf: np.ndarray      # (E,) the n-gram's count in that reference
    entries: np.ndarray  # (M + 1,) the entries of image m are entries[m]:entries[m + 1]


class CiderD:
    """CIDEr-D with document frequencies fixed once, from a corpus of reference sets.

    Computes exactly what pycocoevalcap's ``Cider`` does (n = 1..4, sigma = 6:
    tf-idf n-gram vectors, the clipped numerator min(hyp, ref) * ref, a Gaussian
    length penalty, x10, averaged over an image's references), including its
    details: idf = log(number of reference sets) - log(max(1, df)), and a
    sentence's "length" is its number of bigrams. Given the same corpus as df
    source, the scores equal ``Cider().compute_score``'s to floating-point
    rounding; pycocoevalcap always takes df from the set being scored, while
    here it can come from the training references (the SCST practice).

    ``score_indices`` scores hypotheses against the corpus's own reference sets,
    whose tf-idf vectors are computed once in the constructor (the per-batch
    SCST reward); ``score`` takes any reference sets. Captions are word lists.
    """

    def __init__(self, references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0):
        if len(references) == 0:
            raise ValueError("CiderD needs at least one reference set to compute document frequencies from")
        if n < 1 or sigma <= 0:
            raise ValueError(f"CiderD needs n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
        for i, refs in enumerate(references):
            if isinstance(refs, str) or len(refs) == 0:
                raise ValueError(f"reference set {i} must be a non-empty list of tokenized captions, got {refs!r:.60}")
            _check_sentences(refs, f"reference set {i}: caption")
        self.n, self.sigma = n, sigma
        self.num_images = len(references)
        sentences = [r for refs in references for r in refs]
        self._words: dict[str, int] = {}
        for s in sentences:
            for w in s:
                self._words.setdefault(w, len(self._words))
        if len(self._words) >= _WORD:
            raise ValueError(f"CiderD supports at most {_WORD - 1} distinct words, the corpus has {len(self._words)}")
        # Per order, the sorted keys (prefix id, last word) of the corpus's n-grams;
        # an n-gram's id is its order's offset plus its rank there.
        self._keys: list[np.ndarray] = []
        self._offset: list[int] = []
        words, lengths = self._word_ids(sentences, {})
        self._order = np.zeros(0, dtype=np.int64)
        grams = self._ngrams(words, lengths, grow=True)
        first = np.concatenate([[0], np.cumsum([len(refs) for refs in references])])
        image = np.repeat(np.arange(len(references)), np.diff(first))[grams.row]
        # df: in how many reference sets (images) each n-gram occurs, as pycocoevalcap counts it.
        df = np.bincount(np.unique(image * _KEY + grams.gid) % _KEY, minlength=len(self._order))
        self._log_n = math.log(float(len(references)))
        self._idf = self._log_n - np.log(np.maximum(1.0, df))
        self._corpus = self._tabulate(grams, first)

    def _word_ids(self, sentences: Sequence[Tokens], extra: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(word ids of all sentences, one after another; each sentence's length).
        Words outside the corpus get ids past its words, shared through ``extra``."""
        for i, s in enumerate(sentences):
            if isinstance(s, str):
                raise TypeError(f"sentence {i} must be a list of words (tokenized), got the string {s!r:.60}")
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        flat = list(itertools.chain.from_iterable(sentences))
        ids = np.fromiter(map(self._words.get, flat, itertools.repeat(-1)), dtype=np.int64, count=len(flat))
        base = len(self._words)
        for j in np.flatnonzero(ids < 0):
            w = flat[j]
            if not isinstance(w, str):  # the corpus's words are strings: only unknown ones need checking
                raise TypeError(f"each caption must be a list of words (str), got {type(w).__name__} {w!r:.30}")
            ids[j] = extra.setdefault(w, base + len(extra))
        if base + len(extra) >= _WORD:
            raise ValueError(f"CiderD supports at most {_WORD - 1} distinct words")
        return ids, lengths

    def _ngrams(self, words: np.ndarray, lengths: np.ndarray, grow: bool = False) -> _NGrams:
        """All 1..n-grams of sentences given as concatenated word ids. N-grams the
        corpus lacks get ids past its own (one id per distinct n-gram of the call)."""
        S = len(lengths)
        start = np.cumsum(lengths) - lengths
        row = np.repeat(np.arange(S), lengths)                    # (L,) sentence of each word
        left = np.repeat(start + lengths, lengths) - np.arange(len(words))  # words from here to the end
        prefix = np.zeros(len(words), dtype=np.int64)             # id of the (k-1)-gram starting here
        gids, rows, extra_order = [], [], []
        next_extra = len(self._order)
        for k in range(self.n):
            at = np.flatnonzero(left > k)                          # (k+1)-grams start at these positions
            key = (prefix[at] * _WORD if k else 0) + words[at + k]
            if grow:
                table = np.unique(key)
                self._offset.append(len(self._order))
                self._keys.append(table)
                self._order = np.concatenate([self._order, np.full(len(table), k)])
                gid = self._offset[k] + np.searchsorted(table, key)
            else:
                uniq, inverse = np.unique(key, return_inverse=True)
                table = self._keys[k]
                j = np.minimum(np.searchsorted(table, uniq), len(table) - 1)
                known = table[j] == uniq if len(table) else np.zeros(len(uniq), dtype=bool)
                ids = self._offset[k] + j
                unknown = np.flatnonzero(~known)
                ids[unknown] = next_extra + np.arange(len(unknown))
                next_extra += len(unknown)
                extra_order.append(np.full(len(unknown), k, dtype=np.int64))
                gid = ids[inverse.reshape(-1)]
            prefix[at] = gid
            gids.append(gid)
            rows.append(row[at])
        # pycocoevalcap sums the counts of the n-grams whose index n == 1, i.e. bigrams:
        # its "length" is the number of words minus one.
        return _NGrams(gid=np.concatenate(gids), row=np.concatenate(rows),
                       length=np.maximum(lengths - 1, 0).astype(np.float64),
                       extra_order=np.concatenate(extra_order) if extra_order else np.zeros(0, dtype=np.int64))

    def _weights(self, gid: np.ndarray, extra_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(idf, order) of n-gram ids, the corpus's and those past it."""
        G = len(self._order)
        if not len(extra_order):
            return self._idf[gid], self._order[gid]
        known = gid < G
        inside = np.where(known, gid, 0)
        # N-grams outside the corpus have df 0, so idf log(N) (pycocoevalcap: log(max(1, 0)) = 0).
        return (np.where(known, self._idf[inside], self._log_n),
                np.where(known, self._order[inside], extra_order[np.where(known, 0, gid - G)]))

    def _tf_rows(self, grams: _NGrams):
        """Distinct (row, n-gram) entries with their counts, idf and order, and each row's norm per order."""
        n_rows = len(grams.length)
        key, tf = np.unique(grams.row * _KEY + grams.gid, return_counts=True)
        row, gid = key // _KEY, key % _KEY
        idf, order = self._weights(gid, grams.extra_order)
        norm = np.sqrt(np.bincount(row * self.n + order, weights=(tf * idf) ** 2, minlength=n_rows * self.n))
        return row, gid, tf.astype(np.float64), idf, order, norm.reshape(n_rows, self.n)

    def _tabulate(self, grams: _NGrams, first: np.ndarray) -> _References:
        row, gid, tf, _, _, norm = self._tf_rows(grams)
        image = np.repeat(np.arange(len(first) - 1), np.diff(first))[row]
        keys = image * _KEY + gid
        sort = np.argsort(keys, kind="stable")
        keys = keys[sort]
        return _References(first=np.asarray(first, dtype=np.int64), length=grams.length, norm=norm,
                           keys=keys, row=row[sort], tf=tf[sort],
                           entries=np.searchsorted(keys, np.arange(len(first)) * _KEY))

    def _score(self, grams: _NGrams, images: np.ndarray, table: _References) -> tuple[float, np.ndarray]:
        n, H = self.n, len(images)
        h_row, h_gid, h_tf, h_idf, h_order, h_norm = self._tf_rows(grams)

        # Pairs (hypothesis, one of its image's references), in hypothesis order.
        n_refs = np.diff(table.first)[images]                    # (H,)
        pair_start = np.cumsum(n_refs) - n_refs                   # (H,)
        P = int(n_refs.sum())
        pair_h = np.repeat(np.arange(H), n_refs)                  # (P,)
        pair_r = np.arange(P) - pair_start[pair_h] + table.first[images][pair_h]

        # Every reference entry holding a hypothesis n-gram: a sorted-key join, within the
        # entries of this batch's images (a small, cache-friendly slice of the table).
        batch = np.unique(images)
        lo, hi = table.entries[batch], table.entries[batch + 1]
        sub = _ranges(lo, hi)                                     # (E_b,) table entries, still sorted
        sub_keys = table.keys[sub]
        hk = images[h_row] * _KEY + h_gid
        left = np.searchsorted(sub_keys, hk, "left")
        count = np.searchsorted(sub_keys, hk, "right") - left
        ent = np.repeat(np.arange(len(hk)), count)                # hypothesis entry of each match
        pos = sub[_ranges(left, left + count)]                    # table entry of each match
        # min(tf_h * idf, tf_r * idf) * tf_r * idf, with idf >= 0.
        contrib = np.minimum(h_tf[ent], table.tf[pos]) * table.tf[pos] * h_idf[ent] ** 2
        h = h_row[ent]
        pair = pair_start[h] + table.row[pos] - table.first[images[h]]
        num = np.bincount(pair * n + h_order[ent], weights=contrib, minlength=P * n).reshape(P, n)
        num = num.astype(np.float64, copy=False)  # bincount gives ints when nothing matched

        denom = h_norm[pair_h] * table.norm[pair_r]
        # A zero norm means all weights of that order are 0, so the numerator is 0 too.
        val = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
        delta = grams.length[pair_h] - table.length[pair_r]
        val *= np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[:, None]
        per_image = np.bincount(pair_h, weights=val.mean(axis=1), minlength=H) / n_refs * 10.0
        return float(per_image.mean()) if H else 0.0, per_image

    def score_indices(self, hypotheses: Sequence[Tokens], indices: Sequence[int] | np.ndarray) -> tuple[float, np.ndarray]:
        """(mean, per-hypothesis scores) of ``hypotheses[i]`` against the
        constructor's reference set ``indices[i]``; an index may repeat (several
        samples of one image)."""
        images = np.asarray(indices)
        if images.ndim != 1 or len(images) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses need as many indices, got shape {images.shape}")
        if len(images) and (not np.issubdtype(images.dtype, np.integer)
                            or images.min() < 0 or images.max() >= self.num_images):
            raise ValueError(f"indices must be integers in [0, {self.num_images}), got {images.dtype} "
                             f"from {images.min()} to {images.max()}")
        grams = self._ngrams(*self._word_ids(hypotheses, {}))
        return self._score(grams, images.astype(np.int64), self._corpus)

    def score(self, hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float, np.ndarray]:
        """(mean, per-hypothesis scores) of ``hypotheses[i]`` against the
        tokenized reference set ``references[i]``, with the constructor's df."""
        _check_pairs(references, hypotheses)
        sentences = [r for refs in references for r in refs]
        # One lookup for references and hypotheses, so an n-gram outside the corpus gets one id in both.
        grams = self._ngrams(*self._word_ids(sentences + list(hypotheses), {}))
        R = len(sentences)
        is_ref = grams.row < R
        refs = _NGrams(gid=grams.gid[is_ref], row=grams.row[is_ref], length=grams.length[:R],
                       extra_order=grams.extra_order)
        hyps = _NGrams(gid=grams.gid[~is_ref], row=grams.row[~is_ref] - R, length=grams.length[R:],
                       extra_order=grams.extra_order)
        first = np.concatenate([[0], np.cumsum([len(r) for r in references])])
        return self._score(hyps, np.arange(len(hypotheses)), self._tabulate(refs, first))


# --- The COCO caption metrics -------------------------------------------------------------------------------------

class _MeteorRun:
    """pycocoevalcap's METEOR 1.5 (a Java program), started early: the JVM spends
    10-15 s of CPU loading its paraphrase table, which overlaps the other metrics."""

    def __init__(self, timeout: float):
        from pycocoevalcap.meteor.meteor import Meteor

        if shutil.which("java") is None:
            raise RuntimeError("no 'java' on PATH (METEOR 1.5 is a Java program)")
        try:
            self.scorer = Meteor()
        except OSError as e:
            raise RuntimeError(f"cannot start Java: {e}") from e
        # A stuck JVM must not hang evaluation: killing it ends the reads with an error.
        self.watchdog = threading.Timer(timeout, self.scorer.meteor_p.kill)
        self.watchdog.start()
        self.timeout = timeout

    def score(self, gts: dict, res: dict) -> tuple[float, np.ndarray]:
        """(corpus METEOR, per-image METEOR); RuntimeError when Java cannot score."""
        proc = self.scorer.meteor_p
        try:
            score, per_image = self.scorer.compute_score(gts, res)
            return float(score), np.asarray(per_image, dtype=np.float64)
        except (ValueError, OSError) as e:  # empty reads from a dead JVM, or a broken pipe
            proc.kill()
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            why = f"timed out after {self.timeout:.0f} s" if self.watchdog.finished.is_set() else (
                err[-1] if err else repr(e))
            raise RuntimeError(f"its Java process failed: {why}") from e
        finally:
            self.close()

    def close(self) -> None:
        self.watchdog.cancel()
        # compute_score leaves its lock held when it raises, and Meteor.__del__ takes that lock.
        if self.scorer.lock.locked():
            self.scorer.lock.release()
        proc = self.scorer.meteor_p
        proc.kill()
        proc.wait()
        # Closed here, a dead JVM's pipes cannot raise BrokenPipeError later in Meteor.__del__.
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass


def caption_statistics(hypotheses: Sequence[Tokens]) -> dict[str, float]:
    """Share of distinct captions among the images (%) and mean caption length
    in words: a collapse to a few generic captions shows in the first."""
    if not hypotheses:
        return {"distinct_captions": 0.0, "mean_length": 0.0}
    return {"distinct_captions": 100.0 * len({" ".join(h) for h in hypotheses}) / len(hypotheses),
            "mean_length": float(np.mean([len(h) for h in hypotheses]))}


def coco_caption_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], *,
                        meteor: bool = True, meteor_timeout: float = 600.0, per_image: bool = False) -> dict:
    """BLEU-1..4, CIDEr-D, ROUGE-L and METEOR (all x100), plus
    ``caption_statistics``, of tokenized hypotheses against tokenized reference sets.

    Keys: the metrics of :data:`showtell.metric_registry.METRICS` (bleu1..bleu4,
    cider, rouge_l, meteor), distinct_captions, mean_length, images, notes; with ``per_image``, also "per_image": {"cider", "rouge_l",
    "meteor"} arrays (x100, None where not computed).

    CIDEr-D, ROUGE-L and METEOR come from pycocoevalcap (1.2,
    ``requirements-eval.txt``), fed our tokens joined by spaces, not its PTB
    tokenizer's output, so all metrics score the same words as BLEU; CIDEr-D's
    df comes from ``references``, as in the COCO evaluation. What cannot run
    (pycocoevalcap not installed, no Java or a failing JVM for METEOR, or
    ``meteor=False``) is None and "notes" says why; without pycocoevalcap,
    CIDEr-D comes from :class:`CiderD`, which gives the same numbers. SPICE is
    not computed (see the module docstring). METEOR's JVM start costs 10-15 s
    of CPU whatever the number of images.
    """
    _check_pairs(references, hypotheses)
    if not hypotheses:
        raise ValueError("no captions to score")
    notes: list[str] = []
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        Cider = Rouge = None
        notes.append("pycocoevalcap is not installed (pip install -r requirements-eval.txt): "
                     "CIDEr-D from showtell.metrics.CiderD, no ROUGE-L or METEOR")
    meteor_run = None
    if Cider is not None and not meteor:
        notes.append("no METEOR: not asked for (meteor=False)")
    elif Cider is not None:
        try:
            meteor_run = _MeteorRun(meteor_timeout)
        except RuntimeError as e:
            notes.append(f"no METEOR: {e}")

    try:
        scores: dict = dict(bleu_scores(references, hypotheses))
        gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
        res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
        per: dict = {"cider": None, "rouge_l": None, "meteor": None}
        if Cider is None:
            scores["cider"], per["cider"] = CiderD(references).score(hypotheses, references)
        else:
            scores["cider"], per["cider"] = Cider().compute_score(gts, res)
            scores["rouge_l"], per["rouge_l"] = Rouge().compute_score(gts, res)
        scores.setdefault("rouge_l", None)
        scores["meteor"] = None
        if meteor_run is not None:
            try:
                scores["meteor"], per["meteor"] = meteor_run.score(gts, res)
            except RuntimeError as e:
                notes.append(f"no METEOR: {e}")
    finally:
        if meteor_run is not None:
            meteor_run.close()
    for k in per:
        if scores[k] is not None:
            scores[k] = 100.0 * float(scores[k])
            per[k] = 100.0 * np.asarray(per[k], dtype=np.float64)
    scores = {k: scores.get(k) for k in METRICS}  # every metric of the registry, in its order; None: not computed
    notes.append("no SPICE: it downloads the Stanford CoreNLP models at run time")
    scores.update(caption_statistics(hypotheses))
    scores["images"] = len(hypotheses)
    scores["notes"] = notes
    if per_image:
        scores["per_image"] = per
    return scores

"""Caption quality: corpus BLEU-1..4 with nltk, against all references.

References and hypotheses go through the same tokenizer
(:func:`showtell.text.tokenize`: lowercase, punctuation dropped); BLEU is
``nltk.translate.bleu_score.corpus_bleu`` with uniform n-gram weights and no
smoothing, reported x100.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch

from .datasets import ImageCaptions
from .decoding import DecodeOptions, autocast, beam_search, greedy_decode
from .metrics import BLEU_WEIGHTS, bleu_scores  # noqa: F401  (bleu_scores lives in metrics.py; re-exported)
from .text import tokenize


def decode_features(model, features: np.ndarray | torch.Tensor, opts: DecodeOptions, batch_size: int = 250,
                    device: str | torch.device = "cpu", precision: str = "float32") -> list[list[str]]:
    """Best caption (as words) for each row of cached decoder features."""
    decoder, vocab = model.decoder, model.vocab
    was_training = decoder.training
    decoder.eval()
    out = []
    try:
        for i in range(0, len(features), batch_size):
            x = torch.from_numpy(np.array(features[i:i + batch_size], dtype=np.float32)).to(device)
            with autocast(torch.device(device), precision):
                if opts.beam_size == 1:
                    hyps = greedy_decode(decoder, x, opts, vocab.end_id, vocab.start_id, vocab.unk_id)
                else:
                    hyps = [h[0] for h in beam_search(decoder, x, opts, vocab.end_id, vocab.start_id, vocab.unk_id)]
            out += [vocab.decode(h.tokens) for h in hyps]
    finally:
        decoder.train(was_training)
    return out


def score_captions(items: Sequence[ImageCaptions], captions: Sequence[Sequence[str]]) -> dict[str, float]:
    refs = [[tokenize(c) for c in item.captions] for item in items]
    return bleu_scores(refs, [list(c) for c in captions])


def write_captions(path: str, items: Sequence[ImageCaptions], captions: Sequence[Sequence[str]]) -> None:
    """JSON list of {"image_id", "caption"} (COCO results style)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"image_id": it.image_id, "caption": " ".join(c)} for it, c in zip(items, captions)], f, indent=1)


def split_features(model, dataset: str, items: Sequence[ImageCaptions], cache, split: str,
                   device: str | torch.device = "cpu", progress: bool = True):
    """(readable items, decoder-input features) of a split: from the feature
    cache for a frozen encoder; computed afresh (in a throwaway cache) when the
    encoder is being fine-tuned, since its features change every epoch."""
    import tempfile

    from .features import FeatureCache

    if model.encoder.trainable():
        with tempfile.TemporaryDirectory() as tmp:
            fs = FeatureCache(tmp).get(dataset, split, items, model.encoder, device=device, progress=progress)
            return fs.items, np.array(fs.for_decoder(model.decoder.feature_kind))
    fs = cache.get(dataset, split, items, model.encoder, device=device, progress=progress)
    return fs.items, fs.for_decoder(model.decoder.feature_kind)


def evaluate_split(model, dataset: str, items: Sequence[ImageCaptions], cache, split: str, opts: DecodeOptions,
                   device: str | torch.device = "cpu", progress: bool = True,
                   captions_out: str | None = None, examples: int = 0, precision: str = "float32") -> dict:
    """BLEU-1..4 of the model's captions for ``items``, and the number of images
    scored; optionally writes the captions as JSON, and returns the first
    ``examples`` as (image id, caption, first reference) under "examples"."""
    kept, feats = split_features(model, dataset, items, cache, split, device=device, progress=progress)
    captions = decode_features(model, feats, opts, device=device, precision=precision)
    if captions_out:
        write_captions(captions_out, kept, captions)
    scores: dict = score_captions(kept, captions)
    scores["images"] = len(kept)
    if examples:
        scores["examples"] = [(it.image_id, " ".join(c), it.captions[0]) for it, c in zip(kept, captions)][:examples]
    return scores

"""Caption quality of a model on a dataset split.

References and hypotheses go through the same tokenizer
(:func:`showtell.text.tokenize`: lowercase, punctuation dropped). BLEU is
``nltk.translate.bleu_score.corpus_bleu`` with uniform n-gram weights and no
smoothing, reported x100; the COCO caption metrics come from
:mod:`showtell.metrics`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, save_checkpoint
from .datasets import ImageCaptions
from .decoding import DecodeOptions
from .decoders import resolve_decoder_precision
from .defaults import BOOTSTRAP_RESAMPLES, DECODER_PRECISION
from .features import split_features
from .metrics import bleu_scores, coco_caption_scores
from .model import CaptionModel
from .significance import paired_bootstrap
from .text import tokenize


def caption_features(model, features: np.ndarray | torch.Tensor, opts: DecodeOptions, batch_size: int = 250,
                     device: str | torch.device = "cpu", progress: bool = False,
                     pooled: np.ndarray | None = None, decoder_precision: str = DECODER_PRECISION) -> list[list[str]]:
    """Best caption (as words) for each row of decoder features (cached, so
    possibly a float16 memory map), decoded in float32 by
    :meth:`~showtell.model.CaptionModel.caption`, as caption() decodes. With
    ``opts.guidance_threshold`` set, ``pooled`` (the same rows' pooled features)
    gives the ImageNet tags that guide them. ``decoder_precision``: auto
    (caption()'s default: int8 on a CPU), float32 or int8
    (:func:`showtell.decoders.resolve_decoder_precision`)."""
    guided = opts.guidance_threshold is not None
    if guided and pooled is None:
        raise ValueError("guided captions (opts.guidance_threshold) need the pooled features for their tags")

    def rows(array, i):
        return torch.from_numpy(np.array(array[i:i + batch_size], dtype=np.float32)).to(device)

    out = []
    with tqdm(total=len(features), desc="captioning", unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(features), batch_size):
            x = rows(features, i)
            found = model.caption(x, opts, rows(pooled, i) if guided else None, decoder_precision=decoder_precision)
            out += [model.vocab.decode(f.hypotheses[0].tokens) for f in found]
            bar.update(len(x))
    return out


def score_captions(items: Sequence[ImageCaptions], captions: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 (x100) of captions (word lists) against each item's references."""
    refs = [[tokenize(c) for c in item.captions] for item in items]
    return bleu_scores(refs, [list(c) for c in captions])


def write_captions(path: str, items: Sequence[ImageCaptions], captions: Sequence[Sequence[str]]) -> None:
    """JSON list of {"image_id", "caption"} (COCO results style)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"image_id": it.image_id, "caption": " ".join(c)} for it, c in zip(items, captions)], f, indent=1)


def evaluate_split(model, dataset: str, items: Sequence[ImageCaptions], cache, split: str, opts: DecodeOptions,
                   device: str | torch.device = "cpu", progress: bool = True,
                   captions_out: str | None = None, examples: int = 0, mirror_average: bool = False,
                   decoder_precision: str = DECODER_PRECISION) -> dict:
    """The field's caption metrics of the model's captions for ``items``
    (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D: :func:`showtell.metrics.coco_caption_scores`)
    and the number of images scored; optionally writes the captions as JSON,
    and returns the first ``examples`` as (image id, caption, first reference)
    under "examples"."""
    items, captions = split_captions(model, dataset, items, cache, split, opts, device=device, progress=progress,
                                     mirror_average=mirror_average, decoder_precision=decoder_precision)
    if captions_out:
        write_captions(captions_out, items, captions)
    refs = [[tokenize(c) for c in item.captions] for item in items]
    scores: dict = coco_caption_scores(refs, [list(c) for c in captions])
    if examples:
        scores["examples"] = [(it.image_id, " ".join(c), it.captions[0]) for it, c in zip(items, captions)][:examples]
    return scores


def decoding_fields(opts: DecodeOptions) -> dict:
    """How captions were decoded, as scores record it (stored with them, and
    in evaluate's line): beam size, guidance (and its fallback when guided)
    and length penalty."""
    return {"beam_size": opts.beam_size, "guidance_threshold": opts.guidance_threshold,
            **({"guidance_fallback": opts.guidance_fallback} if opts.guidance_threshold is not None else {}),
            "length_penalty": opts.length_penalty}


def evaluate_checkpoint(path: str, ckpt: Checkpoint, dataset: str, items: Sequence[ImageCaptions], split: str,
                        opts: DecodeOptions, cache, *, model: CaptionModel | None = None, store: bool = False,
                        device: str | torch.device = "cpu", progress: bool = True, captions_out: str | None = None,
                        examples: int = 0, mirror_average: bool = False, decoder_precision: str = DECODER_PRECISION) -> dict:
    """Score the checkpoint ``ckpt`` (read from ``path``) on ``items``, the
    ``split`` of ``dataset``: :func:`evaluate_split`'s scores of its captions,
    decoded with ``opts``. ``model``: what captions instead of ``ckpt``'s own
    model (an ensemble led by it). ``store``: also record the scores in the
    checkpoint file, under the dataset's name (and as the model's own
    SPLIT_scores when it is the first dataset the model was trained on, where
    the web page's model card reads them). ``decoder_precision``: the
    decoder's arithmetic (:func:`caption_features`; stored with the scores as
    it resolved). What ``showtell evaluate`` and ``train.py --test`` do once
    their flags are checked."""
    if model is None:
        model = CaptionModel.from_checkpoint(ckpt, device=device)
    decoder_precision = resolve_decoder_precision(decoder_precision, device, "float32", model.decoder)
    scores = evaluate_split(model, dataset, items, cache, split, opts, device=device, progress=progress,
                            captions_out=captions_out, examples=examples, mirror_average=mirror_average,
                            decoder_precision=decoder_precision)
    if store:
        # Scores of the model's own (first) dataset are its SPLIT_scores; every dataset's
        # are kept by name too (a model trained on Flickr8k and COCO is scored on both).
        own = dataset == ckpt.data_config.names()[0]
        save_checkpoint(ckpt.with_scores(split, {
            **decoding_fields(opts), "decoder_precision": decoder_precision,
            **{k: v for k, v in scores.items() if k not in ("examples", "notes")}}, dataset=dataset, own=own), path)
    return scores


def split_captions(model, dataset: str, items: Sequence[ImageCaptions], cache, split: str, opts: DecodeOptions,
                   device: str | torch.device = "cpu", progress: bool = True,
                   mirror_average: bool = False,
                   decoder_precision: str = DECODER_PRECISION) -> tuple[Sequence[ImageCaptions], list[list[str]]]:
    """The items whose features could be made (a photo that cannot be read
    is left out, as in training) and the model's caption (words) of each;
    ``mirror_average``: from features averaged with the mirror image's;
    ``decoder_precision``: the decoder's arithmetic (:func:`caption_features`)."""
    fs = split_features(model.encoder, dataset, split, items, cache, device=device, progress=progress,
                        mirror_average=mirror_average)
    captions = caption_features(model, fs.for_decoder(model.feature_kind), opts, device=device, progress=progress,
                                pooled=fs.pooled, decoder_precision=decoder_precision)
    return fs.items, captions


def compare_split(model_a, model_b, dataset: str, items: Sequence[ImageCaptions], cache, split: str,
                  opts: DecodeOptions | tuple[DecodeOptions, DecodeOptions], device: str | torch.device = "cpu",
                  progress: bool = True, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                  mirror_average: tuple[bool, bool] = (False, False),
                  decoder_precision: tuple[str, str] = (DECODER_PRECISION, DECODER_PRECISION)) -> dict:
    """Two models' captions of the same photos, compared by the paired
    bootstrap (:func:`showtell.significance.paired_bootstrap`): BLEU-4,
    CIDEr-D and ROUGE-L of each, B - A and their 95 % intervals.
    ``mirror_average``: whether A's and B's features are averaged with the
    mirror image's (A and B may then be the same model). ``opts``: both
    models' decoding options, or a pair (A's, B's: each its own calibrated guidance).
    ``decoder_precision``: A's and B's decoder arithmetic (float32 against
    int8: the same model twice)."""
    pair = opts if isinstance(opts, tuple) else (opts, opts)
    (items_a, a), (items_b, b) = (split_captions(m, dataset, items, cache, split, o, device=device,
                                                 progress=progress, mirror_average=mirror, decoder_precision=dp)
                                  for m, o, mirror, dp in zip((model_a, model_b), pair, mirror_average,
                                                              decoder_precision))
    if [it.image_id for it in items_a] != [it.image_id for it in items_b]:
        raise ValueError("the two models' encoders could read different photos of the split: "
                         "a paired comparison needs the same photos")
    refs = [[tokenize(c) for c in item.captions] for item in items_a]
    scored = [coco_caption_scores(refs, [list(c) for c in caps], meteor=False, per_image=True) for caps in (a, b)]
    metrics = paired_bootstrap(refs, {"captions": a, "per_image": scored[0]["per_image"]},
                               {"captions": b, "per_image": scored[1]["per_image"]}, resamples=resamples, seed=seed)
    return {"images": len(refs), "resamples": resamples, "metrics": metrics,
            "distinct_captions": (scored[0]["distinct_captions"], scored[1]["distinct_captions"]),
            "changed_captions": sum(x != y for x, y in zip(a, b))}

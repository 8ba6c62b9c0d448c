"""Captioning photos with a trained model: :class:`Captioner` (load once, call
many times) and :func:`caption`, which uses the model bundled with showtell."""
from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .decoding import DecodeOptions, autocast, resolve_precision
from .encoders import EncoderOutput
from .images import MAX_IMAGE_BYTES, ImageError, load_image
from .model import CaptionModel

ENCODER_CPU_BATCH = 8
CARD_KEYS = ("model_config", "data_config", "train_config", "encoder_weights", "val_scores", "test_scores")
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "showtell-flickr8k.pt")


@dataclass(frozen=True)
class Explanation:
    """A caption with where the model looked while choosing each word."""

    text: str  # the same caption caption() gives with the same options
    words: list[str]  # text.split()
    attention: np.ndarray  # (len(words), h, w) float32, each map sums to 1
    logprob: float
    score: float


class ScoredCaption(NamedTuple):
    text: str
    logprob: float  # sum of the model's log-probabilities of the words (and <end>)
    score: float  # what captions were ranked by (length-normalised logprob)


def _is_single(images: Any) -> bool:
    return not isinstance(images, (list, tuple))


class Captioner:
    """A captioning model loaded once.

    >>> captioner = Captioner()                  # the bundled model
    >>> captioner("photo.jpg")                   # 'a dog runs through the grass'
    >>> captioner(["a.jpg", "b.jpg"], n_best=3)  # [[ScoredCaption, ...], [...]]
    """

    def __init__(self, checkpoint: str | None = None, device: str | None = None, batch_size: int = 64,
                 precision: str = "float32", max_image_bytes: int = MAX_IMAGE_BYTES):
        self.checkpoint = checkpoint or BUNDLED_MODEL
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        ckpt = load_checkpoint(self.checkpoint)
        self.model = CaptionModel.from_checkpoint(ckpt, device=self.device)
        # What the checkpoint says about the model (for a model card): its configs,
        # vocabulary size, encoder weights and any stored val/test scores.
        self.card = {k: ckpt[k] for k in CARD_KEYS if k in ckpt}
        self.card["vocab_size"] = len(ckpt["vocab"])
        # Keep only the fast copy (batch norm folded): the original would be dead weight.
        self.encoder = self.model.encoder = self.model.encoder.for_inference().to(self.device)
        self.vocab = self.model.vocab
        self.preprocessing = self.model.preprocessing
        self.batch_size = batch_size
        self.defaults = DecodeOptions(beam_size=3, n_best=1, max_len=20)
        self.max_image_bytes = max_image_bytes  # the most bytes read of one image file

    def options(self, **overrides) -> DecodeOptions:
        """Decoding options: the defaults with ``overrides`` applied (validated)."""
        unknown = set(overrides) - set(DecodeOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown decoding option(s): {sorted(unknown)}")
        return replace(self.defaults, **overrides)

    @torch.inference_mode()
    def caption_tensors(self, pixels: torch.Tensor, opts: DecodeOptions) -> list[list[ScoredCaption]]:
        """n-best captions for a batch of preprocessed images (B, 3, H, W)."""
        hyps = self.model.generate(self.encode(pixels).for_decoder(self.model.feature_kind), opts)
        return [[ScoredCaption(" ".join(self.vocab.decode(h.tokens)), h.logprob, h.score) for h in per_image]
                for per_image in hyps]

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        """Encoder features of preprocessed images, as float32. Only the encoder
        runs in ``self.precision``: the decoder and beam search stay in float32,
        where a small change in a score can change the chosen word."""
        x = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        # On a CPU the encoder runs fastest in small batches (they stay in cache:
        # ~7 ms/photo at 1-8 photos against ~17 at 32); beam search gains from big ones.
        step = ENCODER_CPU_BATCH if self.device.type == "cpu" else len(x)
        with autocast(self.device, self.precision):
            parts = [self.model.encode_all(x[i:i + step]) for i in range(0, len(x), step)]
        return EncoderOutput(torch.cat([p.pooled for p in parts]).float(),
                             torch.cat([p.spatial for p in parts]).float(), parts[0].grid)

    @torch.inference_mode()
    def explain(self, image: Any, **options) -> Explanation:
        """The best caption of one image and, for each word, the attention map
        (h, w) over the encoder's grid that the decoder read while choosing it
        (Show, Attend and Tell's soft attention). A decoder without attention
        (NIC) raises ValueError."""
        if not self.model.decoder.has_attention:
            raise ValueError(f"this model's decoder ({self.model.cfg.decoder}) has no attention to show; "
                             "explain() needs a show_attend_tell model")
        opts = self.options(**options)
        enc = self.encode(self.pixels(image).unsqueeze(0))
        feats = enc.for_decoder(self.model.feature_kind)
        best = self.model.generate(feats, opts)[0][0]
        # Teacher-forcing the chosen caption replays the decoder's steps exactly
        # (eval mode: no dropout) and returns the attention behind each word.
        v = self.vocab
        ids = torch.tensor([[v.start_id] + best.tokens + [v.end_id]], device=self.device)
        _, alphas = self.model(feats, ids, return_attention=True)  # (1, T+1, P)
        words = v.decode(best.tokens)
        h, w = enc.grid
        attention = alphas[0, :len(words)].float().reshape(len(words), h, w).cpu().numpy()
        return Explanation(" ".join(words), words, attention, best.logprob, best.score)

    def pixels(self, image: Any) -> torch.Tensor:
        """One image (path, bytes, PIL.Image or numpy array) as the encoder's
        input (3, H, W); raises :class:`ImageError` naming the problem."""
        # target_size lets a large photo decode small (JPEG draft) and shrink without copies.
        return self.preprocessing(load_image(image, max_bytes=self.max_image_bytes,
                                             target_size=self.preprocessing.size))

    def _load_chunk(self, images: Sequence[Any], chunk: range) -> tuple[list[int], list[torch.Tensor], dict]:
        ok, pixels, errors = [], [], {}
        for i in chunk:
            try:
                pixels.append(self.pixels(images[i]))
                ok.append(i)
            except ImageError as e:
                errors[i] = e
        return ok, pixels, errors

    def caption_each(self, images: Sequence[Any], **options) -> list[list[ScoredCaption] | ImageError]:
        """n-best captions for each image, or the :class:`ImageError` of an image
        that cannot be read; one bad image never stops the others."""
        opts = self.options(**options)
        results: list[list[ScoredCaption] | ImageError] = [None] * len(images)  # type: ignore[list-item]
        for start in range(0, len(images), self.batch_size):
            ok, pixels, errors = self._load_chunk(images, range(start, min(start + self.batch_size, len(images))))
            for i, e in errors.items():
                results[i] = e
            if ok:
                for i, caps in zip(ok, self.caption_tensors(torch.stack(pixels), opts)):
                    results[i] = caps
        return results

    def __call__(self, images: Any, **options):
        """Caption one image (path, bytes, ``PIL.Image`` or numpy array) or a list
        of them. Returns a string, or with ``n_best=k > 1`` a list of k
        :class:`ScoredCaption`; for a list input, a list of those.
        Raises :class:`ImageError` for an image that cannot be read."""
        single = _is_single(images)
        batch = [images] if single else list(images)
        results = self.caption_each(batch, **options)
        for r in results:
            if isinstance(r, ImageError):
                raise r
        n_best = self.options(**options).n_best
        out = [r[0].text if n_best == 1 else r for r in results]
        return out[0] if single else out


_loaded: dict[tuple[str, str | None], Captioner] = {}
_lock = threading.Lock()


def get_captioner(checkpoint: str | None = None, device: str | None = None) -> Captioner:
    """The process-wide :class:`Captioner` for ``checkpoint`` (loaded on first use)."""
    key = (os.path.abspath(checkpoint or BUNDLED_MODEL), device)
    with _lock:
        if key not in _loaded:
            _loaded[key] = Captioner(checkpoint, device=device)
        return _loaded[key]


def caption(images: Any, beam_size: int = 3, n_best: int = 1, *, checkpoint: str | None = None,
            max_image_bytes: int | None = None, **options):
    """Caption a photo with the bundled model (or ``checkpoint``):

    >>> from showtell import caption
    >>> caption("photo.jpg")
    'a black dog is running through the grass'

    ``images`` is a path, raw bytes, a ``PIL.Image``, a numpy array, or a list of
    these (then a list comes back). ``n_best=k`` returns k :class:`ScoredCaption`.
    Other options: ``max_len``, ``min_len``, ``length_penalty``,
    ``block_repeat_trigrams``, ``block_repeat_words``, ``ban_unk``.
    ``max_image_bytes`` raises the 10 MB limit on an image file (or bytes).
    """
    captioner = get_captioner(checkpoint)
    if max_image_bytes is not None:
        captioner = copy.copy(captioner)  # shares the loaded model; only the limit differs
        captioner.max_image_bytes = max_image_bytes
    return captioner(images, beam_size=beam_size, n_best=n_best, **options)

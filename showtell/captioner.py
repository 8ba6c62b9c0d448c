"""Captioning photos with a trained model: :class:`Captioner` (load once, call
many times) and :func:`caption`, which uses the model bundled with showtell.

Captions are guided by default (``guidance_threshold``, see
:mod:`showtell.guidance`): when the encoder's own ImageNet classifier is
confident that a photo shows, say, a cat, the caption must name it. Every
:class:`ScoredCaption` carries the tags of its photo and the words it had to use."""
from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .confidence import Confidence, caption_confidence, threshold_of
from .decoders import check_decoder_precision, resolve_decoder_precision
from .decoding import DecodeOptions, Hypothesis, resolve_precision
from .defaults import BEAM_SIZE, DECODER_PRECISION, DECODER_PRECISIONS, GUIDANCE_THRESHOLD
from .encoders import EncoderOutput
from .guidance import Tag, WordTag
from .images import MAX_IMAGE_BYTES, ImageError, _check_max_bytes, load_image
from .inference import InferenceEncoder
from .model import CaptionModel, Captions

MAX_BATCH_SIZE = 4096  # photos decoded and captioned together (a batch holds their pixels: 600 KB each)
CARD_KEYS = ("model_config", "data_config", "train_config", "encoder_weights", "val_scores", "test_scores",
             "dataset_scores")
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "showtell-flickr8k.pt")


def default_options(checkpoint: Any) -> DecodeOptions:
    """caption()'s decoding options for a model (a checkpoint dict or
    :class:`~showtell.checkpoint.Checkpoint` record): beam 3, the best caption,
    at most 20 words, guided; the guidance threshold and fallback chosen on
    val splits for this model where its ``calibration`` holds them
    (``benchmarks/bench_guidance.py --store``), else
    :data:`~showtell.defaults.GUIDANCE_THRESHOLD` and
    :data:`~showtell.defaults.GUIDANCE_FALLBACK`. evaluate, compare and
    ``train --test`` read the same options, so their figures are what caption() gives."""
    calibration = (checkpoint.get("calibration") if isinstance(checkpoint, dict)
                   else getattr(checkpoint, "calibration", None)) or {}
    stored = {k: calibration[k] for k in ("guidance_threshold", "guidance_fallback") if k in calibration}
    try:
        return DecodeOptions(**{"guidance_threshold": GUIDANCE_THRESHOLD, **stored})  # beam, max_len: showtell.defaults
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"calibration: {e}") from None


@dataclass(frozen=True)
class Explanation:
    """A caption with where the model looked while choosing each word."""

    text: str  # the same caption caption() gives with the same options
    words: list[str]  # text.split()
    attention: np.ndarray  # (len(words), h, w) float32, each map sums to 1
    logprob: float
    score: float
    tags: tuple[WordTag, ...] = ()  # the photo's most probable ImageNet word tags
    required: tuple[tuple[str, ...], ...] = ()  # word sets the caption had to use (one word of each)
    satisfied: bool = True  # whether it does (False: no caption could; the best unguided one is shown)


class ScoredCaption(NamedTuple):
    text: str
    logprob: float  # sum of the model's log-probabilities of the words (and <end>)
    # What captions were ranked by: logprob / length ** length_penalty; with the
    # default length penalty 1, the log-probability per word (and <end>).
    score: float
    tags: tuple[WordTag, ...] = ()  # the photo's most probable ImageNet word tags, most probable first
    required: tuple[tuple[str, ...], ...] = ()  # word sets the caption had to use (); () when unguided
    satisfied: bool = True  # whether the caption holds a word of each required set
    # How sure the model is of this caption (showtell.confidence): .sure, .label
    # ("fairly sure" / "not sure"), .value and the model's .threshold.
    confidence: Confidence | None = None
    # Guided, but the guided caption fell too far below the unguided one
    # (guidance_fallback): this is the unguided caption, and ``required`` is ().
    set_aside: bool = False


@dataclass(frozen=True)
class Description:
    """Everything the captioner can say about one photo: the caption, the
    numbers behind a confidence signal, and what the encoder recognised."""

    text: str  # the same caption caption() gives with the same options
    logprob: float  # of the whole caption (words and <end>)
    score: float  # logprob / length ** length_penalty
    n_words: int
    tags: tuple[WordTag, ...]  # caption-word tags with summed class probabilities, most probable first
    classes: tuple[Tag, ...]  # the 5 most probable ImageNet classes (with their words, maybe ())
    required: tuple[tuple[str, ...], ...]  # the word sets that guided the caption; () when none was confident
    satisfied: bool  # the caption holds one word of each required set
    captions: tuple[ScoredCaption, ...]  # the n best (the first is ``text``)
    explanation: Explanation | None = None  # where the model looked for each word, when asked for


def _one_thread_after_fork() -> None:
    """In a fork()ed child, run torch on one thread. The OpenMP thread pool
    that the parent's captions started does not survive fork(), and the child's
    first parallel region would wait forever for it (caption() in a
    multiprocessing worker hung); one thread needs no pool. (ONNX Runtime's
    session is rebuilt the same way: OnnxEncoder.__call__.)"""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


def _check_finite(model: torch.nn.Module, checkpoint: str) -> None:
    """Refuse a model with NaN or infinite weights, naming the checkpoint (such
    a model's beam search finds no caption at all)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{checkpoint}: the model's weights are not finite (NaN or infinity in {name}): "
                                  "the file is damaged or its training diverged")


def _check_scores(results: list[list[ScoredCaption]], checkpoint: str) -> None:
    """Refuse an image without captions or with NaN scores (the model's outputs
    overflowed); -inf is a caption every constraint forbade, and is kept."""
    for caps in results:
        if not caps or any(np.isnan(c.logprob) for c in caps):
            raise ValueError(f"{checkpoint}: the model's outputs are not finite (NaN), so it gives "
                             "no caption: the checkpoint is damaged or its training diverged")


def _is_single(images: Any) -> bool:
    return not isinstance(images, (list, tuple))


class Captioner:
    """A captioning model loaded once.

    >>> captioner = Captioner()                  # the bundled model
    >>> captioner("photo.jpg")                   # 'a dog runs through the grass'
    >>> captioner(["a.jpg", "b.jpg"], n_best=3)  # [[ScoredCaption, ...], [...]]
    >>> Captioner(decoder_precision="float32")   # the decoder exact (the default, auto, is int8 on a CPU)
    """

    def __init__(self, checkpoint: str | None = None, device: str | None = None, batch_size: int = 64,
                 precision: str = "float32", max_image_bytes: int = MAX_IMAGE_BYTES, runtime: str = "auto",
                 mirror_average: bool = False, decoder_precision: str = DECODER_PRECISION):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
        _check_max_bytes(max_image_bytes)
        self.checkpoint = checkpoint or BUNDLED_MODEL
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        # The decoder's arithmetic: float32 (exact) or int8 (a CPU's fast path; captions may
        # differ, within chance in the three worlds); auto, the default: int8 where it runs.
        check_decoder_precision(decoder_precision, DECODER_PRECISIONS)
        if decoder_precision == "int8" and (self.precision != "float32" or self.device.type != "cpu"):
            raise ValueError(f"decoder_precision='int8' runs on a CPU with precision='float32' (the encoder's "
                             f"arithmetic), got precision={self.precision!r} on {self.device.type}")
        ckpt = load_checkpoint(self.checkpoint)
        self.model = CaptionModel.from_checkpoint(ckpt, device=self.device)
        self.decoder_precision = resolve_decoder_precision(decoder_precision, self.device, self.precision,
                                                           self.model.decoder)
        _check_finite(self.model, self.checkpoint)
        # What the checkpoint says about the model (for a model card): its configs,
        # vocabulary size, encoder weights and any stored val/test scores.
        self.card = {k: ckpt[k] for k in CARD_KEYS if k in ckpt}
        self.card["vocab_size"] = len(ckpt["vocab"])
        # The "not sure" threshold stored with the model (showtell.confidence.threshold_of).
        self.confidence_threshold = threshold_of(ckpt)
        # What runs the encoder (runtime, batch, precision, mirror averaging: the
        # feature cache's runner too). ONNX Runtime's idle threads must not spin:
        # between photos the decoder needs the cores.
        self.inference_encoder = InferenceEncoder(self.model.encoder, self.device, runtime, self.precision,
                                                  mirror_average=mirror_average, spin=False)
        self.runtime = self.inference_encoder.runtime
        self.mirror_average = mirror_average
        # Keep only the fast copy (batch norm folded): the original would be dead weight.
        self.encoder = self.model.encoder = self.inference_encoder.module
        self.vocab = self.model.vocab
        self.preprocessing = self.model.preprocessing
        self.batch_size = batch_size
        self.defaults = default_options(ckpt)
        self.max_image_bytes = max_image_bytes  # the most bytes read of one image file
        if self.precision == "float32":
            with torch.no_grad():  # make the fused (or int8) inference steps now, not on the first photo
                self.model.decoder.decoding_steps(self.decoder_precision)

    def options(self, guided: bool | None = None, **overrides) -> DecodeOptions:
        """Decoding options: the defaults with ``overrides`` applied (validated).
        ``guided=False`` turns guidance off (``guidance_threshold=None``);
        ``guided=True`` turns it on at :data:`GUIDANCE_THRESHOLD` unless a
        ``guidance_threshold`` is given."""
        unknown = set(overrides) - set(DecodeOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown decoding option(s): {sorted(unknown)}")
        if guided is not None:
            if not isinstance(guided, bool):
                raise TypeError(f"guided must be True or False, got {guided!r}")
            if not guided:
                if overrides.get("guidance_threshold") is not None:
                    raise ValueError("guided=False and a guidance_threshold contradict each other")
                overrides["guidance_threshold"] = None
            elif overrides.get("guidance_threshold") is None:
                overrides["guidance_threshold"] = self.defaults.guidance_threshold or GUIDANCE_THRESHOLD
        return replace(self.defaults, **overrides)

    def _scored(self, h: Hypothesis, found: Captions) -> ScoredCaption:
        words = tuple(tuple(self.vocab.words[w] for w in c) for c in found.constraints)
        text = " ".join(self.vocab.decode(h.tokens))
        return ScoredCaption(text, h.logprob, h.score, tuple(found.tags), words, found.meets(h),
                             caption_confidence(text, h.logprob, self.confidence_threshold), found.set_aside)

    def _caption(self, enc: EncoderOutput, opts: DecodeOptions, attention: bool = False) -> list[Captions]:
        return self.model.caption(enc.for_decoder(self.model.feature_kind), opts, enc.pooled, attention=attention,
                                  precision=self.precision, decoder_precision=self.decoder_precision)

    def captions_of_features(self, enc: EncoderOutput, opts: DecodeOptions) -> list[list[ScoredCaption]]:
        """n-best captions of encoded images, guided by their ImageNet tags when
        ``opts.guidance_threshold`` is set; each caption carries the tags."""
        results = [[self._scored(h, found) for h in found.hypotheses] for found in self._caption(enc, opts)]
        _check_scores(results, self.checkpoint)
        return results

    @torch.inference_mode()
    def caption_tensors(self, pixels: torch.Tensor, opts: DecodeOptions) -> list[list[ScoredCaption]]:
        """n-best captions for a batch of preprocessed images (B, 3, H, W)."""
        return self.captions_of_features(self.encode(pixels), opts)

    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        """Encoder features of preprocessed images (B, 3, H, W) in
        ``self.precision``, returned as float32 (:class:`InferenceEncoder`)."""
        return self.inference_encoder(pixels)

    @torch.inference_mode()
    def explain(self, image: Any, **options) -> Explanation:
        """The best caption of one image and, for each word, the attention map
        (h, w) over the encoder's grid that the decoder read while choosing it
        (Show, Attend and Tell's soft attention). A decoder without attention
        (NIC) raises ValueError."""
        return self.describe(image, attention=True, **options).explanation

    @torch.inference_mode()
    def describe(self, image: Any, attention: bool = False, **options) -> Description:
        """One photo's best caption with what a page needs beside it: its
        log-probability, score and length (a confidence signal's inputs), the
        ImageNet tags and classes, and the words that guided it; with
        ``attention``, also where the model looked for each word
        (``explanation``, as :meth:`explain` gives it), from the same search.
        Options as for :meth:`__call__` (``guided=False``, ``guidance_threshold``,
        ``n_best``...). Raises :class:`ImageError` for an image that cannot be
        read, and ValueError for ``attention`` with a decoder that has none."""
        if attention and not self.model.decoder.has_attention:
            raise ValueError(f"this model's decoder ({self.model.cfg.decoder}) has no attention to show; "
                             "explain() needs a show_attend_tell model")
        opts = self.options(**options)
        enc = self.encode(self.pixels(image).unsqueeze(0))
        (found,) = self._caption(enc, opts, attention)
        caps = [self._scored(h, found) for h in found.hypotheses]
        classes = self.model.class_tags(enc.pooled)[0] if self._has_head() else []
        best = caps[0]
        explanation = None
        if attention:
            h, w = enc.grid
            words = best.text.split()
            maps = found.attention[:len(words)].reshape(len(words), h, w).cpu().numpy()
            explanation = Explanation(best.text, words, maps, best.logprob, best.score, best.tags, best.required,
                                      best.satisfied)
        return Description(best.text, best.logprob, best.score, len(best.text.split()), best.tags, tuple(classes),
                           best.required, best.satisfied, tuple(caps), explanation)

    def _has_head(self) -> bool:
        return getattr(self.encoder, "classifier", None) is not None

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


def caption(images: Any, beam_size: int = BEAM_SIZE, n_best: int = 1, *, checkpoint: str | None = None,
            max_image_bytes: int | None = None, **options):
    """Caption a photo with the bundled model (or ``checkpoint``):

    >>> from showtell import caption
    >>> caption("photo.jpg")
    'a black dog is running through the grass'

    ``images`` is a path, raw bytes, a ``PIL.Image``, a numpy array, or a list of
    these (then a list comes back). ``n_best=k`` returns k :class:`ScoredCaption`
    (with the photo's ImageNet tags and the words that guided the caption).
    ``guided=False`` turns off guided captioning (on by default: a caption must
    name what the encoder's ImageNet classifier is confident of); or set its
    ``guidance_threshold`` (0..1]. Other options: ``max_len``, ``min_len``,
    ``length_penalty``, ``block_repeat_trigrams``, ``block_repeat_words``, ``ban_unk``.
    ``max_image_bytes`` raises the 10 MB limit on an image file (or bytes).
    """
    captioner = get_captioner(checkpoint)
    if max_image_bytes is not None:
        captioner = copy.copy(captioner)  # shares the loaded model; only the limit differs
        captioner.max_image_bytes = max_image_bytes
    return captioner(images, beam_size=beam_size, n_best=n_best, **options)

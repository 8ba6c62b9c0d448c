"""Training objectives, each an object beside the model (after
self-critical.pytorch's ``loss_wrapper.py``): a new objective is a new class,
not a branch inside the training loop.

- :class:`CrossEntropy`: teacher forcing, optional label smoothing, the
  doubly stochastic attention regulariser of Show, Attend and Tell
  (K. Xu et al., ICML 2015, eq. 14) and scheduled sampling (S. Bengio et al.,
  NeurIPS 2015) on a schedule over epochs.
- :class:`SelfCritical`: self-critical sequence training (S. Rennie et al.,
  "Self-critical Sequence Training for Image Captioning", CVPR 2017) with the
  CIDEr-D reward and, by default, the mean reward of the image's other samples
  as baseline (R. Luo, "A Better Variant of Self-Critical Sequence Training", 2020).

An objective is called as ``objective(model, batch)`` and returns
``(loss, weight)``: the scalar loss and how many items it averages over (for
the running mean in the log); ``objective.begin_epoch(epoch)`` is called
before each epoch (0-based) for what changes over a run. Underneath,
``objective.parts(model, batch)`` gives the loss as ``n_parts`` sums with the count each is divided by (tokens,
images x positions): several processes, each with a slice of the batch, add
up their counts before dividing, so their summed gradients equal one
process's on the whole batch (see showtell.distributed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .decoding import DecodeOptions


@dataclass
class CrossEntropy:
    pad_id: int
    label_smoothing: float = 0.0
    attention_reg: float = 0.0  # lambda of Xu et al. eq. 14; 0 = off
    scheduled_sampling: float = 0.0  # the highest probability of feeding the model its own word
    sampling_ramp: int = 5  # epochs over which that probability rises linearly from 0
    sampling: float = 0.0  # the probability in the current epoch (set by begin_epoch)

    n_parts = 2  # word cross-entropy / words; attention penalty / (images x positions)

    def begin_epoch(self, epoch: int) -> None:
        """Scheduled sampling's probability for ``epoch`` (0-based): 0 in the
        first epoch, reaching ``scheduled_sampling`` after ``sampling_ramp`` epochs."""
        self.sampling = self.scheduled_sampling * min(1.0, epoch / self.sampling_ramp)

    def parts(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums (2,) and the counts (2,) they are divided by."""
        captions = batch.captions  # (B, T)
        want_attention = self.attention_reg > 0 and model.decoder.has_attention
        logits, alphas = model(batch.features, captions, return_attention=True,
                               sampling=self.sampling if model.training else 0.0)  # (B, T-1, V), (B, T-1, P)
        target = captions[:, 1:]
        words = target != self.pad_id
        xent = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                               ignore_index=self.pad_id, label_smoothing=self.label_smoothing, reduction="sum")
        penalty, cells = xent.new_zeros(()), 1
        if want_attention:
            # Every position should receive, summed over the caption's words, about
            # one unit of attention: (1 - sum_t alpha_ti)^2, averaged over positions
            # and images (eq. 14, with the mean instead of the sum so lambda does not
            # depend on the map size).
            coverage = (alphas * words.unsqueeze(2).to(alphas.dtype)).sum(dim=1)  # (B, P)
            penalty, cells = self.attention_reg * ((1.0 - coverage.float()) ** 2).sum(), coverage.numel()
        counts = torch.stack([words.sum().to(xent.dtype), xent.new_tensor(float(cells))])
        return torch.stack([xent, penalty]), counts

    def __call__(self, model, batch) -> tuple[torch.Tensor, int]:
        sums, counts = self.parts(model, batch)
        return (sums / counts.clamp(min=1)).sum(), batch.captions.size(0)


@dataclass
class SelfCritical:
    cider: Any  # showtell.metrics.CiderD with the training references
    samples: int = 5
    baseline: str = "mean"  # "mean" of the other samples (Luo 2020) or "greedy" (Rennie et al.)
    max_len: int = 16

    def __post_init__(self):
        if self.baseline not in ("mean", "greedy"):
            raise ValueError(f"SCST baseline must be 'mean' or 'greedy', got {self.baseline!r}")
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError("the 'mean' baseline needs at least 2 samples per image")

    def rewards(self, model, captions: list, image_index: torch.Tensor) -> torch.Tensor:
        """CIDEr-D of id sequences (each up to its <end>) against their image's references."""
        words = [model.vocab.decode(ids) for ids in captions]
        return torch.as_tensor(self.cider.score_indices(words, image_index.tolist())[1], dtype=torch.float32)

    n_parts = 1  # -advantage x log-probability / sampled words

    def begin_epoch(self, epoch: int) -> None:
        pass  # nothing changes over a self-critical run

    def __call__(self, model, batch) -> tuple[torch.Tensor, int]:
        sums, counts = self.parts(model, batch)
        return (sums / counts.clamp(min=1)).sum(), batch.image_index.size(0)

    def parts(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy-gradient sum (1,) and the number of sampled words (1,) it is divided by."""
        feats, idx = batch.features, batch.image_index  # (B, ...), (B,) rows of the training corpus
        b, n = idx.size(0), self.samples
        tokens, logprobs, mask = model.sample(feats, n, self.max_len)  # (B*n, T) each
        reward = self.rewards(model, tokens.tolist(), idx.repeat_interleave(n)).view(b, n)
        if self.baseline == "mean":
            base = (reward.sum(dim=1, keepdim=True) - reward) / (n - 1)  # (B, n)
        else:
            greedy = model.generate(feats.detach(), DecodeOptions(
                beam_size=1, max_len=self.max_len, block_repeat_trigrams=False, block_repeat_words=False))
            base = self.rewards(model, [h[0].tokens for h in greedy], idx).unsqueeze(1)  # (B, 1)
        advantage = (reward - base).view(-1, 1).to(logprobs.device)  # (B*n, 1)
        return -(advantage * logprobs).sum().reshape(1), mask.sum().float().reshape(1)

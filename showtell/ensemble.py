"""Ensembles of trained captioners: several decoders that read the same
encoder's features write one caption together.

At every word each member gives its distribution over the vocabulary and the
ensemble decodes from their mean (the log of the mean probability), the
classic ensembling of Vinyals et al. and of most captioning papers since. The
ensemble is a decoder like the others (``init_state``, ``step``,
``reorder_state``), so greedy, beam and constrained search run it unchanged;
its state is the members' states one after another in one flat tuple.
It only decodes: train its members one by one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class EnsembleDecoder(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 decoders, got {len(members)}")
        kinds = {m.feature_kind for m in members}
        if len(kinds) != 1:
            raise ValueError(f"the decoders read different features ({', '.join(sorted(kinds))}): "
                             f"an ensemble's members must read the same ones")
        self.members = nn.ModuleList(members)
        self.feature_kind = kinds.pop()
        self.has_attention = all(getattr(m, "has_attention", False) for m in members)
        self._sizes: list[int] = []  # how many state tensors each member keeps

    def _split(self, state: State) -> list[State]:
        parts, start = [], 0
        for n in self._sizes:
            parts.append(state[start:start + n])
            start += n
        return parts

    def init_state(self, features: torch.Tensor) -> State:
        states = [m.init_state(features) for m in self.members]
        self._sizes = [len(s) for s in states]
        return tuple(t for s in states for t in s)

    def _mean_logprob(self, logits: list[torch.Tensor]) -> torch.Tensor:
        logp = torch.stack([x.float().log_softmax(-1) for x in logits])
        return torch.logsumexp(logp, dim=0) - math.log(len(logits))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The log of the members' mean next-word probability (B, V): already
        normalised, so a caller's log_softmax leaves it unchanged."""
        logits, new = [], []
        for member, s in zip(self.members, self._split(state)):
            x, s = member.step(tokens, s)
            logits.append(x)
            new.extend(s)
        return self._mean_logprob(logits), tuple(new)

    def step_with_attention(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Like :meth:`step`, with the members' mean attention (B, P)."""
        if not self.has_attention:
            raise RuntimeError("not every member of this ensemble attends")
        logits, new, alphas = [], [], []
        for member, s in zip(self.members, self._split(state)):
            x, s, alpha = member.step_with_attention(tokens, s)
            logits.append(x)
            new.extend(s)
            alphas.append(alpha)
        return self._mean_logprob(logits), tuple(new), torch.stack(alphas).mean(dim=0)

    def decoding_steps(self, precision: str = "float32"):
        # Each member steps as it does in training (an ensemble is for scoring, not latency).
        if precision != "float32":
            raise ValueError(f"an ensemble decodes in float32 only, got decoder_precision={precision!r}")
        return self

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        return tuple(t for member, s in zip(self.members, self._split(state))
                     for t in member.reorder_state(s, rows))

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False,
                sampling: float = 0.0):
        raise RuntimeError("an ensemble only decodes: train its members one by one")

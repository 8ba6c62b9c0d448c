"""Constrained beam search: captions that must contain given words.

P. Anderson, B. Fernando, M. Johnson, S. Gould, "Guided Open Vocabulary Image
Captioning with Constrained Beam Search", EMNLP 2017. Each image comes with up
to :data:`MAX_CONSTRAINTS` constraints, each a disjunctive set of word ids (the
caption must contain one word of each set: "cat" or "cats"). A finite-state
machine tracks which constraints a hypothesis has met, as a bitmask: with c
constraints there are S = 2**c states, each with its own beam of k hypotheses,
and a word moves a hypothesis from state s to ``s | bits(word)``. Only the
state with every bit set may finish a caption.

The search is :func:`showtell.decoding.search`, the one beam-search loop
(plain beam search is its one-state case): the same
:func:`~showtell.decoding.constrain`, length penalty, max_len cap and n-best
gathering, batched over images and states. An image without constraints
starts in the final state, so its beam is exactly plain beam search's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .decoding import MAX_CONSTRAINTS, Constraint, DecodeOptions, Hypothesis, search

__all__ = ["MAX_CONSTRAINTS", "Constraint", "ConstrainedResult", "constrained_beam_search"]


@dataclass(frozen=True)
class ConstrainedResult:
    """One image's captions. ``satisfied`` is False when no caption meeting every
    constraint finished within ``max_len``: the captions are then the best ones
    found regardless of the constraints."""
    hypotheses: list[Hypothesis]
    satisfied: bool


@torch.no_grad()
def constrained_beam_search(decoder, features: torch.Tensor, opts: DecodeOptions, end_id: int, start_id: int,
                            unk_id: int, constraints: Sequence[Sequence[Constraint]]) -> list[ConstrainedResult]:
    """The ``opts.n_best`` best captions of each image that contain a word of each
    of its constraint sets, best first. ``constraints[i]`` is image i's list of
    constraints (possibly empty), each a set of word ids."""
    if len(constraints) != features.size(0):
        raise ValueError(f"got constraints for {len(constraints)} images but features for {features.size(0)}")
    return [ConstrainedResult(hyps, satisfied)
            for hyps, satisfied in search(decoder, features, opts, end_id, start_id, unk_id, constraints)]

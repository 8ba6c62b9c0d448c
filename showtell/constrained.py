"""Constrained beam search: captions that must contain given words.

P. Anderson, B. Fernando, M. Johnson, S. Gould, "Guided Open Vocabulary Image
Captioning with Constrained Beam Search", EMNLP 2017. Each image comes with up
to :data:`MAX_CONSTRAINTS` constraints, each a disjunctive set of word ids (the
caption must contain one word of each set: "cat" or "cats"). A finite-state
machine tracks which constraints a hypothesis has met, as a bitmask: with c
constraints there are S = 2**c states, each with its own beam of k hypotheses,
and a word moves a hypothesis from state s to ``s | bits(word)``. Only the
state with every bit set may finish a caption.

Batched like :func:`showtell.decoding.beam_search`, whose conventions it follows
(the same :func:`~showtell.decoding.constrain`, length penalty, max_len cap and
n-best gathering): the k hypotheses of every state of every image are rows of
one (B*S*k, ...) batch, with no Python loop over images, states or hypotheses.
An image without constraints starts in the final state, so its beam is exactly
plain beam search's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .decoding import NEG_INF, DecodeOptions, Hypothesis, beam_search, constrain, ranked_hypotheses

# 2**3 = 8 beams per image is already 8x the work of plain beam search.
MAX_CONSTRAINTS = 3

Constraint = Sequence[int]  # a disjunctive set of word ids


@dataclass(frozen=True)
class ConstrainedResult:
    """One image's captions. ``satisfied`` is False when no caption meeting every
    constraint finished within ``max_len``: the captions are then the best ones
    found regardless of the constraints."""
    hypotheses: list[Hypothesis]
    satisfied: bool


def _word_bits(constraints: Sequence[Sequence[Constraint]], n_constraints: int, vocab_size: int,
               special: set[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) bitmask of the constraints each word meets, and (B,) each image's
    start state: constraints an image does not have count as met from the start."""
    bits = torch.zeros(len(constraints), vocab_size, dtype=torch.long)
    start = torch.zeros(len(constraints), dtype=torch.long)
    for i, per_image in enumerate(constraints):
        for c, words in enumerate(per_image):
            words = list(words)
            if not words:
                raise ValueError(f"image {i}: constraint {c} is an empty set of words")
            for w in words:
                if not 0 <= int(w) < vocab_size:
                    raise ValueError(f"image {i}: constraint word id {w} is outside the vocabulary (size {vocab_size})")
                if int(w) in special:
                    raise ValueError(f"image {i}: constraint word id {w} is a special token (<start>, <end> or <unk>)")
            bits[i, words] |= 1 << c
        start[i] = sum(1 << c for c in range(len(per_image), n_constraints))
    return bits.to(device), start.to(device)


@torch.no_grad()
def constrained_beam_search(decoder, features: torch.Tensor, opts: DecodeOptions, end_id: int, start_id: int,
                            unk_id: int, constraints: Sequence[Sequence[Constraint]]) -> list[ConstrainedResult]:
    """The ``opts.n_best`` best captions of each image that contain a word of each
    of its constraint sets, best first. ``constraints[i]`` is image i's list of
    constraints (possibly empty), each a set of word ids."""
    b, k, dev = features.size(0), opts.beam_size, features.device
    if len(constraints) != b:
        raise ValueError(f"got constraints for {len(constraints)} images but features for {b}")
    c = max((len(per) for per in constraints), default=0)
    if c > MAX_CONSTRAINTS:
        raise ValueError(f"at most {MAX_CONSTRAINTS} constraints per image, got {c}")
    if c == 0:  # nothing to enforce: plain beam search, exactly
        return [ConstrainedResult(h, True) for h in beam_search(decoder, features, opts, end_id, start_id, unk_id)]

    n_states = 1 << c
    final = n_states - 1
    state = tuple(s.repeat_interleave(n_states * k, dim=0) for s in decoder.init_state(features))  # (B*S*k, ...)
    tokens = torch.full((b * n_states * k,), start_id, dtype=torch.long, device=dev)
    seqs = torch.empty((b * n_states * k, 0), dtype=torch.long, device=dev)
    word_bits, start_state = None, None
    scores = torch.full((b, n_states, k), NEG_INF, device=dev)
    states = torch.arange(n_states, device=dev)
    base = (torch.arange(b, device=dev) * n_states * k).view(b, 1, 1)  # first row of each image
    fin_tokens, fin_logprob, fin_score, fin_final = [], [], [], []  # per step: (B,S,k,t), (B,S,k) x3
    n_finished = torch.zeros(b, dtype=torch.long, device=dev)
    capped = None
    for t in range(opts.max_len + 1):
        logits, state = decoder.step(tokens, state)
        logp = constrain(logits.float().log_softmax(-1), seqs, opts, end_id, unk_id)  # (B*S*k, V)
        v = logp.size(1)
        if word_bits is None:  # the vocabulary size is known once the decoder has spoken
            word_bits, start_state = _word_bits(constraints, c, v, {end_id, start_id, unk_id}, dev)
            scores[torch.arange(b, device=dev), start_state, 0] = 0.0  # expand one hypothesis of the start state
        cand = scores.unsqueeze(-1) + logp.view(b, n_states, k, v)  # (B, S_src, k, V)
        if t == opts.max_len:
            # At the cap, each alive hypothesis either ends here or is cut without <end>.
            end_lp = cand[..., end_id]  # (B, S, k)
            ended = torch.isfinite(end_lp)
            lp = torch.where(ended, end_lp, scores)
            length = torch.where(ended, t + 1, t).float()
            fin_tokens.append(seqs.view(b, n_states, k, t))
            fin_logprob.append(torch.where(torch.isfinite(scores), lp, NEG_INF))
            fin_score.append(fin_logprob[-1] / length ** opts.length_penalty)
            fin_final.append((states == final).view(1, n_states, 1).expand(b, n_states, k))
            capped = ~ended
            break
        # Where each candidate goes: (B, S_src, V) destination state, then each
        # destination state's candidates from every source state, as one row.
        dest = states.view(1, n_states, 1) | word_bits.unsqueeze(1)  # (B, S_src, V)
        into = dest.unsqueeze(1) == states.view(1, n_states, 1, 1)  # (B, S_dst, S_src, V)
        cand_dst = torch.where(into.unsqueeze(3), cand.unsqueeze(1), NEG_INF)  # (B, S_dst, S_src, k, V)
        cand_dst = cand_dst.view(b, n_states, n_states * k * v)
        top_lp, top_idx = cand_dst.topk(min(2 * k, n_states * k * v), dim=2)  # (B, S, 2k)
        src_hyp, word = top_idx // v, top_idx % v  # src_hyp = src_state * k + beam
        is_end = word == end_id
        # Hypotheses ending among a state's k best candidates are finished; only the
        # final state's count as captions (the others are kept for the fallback).
        fin_mask = is_end[..., :k] & torch.isfinite(top_lp[..., :k])
        fin_lp = torch.where(fin_mask, top_lp[..., :k], NEG_INF)
        fin_rows = (base + src_hyp[..., :k]).view(-1)
        fin_tokens.append(seqs[fin_rows].view(b, n_states, k, t))
        fin_logprob.append(fin_lp)
        fin_score.append(fin_lp / float(t + 1) ** opts.length_penalty)
        fin_final.append((states == final).view(1, n_states, 1).expand(b, n_states, k))
        n_finished += fin_mask[:, final].sum(dim=1)
        # Each state's k best candidates that do not end carry on.
        alive_lp = torch.where(is_end, NEG_INF, top_lp)
        alive_lp, order = alive_lp.topk(k, dim=2)  # (B, S, k)
        alive_lp = torch.where((n_finished >= k).view(b, 1, 1), NEG_INF, alive_lp)  # image done
        rows = (base + src_hyp.gather(2, order)).view(-1)
        tokens = word.gather(2, order).view(-1)
        seqs = torch.cat([seqs[rows], tokens.unsqueeze(1)], dim=1)
        state = decoder.reorder_state(state, rows)
        scores = alive_lp
        if not bool(torch.isfinite(scores).any()):
            break
    return _gather(fin_tokens, fin_logprob, fin_score, fin_final, capped, opts.n_best, constraints)


def _gather(fin_tokens, fin_logprob, fin_score, fin_final, capped, n_best, constraints) -> list[ConstrainedResult]:
    """Every finished hypothesis of every step; per image the n best of the final
    state, or, where it has none, the n best of any state."""
    b = fin_logprob[0].size(0)
    width = max(x.size(3) for x in fin_tokens)
    padded = [torch.nn.functional.pad(x, (0, width - x.size(3)), value=-1) for x in fin_tokens]
    all_tokens = torch.cat([x.flatten(1, 2) for x in padded], dim=1)  # (B, steps*S*k, width)
    all_lp = torch.cat([x.flatten(1) for x in fin_logprob], dim=1)
    all_score = torch.cat([x.flatten(1) for x in fin_score], dim=1)
    is_final = torch.cat([x.flatten(1) for x in fin_final], dim=1)
    is_cut = torch.zeros_like(all_lp, dtype=torch.bool)
    if capped is not None:
        last = capped.flatten(1)
        is_cut[:, -last.size(1):] = last
    met = torch.where(is_final, all_score, NEG_INF)
    satisfied = torch.isfinite(met).any(dim=1)  # (B,)
    ranked = torch.where(satisfied.unsqueeze(1), met, all_score)
    return [ConstrainedResult(hyps, bool(satisfied[i]) or not constraints[i])
            for i, hyps in enumerate(ranked_hypotheses(ranked, n_best, all_tokens, all_lp, is_cut))]

"""Greedy decoding and batched beam search over any showtell decoder.

Both carry the decoder state step to step (the prefix is never re-run) and
work on a whole batch of images at once: in beam search every image's k
hypotheses are rows of one (B*k, ...) batch, with no Python loop over images
or hypotheses. Both apply the same constraints (:func:`constrain`), so beam
search with ``beam_size=1`` is exactly greedy decoding. Beam search is one
loop (:func:`search`): plain search is the one-state case of constrained
beam search (:mod:`showtell.constrained`), whose captions must hold given words.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from .defaults import BEAM_SIZE, GUIDANCE_FALLBACK, LENGTH_PENALTY, MAX_LEN

NEG_INF = float("-inf")

# Upper bounds of the decoding options (issue 22): beam_size=100000 allocated
# over 20 GB and min_len=max_len=10**6 ran on. A caption is about 12 words
# (training truncates at 40) and beams beyond ~10 no longer raise any metric,
# so these are far above any useful value and still cheap to run.
MAX_BEAM_SIZE = 100
MAX_DECODE_LEN = 200  # words
# Scores are logprob / length ** length_penalty: beyond this the ranking no
# longer changes, and +-1e308 overflowed into OverflowError or an empty list.
MAX_LENGTH_PENALTY = 10.0


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = BEAM_SIZE
    n_best: int = 1
    max_len: int = MAX_LEN  # words, not counting <end>
    min_len: int = 1  # words before <end> may be chosen
    # Rank by logprob / length ** length_penalty (showtell.defaults says why 1.0); 0 = the plain sum.
    length_penalty: float = LENGTH_PENALTY
    block_repeat_trigrams: bool = True
    block_repeat_words: bool = True  # never the same word twice in a row
    ban_unk: bool = True  # an <unk> caption is never preferred
    # Guided captioning (showtell.guidance): the caption must name the encoder's
    # ImageNet tag when its probability is at least this; None = unguided.
    # CaptionModel.caption, which reads the tags, turns them into the constraints
    # that the search enforces (the search itself is given constraints, not tags).
    guidance_threshold: float | None = None
    # A guided caption whose mean log-probability per word falls more than this
    # below the unguided caption's is set aside for the unguided one: a tag
    # forced into a sentence that does not fit ("a woman ... with a pizza on
    # his head") is worse than no tag. None keeps every guided caption.
    guidance_fallback: float | None = GUIDANCE_FALLBACK

    def __post_init__(self):
        # Strict types: "5" or 2.5 would fail deep inside beam search, and a
        # bool is an int to Python but never a sensible beam size.
        import math
        import numbers

        for name in ("beam_size", "n_best", "max_len", "min_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, numbers.Real):
            raise TypeError(f"length_penalty must be a number, got {lp!r}")
        if not math.isfinite(lp):
            raise ValueError(f"length_penalty must be finite, got {lp!r}")
        for name in ("block_repeat_trigrams", "block_repeat_words", "ban_unk"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        g = self.guidance_threshold
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, numbers.Real):
                raise TypeError(f"guidance_threshold must be a number or None, got {g!r}")
            if not 0.0 < g <= 1.0:
                raise ValueError(f"guidance_threshold must be in (0, 1] (a probability), got {g!r}")
        f = self.guidance_fallback
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, numbers.Real):
                raise TypeError(f"guidance_fallback must be a number or None, got {f!r}")
            if not (math.isfinite(f) and f >= 0):
                raise ValueError(f"guidance_fallback must be a finite number >= 0 (log-probability per word), "
                                 f"got {f!r}")
        if abs(lp) > MAX_LENGTH_PENALTY:
            raise ValueError(f"length_penalty must be between -{MAX_LENGTH_PENALTY:g} and {MAX_LENGTH_PENALTY:g}, "
                             f"got {lp!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.beam_size > MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be at most {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({self.beam_size}), got {self.n_best}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {self.max_len}")
        if self.max_len > MAX_DECODE_LEN:
            raise ValueError(f"max_len must be at most {MAX_DECODE_LEN} words, got {self.max_len}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"min_len must be between 1 and max_len ({self.max_len}), got {self.min_len}")


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # word ids, without <start> and <end>
    logprob: float  # sum of the model's log-probabilities, <end> included when emitted
    score: float  # what hypotheses are ranked by (length-normalised logprob)
    finished: bool  # False when cut at max_len without <end>

    @property
    def mean_logprob(self) -> float:
        """Log-probability per word (<end> counted as a word when emitted)."""
        return self.logprob / max(1, len(self.tokens) + self.finished)


def constrain(logp: torch.Tensor, seqs: torch.Tensor, opts: DecodeOptions, end_id: int, unk_id: int) -> torch.Tensor:
    """Mask forbidden next words in ``logp`` (N, V) given the words so far
    ``seqs`` (N, t). Works in place (callers pass a fresh log_softmax: a copy
    per step would be pure overhead) and returns ``logp``."""
    t = seqs.size(1)
    if opts.ban_unk:
        logp[:, unk_id] = NEG_INF
    if t < opts.min_len:
        logp[:, end_id] = NEG_INF
    if opts.block_repeat_words and t >= 1:
        logp.scatter_(1, seqs[:, -1:], NEG_INF)
    if opts.block_repeat_trigrams and t >= 3:
        # A word w is banned if (seqs[-2], seqs[-1], w) already occurs.
        match = (seqs[:, :-2] == seqs[:, -2:-1]) & (seqs[:, 1:-1] == seqs[:, -1:])  # (N, t-2)
        penalty = torch.where(match, NEG_INF, 0.0).to(logp.dtype)
        logp.scatter_reduce_(1, seqs[:, 2:], penalty, reduce="amin")
    return logp


def _length(tokens: int, finished: bool) -> int:
    return tokens + (1 if finished else 0)


@torch.no_grad()
def greedy_decode(decoder, features: torch.Tensor, opts: DecodeOptions, end_id: int, start_id: int,
                  unk_id: int) -> list[Hypothesis]:
    """The most probable next word at each step, for a batch of images."""
    b, dev = features.size(0), features.device
    state = decoder.init_state(features)
    tokens = torch.full((b,), start_id, dtype=torch.long, device=dev)
    seqs = torch.empty((b, 0), dtype=torch.long, device=dev)
    logprob = torch.zeros(b, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)  # emitted <end> or stopped
    finished = torch.zeros(b, dtype=torch.bool, device=dev)  # emitted <end>
    for t in range(opts.max_len + 1):
        logits, state = decoder.step(tokens, state)
        logp = constrain(logits.float().log_softmax(-1), seqs, opts, end_id, unk_id)  # (B, V)
        if t == opts.max_len:  # at the cap a caption either ends here or is cut
            can_end = ~done & torch.isfinite(logp[:, end_id])
            logprob += torch.where(can_end, logp[:, end_id], 0.0)
            finished |= can_end
            break
        best, word = logp.max(dim=-1)
        word = torch.where(done, end_id, word)
        logprob += torch.where(done, 0.0, best)
        finished |= word == end_id
        done |= word == end_id
        seqs = torch.cat([seqs, word.unsqueeze(1)], dim=1)
        tokens = word
        if bool(done.all()):
            break
    out = []
    for row, lp, fin in zip(seqs.tolist(), logprob.tolist(), finished.tolist()):
        words = row[:row.index(end_id)] if end_id in row else row
        out.append(Hypothesis(words, lp, lp / _length(len(words), fin) ** opts.length_penalty, fin))
    return out


# Constrained beam search's limit: 2**3 = 8 beams per image is already 8x the work of plain beam search.
MAX_CONSTRAINTS = 3

Constraint = Sequence[int]  # a disjunctive set of word ids: the caption must contain one of them


@torch.no_grad()
def beam_search(decoder, features: torch.Tensor, opts: DecodeOptions, end_id: int, start_id: int,
                unk_id: int, constraints: Sequence[Sequence[Constraint]] | None = None,
                source: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """The ``opts.n_best`` best captions of each image, best first, by beam
    search; with ``constraints[i]`` (image i's constraint sets, possibly none),
    only captions holding a word of each set, as :func:`search` finds them."""
    return [hyps for hyps, _ in search(decoder, features, opts, end_id, start_id, unk_id, constraints, source)]


@torch.no_grad()
def search(decoder, features: torch.Tensor, opts: DecodeOptions, end_id: int, start_id: int, unk_id: int,
           constraints: Sequence[Sequence[Constraint]] | None = None,
           source: torch.Tensor | None = None) -> list[tuple[list[Hypothesis], bool]]:
    """Beam search, plain or constrained, in one loop: each image's n best
    hypotheses and whether they meet its constraints (False only when no
    caption meeting them finished within ``max_len``: they are then the best
    ones found regardless of the constraints).

    Constrained beam search (Anderson et al., :mod:`showtell.constrained`)
    tracks which of an image's c constraints a hypothesis has met as a
    bitmask: S = 2**c states, each with its own beam of k hypotheses; a word
    moves a hypothesis from state s to ``s | bits(word)``, and only the state
    with every bit set finishes captions. Plain beam search is the one-state
    case (c = 0): every image starts in the final state. An image with fewer
    constraints than the batch's most starts with the missing bits set, so
    its beam is exactly what it would be alone. The k hypotheses of every
    state of every image are rows of one (B*S*k, ...) batch, with no Python
    loop over images, states or hypotheses.

    ``source``: where one image is searched twice (say with and without its
    constraints), image i of the search reads ``features[source[i]]``, and
    the decoder's initial state (the image's projections) is made once per
    row of ``features``, not once per search."""
    n, k, dev = features.size(0), opts.beam_size, features.device
    if source is None:
        source = torch.arange(n, device=dev)
    elif source.dim() != 1 or (len(source) and not 0 <= int(source.min()) <= int(source.max()) < n):
        raise ValueError(f"source must index the {n} rows of features, got {source.tolist()}")
    b = len(source)
    if constraints is not None and len(constraints) != b:
        raise ValueError(f"got constraints for {len(constraints)} images but features for {b}")
    c = max((len(per) for per in constraints or ()), default=0)
    if c > MAX_CONSTRAINTS:
        raise ValueError(f"at most {MAX_CONSTRAINTS} constraints per image, got {c}")
    n_states = 1 << c
    final = n_states - 1
    image_rows = source.repeat_interleave(n_states * k)
    state = tuple(s.index_select(0, image_rows) for s in decoder.init_state(features))  # (B*S*k, ...)
    tokens = torch.full((b * n_states * k,), start_id, dtype=torch.long, device=dev)
    seqs = torch.empty((b * n_states * k, 0), dtype=torch.long, device=dev)
    word_bits = None
    scores = torch.full((b, n_states, k), NEG_INF, device=dev)
    if c == 0:
        scores[:, 0, 0] = 0.0  # all k beams start identical: expand only the first
    states = torch.arange(n_states, device=dev)
    base = (torch.arange(b, device=dev) * n_states * k).view(b, 1, 1)  # first row of each image
    fin_tokens, fin_logprob, fin_score = [], [], []  # per step: (B, S, k, t), (B, S, k), (B, S, k)
    n_finished = torch.zeros(b, dtype=torch.long, device=dev)
    capped = None
    into = None
    # Images still searched (bc of the b), by their index: an image with no hypothesis
    # left (done, or nothing alive) leaves the batch, so its rows stop costing a step.
    bc, active = b, None

    def full(x: torch.Tensor, fill) -> torch.Tensor:
        """A per-image result of the images still searched, as one of all b images."""
        if active is None:
            return x
        out = x.new_full((b,) + tuple(x.shape[1:]), fill)
        out[active] = x
        return out

    for t in range(opts.max_len + 1):
        logits, state = decoder.step(tokens, state)
        logp = constrain(logits.float().log_softmax(-1), seqs, opts, end_id, unk_id)  # (B*S*k, V)
        v = logp.size(1)
        if c and word_bits is None:  # the vocabulary size is known once the decoder has spoken
            word_bits, start_state = _word_bits(constraints, c, v, {end_id, start_id, unk_id}, dev)
            scores[torch.arange(b, device=dev), start_state, 0] = 0.0  # expand one hypothesis of the start state
            # Where each candidate goes, the same at every step: (B, S_src, V) destination
            # state, then for each destination state whether a source's word leads there.
            dest = states.view(1, n_states, 1) | word_bits.unsqueeze(1)  # (B, S_src, V)
            into = (dest.unsqueeze(1) == states.view(1, n_states, 1, 1)).unsqueeze(3)  # (B, S_dst, S_src, 1, V)
        cand = scores.unsqueeze(-1) + logp.view(bc, n_states, k, v)  # (B, S_src, k, V)
        if t == opts.max_len:
            # At the cap, each alive hypothesis either ends here or is cut without <end>.
            end_lp = cand[..., end_id]  # (B, S, k)
            ended = torch.isfinite(end_lp)
            lp = torch.where(ended, end_lp, scores)
            length = torch.where(ended, t + 1, t).float()
            fin_tokens.append(full(seqs.view(bc, n_states, k, t), -1))
            lp = torch.where(torch.isfinite(scores), lp, NEG_INF)
            fin_logprob.append(full(lp, NEG_INF))
            fin_score.append(full(lp / length ** opts.length_penalty, NEG_INF))
            capped = full(~ended, False)
            break
        if c:
            # Each destination state's candidates from every source state, as one row.
            cand = torch.where(into, cand.unsqueeze(1), NEG_INF)  # (B, S_dst, S_src, k, V)
        cand = cand.view(bc, n_states, n_states * k * v)  # one state: every candidate stays in it
        top_lp, top_idx = cand.topk(min(2 * k, n_states * k * v), dim=2)  # (B, S, 2k)
        src_hyp, word = top_idx // v, top_idx % v  # src_hyp = src_state * k + beam
        is_end = word == end_id
        # Hypotheses ending among a state's k best candidates are finished; only the
        # final state's count as captions (the others are kept for the fallback).
        fin_mask = is_end[..., :k] & torch.isfinite(top_lp[..., :k])
        fin_lp = torch.where(fin_mask, top_lp[..., :k], NEG_INF)
        fin_rows = (base + src_hyp[..., :k]).view(-1)
        fin_tokens.append(full(seqs[fin_rows].view(bc, n_states, k, t), -1))
        fin_logprob.append(full(fin_lp, NEG_INF))
        fin_score.append(full(fin_lp / float(t + 1) ** opts.length_penalty, NEG_INF))
        n_finished += fin_mask[:, final].sum(dim=1)
        # Each state's k best candidates that do not end carry on.
        alive_lp = torch.where(is_end, NEG_INF, top_lp)
        alive_lp, order = alive_lp.topk(k, dim=2)  # (B, S, k)
        alive_lp = torch.where((n_finished >= k).view(bc, 1, 1), NEG_INF, alive_lp)  # image done
        rows = (base + src_hyp.gather(2, order)).view(-1)
        tokens = word.gather(2, order).view(-1)
        seqs = torch.cat([seqs[rows], tokens.unsqueeze(1)], dim=1)
        state = decoder.reorder_state(state, rows)
        scores = alive_lp
        searched = torch.isfinite(scores).flatten(1).any(dim=1)  # (bc,) images with a hypothesis left
        left = int(searched.sum())
        if not left:
            break
        if bc - left >= max(1, bc // 8):  # enough rows to drop to pay for copying the others'
            keep = searched.nonzero().squeeze(1)
            kept_rows = (keep.view(-1, 1) * (n_states * k) + torch.arange(n_states * k, device=dev)).view(-1)
            state = tuple(s.index_select(0, kept_rows) for s in state)
            tokens, seqs, scores, n_finished = tokens[kept_rows], seqs[kept_rows], scores[keep], n_finished[keep]
            into = into[keep] if into is not None else None
            active = keep if active is None else active[keep]
            bc = len(keep)
            base = (torch.arange(bc, device=dev) * n_states * k).view(bc, 1, 1)
    # Every finished hypothesis of every step; per image the n best of the final
    # state, or, where it has none, the n best of any state.
    width = max(x.size(3) for x in fin_tokens)
    padded = [torch.nn.functional.pad(x, (0, width - x.size(3)), value=-1) for x in fin_tokens]
    all_tokens = torch.cat([x.flatten(1, 2) for x in padded], dim=1)  # (B, steps*S*k, width)
    all_lp = torch.cat([x.flatten(1) for x in fin_logprob], dim=1)
    all_score = torch.cat([x.flatten(1) for x in fin_score], dim=1)
    is_cut = torch.zeros_like(all_lp, dtype=torch.bool)
    if capped is not None:
        last = capped.flatten(1)
        is_cut[:, -last.size(1):] = last
    if c == 0:
        ranked, satisfied = all_score, [True] * b
    else:
        is_final = (states == final).repeat_interleave(k).repeat(len(fin_tokens))  # (steps*S*k,)
        met = torch.where(is_final, all_score, NEG_INF)
        met_any = torch.isfinite(met).any(dim=1)  # (B,)
        ranked = torch.where(met_any.unsqueeze(1), met, all_score)
        satisfied = [bool(met_any[i]) or not constraints[i] for i in range(b)]
    return list(zip(ranked_hypotheses(ranked, opts.n_best, all_tokens, all_lp, is_cut), satisfied))


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


def ranked_hypotheses(rank_by: torch.Tensor, n_best: int, tokens: torch.Tensor, logprob: torch.Tensor,
                      cut: torch.Tensor) -> list[list[Hypothesis]]:
    """The ``n_best`` finished hypotheses of each image, best first, out of
    candidates ranked by ``rank_by`` (B, N): their tokens (B, N, width) padded
    with -1, log-probabilities (B, N) and whether each was cut at max_len (B, N).
    Candidates ranked -inf are never returned."""
    best_score, best = rank_by.topk(min(n_best, rank_by.size(1)), dim=1)
    results = []
    for i in range(rank_by.size(0)):
        hyps = []
        for j, s in zip(best[i].tolist(), best_score[i].tolist()):
            if s == NEG_INF:
                continue
            toks = [w for w in tokens[i, j].tolist() if w >= 0]
            hyps.append(Hypothesis(toks, float(logprob[i, j]), float(s), not bool(cut[i, j])))
        results.append(hyps)
    return results


def sample(decoder, features: torch.Tensor, n: int, max_len: int, end_id: int, start_id: int,
           banned: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` captions per image from the model's own distribution, with
    gradients (self-critical training). Returns tokens (B*n, T), their
    log-probabilities (B*n, T) and a mask (B*n, T) of the positions that count:
    the words and the ``<end>`` that closes a caption, nothing after it. Rows
    i*n .. i*n+n-1 belong to image i. ``banned`` ids are never drawn."""
    # The image's part of the state (projected features, attention keys) is
    # computed once per image, then shared by its n samples.
    state = tuple(s.repeat_interleave(n, dim=0) for s in decoder.init_state(features))  # (B*n, ...)
    rows, dev = features.size(0) * n, features.device
    tokens = torch.full((rows,), start_id, dtype=torch.long, device=dev)
    alive = torch.ones(rows, dtype=torch.bool, device=dev)
    out_tokens, out_logp, out_mask = [], [], []
    for _ in range(max_len + 1):
        logits, state = decoder.step(tokens, state)
        if banned:
            # Out of the distribution before normalising: were they only masked
            # after it, every penalised sample would push probability mass onto
            # them, unseen (self-critical training then fills captions with them).
            logits = logits.index_fill(1, torch.tensor(banned, device=dev), NEG_INF)
        logp = logits.float().log_softmax(-1)  # (B*n, V)
        with torch.no_grad():
            # Gumbel-max: argmax(logp + Gumbel noise) is a draw from softmax(logp),
            # an order of magnitude faster than torch.multinomial on a CPU.
            word = (logp - torch.rand_like(logp).clamp_(min=1e-20).log_().neg_().log_()).argmax(dim=1)  # (B*n,)
        out_tokens.append(torch.where(alive, word, end_id))
        out_logp.append(logp.gather(1, word.unsqueeze(1)).squeeze(1))
        out_mask.append(alive)
        alive = alive & (word != end_id)
        tokens = word
        if not bool(alive.any()):
            break
    mask = torch.stack(out_mask, dim=1)
    return torch.stack(out_tokens, dim=1), torch.stack(out_logp, dim=1) * mask, mask


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The encoder's arithmetic. ``float32`` is every entry point's default:
    ``caption()``, the CLI, the web app and ``evaluate`` (cached features) then
    give the same captions. ``auto`` opts into the fastest reduced precision the
    device has: bfloat16 on a CPU with native bfloat16 instructions (AVX512-BF16
    or AMX), float16 on CUDA, float32 elsewhere; it changes about one caption in
    six on Flickr8k test (README, "Speed of captioning"). It applies to the
    encoder and the decoder; beam search's scores are always summed in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "float32"


def autocast(device: torch.device, precision: str):
    """Mixed precision for inference (weights stay float32); for float32,
    :func:`exact_float32` (a no-op off CUDA)."""
    if precision == "float32":
        return exact_float32(device)
    return torch.autocast(device.type, dtype=getattr(torch, precision))


_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_before = True


@contextlib.contextmanager
def exact_float32(device: str | torch.device):
    """float32 that is float32 on CUDA too: PyTorch lets cuDNN round float32
    convolutions to TF32 by default, which changed 1 of 100 captions against the
    CPU's on an H200 (none without; ``benchmarks/gpu_check.sh``). Thread-safe:
    TF32 comes back when the last concurrent user leaves. A no-op off CUDA."""
    global _tf32_users, _tf32_before
    if torch.device(device).type != "cuda":
        yield
        return
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_before = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cudnn.allow_tf32 = _tf32_before

"""Caption decoders.

- :class:`ShowTellDecoder`: O. Vinyals, A. Toshev, S. Bengio, D. Erhan,
  "Show and Tell: A Neural Image Caption Generator", CVPR 2015 (NIC). The image
  embedding is the LSTM's first input; word embeddings follow.
- :class:`ShowAttendTellDecoder`: K. Xu et al., "Show, Attend and Tell: Neural
  Image Caption Generation with Visual Attention", ICML 2015 (soft attention
  over the encoder's spatial map, with the gating scalar beta).

Both follow one contract, :class:`CaptionDecoder` (below), used by training,
greedy decoding and beam search, and each is built from its own config
(:data:`showtell.config.DECODER_CONFIGS`). To add a decoder: its config in
``config.py``, its class in this file, listed in ``DECODERS`` (CONTRIBUTING.md).
"""
from __future__ import annotations

import copy
import functools
import warnings
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, ShowAttendTellConfig, ShowTellConfig
from .defaults import DECODER_PRECISIONS

STEP_PRECISIONS = ("float32", "int8")  # what decoding_steps makes ("auto" is resolved before)

State = tuple[torch.Tensor, ...]


@runtime_checkable
class DecodingSteps(Protocol):
    """What inference steps, one word at a time: a decoder itself, or a faster
    copy of its arithmetic (:class:`FusedAttendSteps`)."""

    def init_state(self, features: torch.Tensor) -> State:
        """The state before the first word; every state tensor has the batch on dim 0."""

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B,) -> logits (B, V) for the next word, and the new state."""

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        """The state of hypotheses ``rows`` (for beam search, where a hypothesis
        only ever takes over another of the same image)."""


@runtime_checkable
class CaptionDecoder(DecodingSteps, Protocol):
    """The contract every decoder of ``DECODERS`` keeps (an ``nn.Module``
    built as ``cls(config, vocab_size, feature_dim)`` from its
    ``config_class``), read by training, greedy decoding and beam search:

    - ``forward(features, captions)``: teacher-forced logits; with
      ``return_attention=True`` also the attention weights (B, T-1, P) of a
      decoder that has them (``has_attention``), None for one that does not;
      with ``sampling=p`` scheduled sampling (each word fed back is, with
      probability p, drawn from the model's own previous prediction; see
      :func:`fed_words`);
    - ``init_state`` / ``step`` / ``reorder_state`` (:class:`DecodingSteps`);
    - ``decoding_steps(precision)``: what inference should step: the decoder itself,
      or for Show-Attend-Tell on a CPU in eval mode without gradients
      :class:`FusedAttendSteps`, the same arithmetic in fewer, larger matrix products;
      with ``precision="int8"`` (:data:`DECODER_PRECISIONS`), a copy whose matrix
      products read int8 weights (:class:`Int8Linear`);
    - ``feature_kind``: which cached features it reads, the pooled vector
      (B, C) ("pooled") or the spatial map (B, P, C) ("spatial").
    """

    config_class: type
    feature_kind: str
    has_attention: bool

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False,
                sampling: float = 0.0):
        """features, captions (B, T) = <start> w1 .. <end> <pad>.. -> logits (B, T-1, V)."""

    def decoding_steps(self, precision: str = "float32") -> DecodingSteps:
        """What inference steps (see the class docstring)."""


def fed_words(reference: torch.Tensor, previous_logits: torch.Tensor | None, sampling: float) -> torch.Tensor:
    """The words (B,) fed to the decoder at one teacher-forced step. Scheduled
    sampling (S. Bengio et al., "Scheduled Sampling for Sequence Prediction with
    Recurrent Neural Networks", NeurIPS 2015): each caption's word is, with
    probability ``sampling``, drawn from the model's own distribution at the
    previous step instead of the reference word, so training sees the
    model's mistakes as generation will. The targets stay the reference."""
    if sampling <= 0 or previous_logits is None:
        return reference
    own = torch.multinomial(previous_logits.detach().float().softmax(dim=-1), 1).squeeze(1)
    return torch.where(torch.rand(reference.shape, device=reference.device) < sampling, own, reference)


def check_decoder_precision(precision: str, choices: tuple[str, ...] = STEP_PRECISIONS) -> str:
    if precision not in choices:
        raise ValueError(f"decoder_precision must be one of {choices}, got {precision!r}")
    return precision


def resolve_decoder_precision(precision: str, device: str | torch.device, encoder_precision: str,
                              decoder: nn.Module) -> str:
    """The arithmetic the decoder's steps run in: ``precision`` itself, or for
    "auto" (the default) int8 where it runs (a CPU, ``encoder_precision``
    float32, a decoder with int8 steps, a quantized engine) and float32
    elsewhere (:data:`~showtell.defaults.DECODER_PRECISIONS`)."""
    if check_decoder_precision(precision, DECODER_PRECISIONS) != "auto":
        return precision
    if torch.device(device).type != "cpu" or encoder_precision != "float32" or not getattr(decoder, "has_int8", False):
        return "float32"
    return "int8" if torch.backends.quantized.engine in _quantized_engines() else "float32"


def _quantized_engines() -> list[str]:
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def int8_engine() -> str:
    """The quantized engine int8 decoding runs on (PyTorch's current one);
    a RuntimeError naming the option where this PyTorch build has none."""
    engines = _quantized_engines()
    if torch.backends.quantized.engine not in engines:
        raise RuntimeError(f"decoder_precision='int8' needs one of PyTorch's quantized engines (x86, fbgemm, "
                           f"onednn, qnnpack); this build has {engines or 'none'} and uses "
                           f"{torch.backends.quantized.engine!r}: use decoder_precision='float32'")
    return torch.backends.quantized.engine


def _check_int8_steps(module: nn.Module, device: str) -> None:
    """int8 steps are for inference on a CPU; elsewhere they are an error, not a silent float32."""
    if device != "cpu":
        raise ValueError(f"decoder_precision='int8' runs on a CPU only (the decoder is on {device}): "
                         "use decoder_precision='float32'")
    if module.training or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        raise ValueError("decoder_precision='int8' is for inference: eval mode, no gradients, no autocast "
                         "(precision='float32')")
    int8_engine()


def _weights_key(module: nn.Module) -> tuple:
    """Changes whenever a weight of ``module`` does (replaced, moved, written in place or cast)."""
    return tuple((id(p), p.data_ptr(), p._version, p.dtype) for p in module.parameters())


class Int8Linear:
    """``x @ weight.T + bias`` with the weight stored in int8, one scale per
    output row (symmetric), and ``x`` quantized to 8 bits per call: PyTorch's
    dynamic quantization (the kernels of ``torch.ao.quantization.quantize_dynamic``,
    called directly: its module API is deprecated in torch 2.14). Beam search
    multiplies a few rows by each matrix, so reading the weights is the cost,
    and int8 reads a quarter of float32's bytes. ``reduce_range`` as PyTorch's
    default for x86 and fbgemm (7-bit inputs: no overflow on CPUs without VNNI,
    and the same numbers on every x86 CPU).

    PyTorch's kernel quantizes the whole input with one scale and zero point,
    taken from its smallest and largest value: a row's result would depend on
    the other rows of the call (a photo's caption on the photos batched with
    it). So each row is first mapped onto [0, 1] by its own minimum and span
    (every call then quantizes with the same parameters), and the map is undone
    on the result: ``x = lo + span * u`` gives ``W x = span * (W u) + lo * W.sum(1)``.
    A row's result is then the same alone or in any batch, and each row gets
    the 8 bits' whole resolution. (Sending two rows at -1 and 1 along with
    the hidden state, which lies between them, is as batch-free and 1-2 %
    faster a caption, but fewer captions are float32's: 88 against 90 of
    100 Flickr8k test photos.)"""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        engine = int8_engine()
        weight = weight.detach().float()
        scale = (weight.abs().amax(dim=1).clamp_min(1e-8) / 127).double()  # (out,)
        zero = torch.zeros(weight.size(0), dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated, their kernels are not replaced yet
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        # the bias and lo * W.sum(1) (W as the kernel reads it) are added back in one product
        self.row_sums = qweight.dequantize().sum(dim=1).unsqueeze(0)  # (1, out)
        self.bias = torch.zeros(weight.size(0)) if bias is None else bias.detach().float().clone()
        self.reduce_range = engine in ("x86", "fbgemm")
        self.out_features = weight.size(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)
        span = (hi - lo).clamp_min_(1e-12)
        unit = (x - lo).div_(span)  # each row on [0, 1]
        out = torch.ops.quantized.linear_dynamic(unit, self.packed, self.reduce_range)
        return torch.addmm(self.bias, lo, self.row_sums).addcmul_(out, span)


class ShowTellDecoder(nn.Module):
    config_class = ShowTellConfig
    feature_kind = "pooled"
    has_int8 = True  # decoding_steps("int8")
    has_attention = False

    def __init__(self, cfg: ShowTellConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        self.image_embed = nn.Linear(feature_dim, cfg.embed_dim)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, num_layers=cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        self._int8: tuple[tuple, nn.Module] | None = None  # the int8 copy and the weights it was made of

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False,
                sampling: float = 0.0):
        """features (B, C), captions (B, T) = <start> w1 .. <end> <pad>..
        -> logits (B, T-1, V) predicting captions[:, 1:] (and None: no attention)."""
        if sampling > 0:
            logits = self._forward_step_by_step(features, captions, sampling)
            return (logits, None) if return_attention else logits
        img = self.image_embed(features).unsqueeze(1)  # (B, 1, E)
        words = self.dropout(self.embed(captions[:, :-1]))  # (B, T-1, E)
        # No dropout on the image step: it is the only view of the photo the LSTM gets.
        out, _ = self.lstm(torch.cat([img, words], dim=1))  # (B, T, H)
        logits = self.out(self.dropout(out[:, 1:]))  # the image step predicts nothing
        return (logits, None) if return_attention else logits

    def _forward_step_by_step(self, features: torch.Tensor, captions: torch.Tensor, sampling: float):
        """forward() one word at a time (same dropout), each word fed by :func:`fed_words`."""
        _, hc = self.lstm(self.image_embed(features).unsqueeze(1))
        logits = []
        for t in range(captions.size(1) - 1):
            words = fed_words(captions[:, t], logits[-1] if logits else None, sampling)
            out, hc = self.lstm(self.dropout(self.embed(words)).unsqueeze(1), hc)
            logits.append(self.out(self.dropout(out[:, 0])))
        return torch.stack(logits, dim=1)

    def init_state(self, features: torch.Tensor) -> State:
        _, (h, c) = self.lstm(self.image_embed(features).unsqueeze(1))  # (L, B, H) each
        return h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()  # (B, L, H)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B,) -> logits (B, V) for the next word, and the new state."""
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        out, (h, c) = self.lstm(self.embed(tokens).unsqueeze(1), (h, c))
        return self.out(out[:, 0]), (h.transpose(0, 1), c.transpose(0, 1))

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        return tuple(s.index_select(0, rows) for s in state)

    def decoding_steps(self, precision: str = "float32"):
        """The decoder itself (cuDNN's / MKL's LSTM already runs the whole cell
        as one operation); for int8, a copy with PyTorch's dynamically quantized
        LSTM and linear layers, remade whenever a weight changed."""
        if check_decoder_precision(precision) == "float32":
            return self
        _check_int8_steps(self, self.out.weight.device.type)
        key = _weights_key(self)
        if self._int8 is None or self._int8[0] != key:
            self._int8 = None  # not copied into the copy
            quantized = copy.deepcopy(self)
            with warnings.catch_warnings():  # torch.ao.quantization is deprecated; its modules still run
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                quantized = quantize_dynamic(quantized, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
            self._int8 = (key, quantized)
        return self._int8[1]


class ShowAttendTellDecoder(nn.Module):
    config_class = ShowAttendTellConfig
    feature_kind = "spatial"
    has_attention = True
    has_int8 = True  # decoding_steps("int8")

    def __init__(self, cfg: ShowAttendTellConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        d, h, a = cfg.embed_dim, cfg.hidden_dim, cfg.attention_dim
        self.feature_proj = nn.Sequential(nn.Linear(feature_dim, d), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.att_features = nn.Linear(d, a)
        self.att_hidden = nn.Linear(h, a)
        self.att_score = nn.Linear(a, 1)
        self.gate = nn.Linear(h, d)
        self.init_h = nn.Linear(d, h)
        self.init_c = nn.Linear(d, h)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(cfg.embed_dim + d, h)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, vocab_size)
        # inference's copies, by precision, and the weights they were made of
        self._fused: dict[str, tuple[tuple, FusedAttendSteps]] = {}

    def decoding_steps(self, precision: str = "float32"):
        """The steps inference runs: on a CPU, in eval mode without gradients,
        :class:`FusedAttendSteps` in ``precision`` (remade whenever a weight
        changed); else the decoder itself: training, SCST's sampling, autocast's
        reduced precision (whose per-operation casts the fused steps would
        bypass), and a GPU, where beam search is bound by kernel launches, not
        by reading weights, and the hand-written cell would launch more kernels
        than cuDNN's. int8 is only the fused steps: elsewhere it is an error."""
        device = self.out.weight.device.type
        if check_decoder_precision(precision) == "int8":
            _check_int8_steps(self, device)
        elif self.training or torch.is_grad_enabled() or device != "cpu" or torch.is_autocast_enabled(device):
            return self
        key = _weights_key(self)
        if precision not in self._fused or self._fused[precision][0] != key:
            self._fused[precision] = (key, FusedAttendSteps(self, precision))
        return self._fused[precision][1]

    def init_state(self, features: torch.Tensor) -> State:
        """features (B, P, C) -> (h, c, projected features (B, P, D), attention keys (B, P, A))."""
        feats = self.feature_proj(features)
        mean = feats.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), feats, self.att_features(feats)

    def _attend(self, h, feats, keys):
        scores = self.att_score(torch.tanh(keys + self.att_hidden(h).unsqueeze(1))).squeeze(2)  # (B, P)
        alpha = scores.softmax(dim=1)
        context = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, D)
        return torch.sigmoid(self.gate(h)) * context, alpha

    def step_with_attention(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Like :meth:`step`, also returning the attention (B, P) behind the next word."""
        h, c, feats, keys = state
        context, alpha = self._attend(h, feats, keys)
        h, c = self.cell(torch.cat([self.embed(tokens), context], dim=1), (h, c))
        return self.out(self.dropout(h)), (h, c, feats, keys), alpha

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, state, _ = self.step_with_attention(tokens, state)
        return logits, state

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        h, c, feats, keys = state
        # feats and keys are the image's: the same for all of its hypotheses, so
        # a reorder within an image leaves them unchanged (no 2 x (B*k, P, D) copy per step).
        return h.index_select(0, rows), c.index_select(0, rows), feats, keys

    def forward(self, features: torch.Tensor, captions: torch.Tensor, return_attention: bool = False,
                sampling: float = 0.0):
        """features (B, P, C), captions (B, T) -> logits (B, T-1, V), and with
        ``return_attention`` the attention weights (B, T-1, P) behind each word."""
        state = self.init_state(features)
        logits, alphas = [], []
        for t in range(captions.size(1) - 1):
            words = fed_words(captions[:, t], logits[-1] if logits else None, sampling)
            step_logits, state, alpha = self.step_with_attention(words, state)
            logits.append(step_logits)
            alphas.append(alpha)
        logits = torch.stack(logits, dim=1)
        return (logits, torch.stack(alphas, dim=1)) if return_attention else logits


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for float32 on a CPU. Beam search multiplies
    a few rows (its k hypotheses) by each matrix: MKL's GEMM then runs on one
    thread at about a third of its one-row speed per row, where oneDNN's splits
    the matrix over every core (benchmarks/bench_decoder_step.py)."""
    if _ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FusedAttendSteps:
    """:class:`ShowAttendTellDecoder`'s ``init_state``, ``step`` and
    ``reorder_state`` for inference, in two matrix products a word instead of
    six (the results equal the decoder's to float rounding):

    - a word's share of the LSTM's gates, embedding times input weights plus
      both biases, is a table (V, 4H) made once, read by row;
    - everything that reads the new hidden state (the output layer, then the
      next step's recurrent weights, attention query and gate) is one product
      with the four matrices stacked, its result carried in the state.

    The attention's scores ``w . tanh(keys + query) + b`` are computed as
    ``(2w) . sigmoid(2 keys + 2 query) + (b - sum(w))``, the same numbers to
    float rounding (tanh(y) = 2 sigmoid(2y) - 1): PyTorch's sigmoid on a CPU
    is about 5x faster than its tanh, and that tanh, over every hypothesis x
    image position x attention unit, was the largest single cost of a step.
    So the state carries ``2 keys`` and the query comes out of the hidden
    product already doubled (multiplying by 2 is exact in floating point).

    In ``precision="int8"`` both products of a step read int8 weights
    (:class:`Int8Linear`), and so do the image's projections in
    :meth:`init_state` (49 positions x the encoder's channels, once a photo:
    about 7x faster than float32's product on a 2-core CPU); the rest
    (attention, the cell's nonlinearities) stays float32.

    A frozen copy: :meth:`ShowAttendTellDecoder.decoding_steps` makes a new one
    when a weight changes."""

    def __init__(self, decoder: ShowAttendTellDecoder, precision: str = "float32"):
        with torch.no_grad():
            cell, e = decoder.cell, decoder.embed.embedding_dim
            self.decoder = decoder
            self.word_gates = torch.addmm(cell.bias_ih + cell.bias_hh, decoder.embed.weight,
                                          cell.weight_ih[:, :e].t())  # (V, 4H)
            self.context_weight = cell.weight_ih[:, e:].contiguous()  # (4H, D)
            self.vocab_size = decoder.out.out_features
            self.sizes = (cell.weight_hh.size(0), decoder.att_hidden.out_features, decoder.gate.out_features)
            # the attention query doubled (see the class docstring)
            self.hidden_weight = torch.cat([decoder.out.weight, cell.weight_hh, 2 * decoder.att_hidden.weight,
                                            decoder.gate.weight])  # (V + 4H + A + D, H)
            self.hidden_bias = torch.cat([decoder.out.bias, torch.zeros_like(cell.bias_hh),
                                          2 * decoder.att_hidden.bias, decoder.gate.bias])
            w = decoder.att_score.weight[0]  # (A,)
            self.score_weight = 2 * w
            self.score_bias = decoder.att_score.bias - w.sum()
            self.precision = check_decoder_precision(precision)
            if precision == "int8":
                self.hidden_product = Int8Linear(self.hidden_weight, self.hidden_bias)
                self.context_product = Int8Linear(self.context_weight)
                project = decoder.feature_proj[0]
                self.feature_product = Int8Linear(project.weight, project.bias)
                self.keys_product = Int8Linear(2 * decoder.att_features.weight, 2 * decoder.att_features.bias)
                self.init_product = Int8Linear(torch.cat([decoder.init_h.weight, decoder.init_c.weight]),
                                               torch.cat([decoder.init_h.bias, decoder.init_c.bias]))
            else:
                self.hidden_product = functools.partial(_linear, weight=self.hidden_weight, bias=self.hidden_bias)
                self.context_product = functools.partial(_linear, weight=self.context_weight)

    def init_state(self, features: torch.Tensor) -> State:
        """(h, c, feats) as the decoder's, its attention keys doubled, and what
        h is projected to (B, 4H + A + D)."""
        v = self.vocab_size
        if self.precision == "float32":
            h, c, feats, keys = self.decoder.init_state(features)
            return h, c, feats, keys.mul_(2), _linear(h, self.hidden_weight[v:], self.hidden_bias[v:])
        b, p, _ = features.shape
        feats = self.feature_product(features.flatten(0, 1)).relu_()  # (B*P, D)
        keys = self.keys_product(feats).view(b, p, -1)
        feats = feats.view(b, p, -1)
        h, c = self.init_product(feats.mean(dim=1)).tanh_().chunk(2, dim=1)
        return h, c, feats, keys, self.hidden_product(h)[:, v:]

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c, feats, keys, projected = state
        recurrent, query, gate = projected.split(self.sizes, dim=1)
        alpha = (torch.sigmoid_(keys + query.unsqueeze(1)) @ self.score_weight + self.score_bias).softmax(dim=1)
        context = torch.sigmoid(gate) * torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)
        gates = self.word_gates[tokens] + recurrent + self.context_product(context)
        i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTMCell's order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out = self.hidden_product(h)  # (B, V + 4H + A + D)
        return out[:, :self.vocab_size], (h, c, feats, keys, out[:, self.vocab_size:])

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        h, c, feats, keys, projected = state
        return h.index_select(0, rows), c.index_select(0, rows), feats, keys, projected.index_select(0, rows)


# Each decoder under its config's name (showtell.config.DECODER_CONFIGS names them).
DECODERS: dict[str, type[nn.Module]] = {cls.config_class.name: cls for cls in (ShowTellDecoder, ShowAttendTellDecoder)}


def build_decoder(cfg: ModelConfig, vocab_size: int, feature_dim: int) -> nn.Module:
    """The decoder ``cfg.decoder``, built from its own config ``cfg.decoder_config``."""
    if cfg.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {cfg.decoder!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[cfg.decoder](cfg.decoder_config, vocab_size, feature_dim)

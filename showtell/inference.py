"""The encoder run for inference: the one object that turns preprocessed
photos into features, for :class:`~showtell.captioner.Captioner` (caption(),
the CLI, the web page) and for :class:`~showtell.features.FeatureCache` (evaluate,
training) alike, so both get the same numbers the same way.

It decides, in one place: what runs the forward pass (ONNX Runtime on a CPU
where installed, :mod:`showtell.onnx_encoder`; else PyTorch on the encoder's
:meth:`~showtell.encoders.ImageEncoder.for_inference` copy, channels-last),
how many photos go through at once, the arithmetic (float32 that stays
float32 on CUDA, or a reduced precision by autocast) and whether each photo's
features are averaged with its mirror image's.
"""
from __future__ import annotations

import functools

import torch

from .decoding import autocast
from .encoders import EncoderOutput, ImageEncoder, mirror_averaged
from .onnx_encoder import ONNX_CPU_BATCH, onnx_runtime_encoder

# Photos per PyTorch encoder call on a CPU: small batches stay in the cores'
# caches (EfficientNet-Lite0 on 2 AMD EPYC cores: ~7 ms/photo at 1-8 photos
# against ~17 at 32; a cache build ~26 photos/s at 64 a call against 40-48 at 4;
# ``python benchmarks/bench_features.py --batch-size N --runtime torch``).
TORCH_CPU_BATCH = 8
GPU_BATCH = 64  # a GPU wants large batches


def encoder_batch(on_gpu: bool, onnx: bool = False) -> int:
    """Photos per encoder call: :data:`GPU_BATCH` on a GPU, else
    :data:`~showtell.onnx_encoder.ONNX_CPU_BATCH` in ONNX Runtime and
    :data:`TORCH_CPU_BATCH` in PyTorch."""
    return GPU_BATCH if on_gpu else ONNX_CPU_BATCH if onnx else TORCH_CPU_BATCH


class InferenceEncoder:
    """``encoder`` made ready to compute features on ``device``: call it with
    preprocessed images (B, 3, H, W) to get their :class:`EncoderOutput` in
    float32 on ``device``.

    ``runtime``: ``"auto"`` (ONNX Runtime on a CPU in float32 where installed:
    EfficientNet-Lite0's forward pass takes about half PyTorch's time there),
    ``"torch"`` or ``"onnxruntime"``. ``precision``: ``"float32"`` or a reduced
    one (:func:`~showtell.decoding.resolve_precision`), which is PyTorch's
    autocast and so keeps the encoder in PyTorch. ``mirror_average``: each
    photo's features averaged with its mirror image's
    (:func:`~showtell.encoders.mirror_averaged`). ``spin``: as for
    :class:`~showtell.onnx_encoder.OnnxEncoder` (off where other work shares
    the cores between calls). ``batch_size``: photos per call, by default
    :func:`encoder_batch`'s."""

    def __init__(self, encoder: ImageEncoder, device: str | torch.device = "cpu", runtime: str = "auto",
                 precision: str = "float32", mirror_average: bool = False, spin: bool = True,
                 batch_size: int | None = None):
        self.device = torch.device(device)
        if runtime == "onnxruntime" and precision != "float32":
            raise ValueError(f"the onnxruntime runtime runs the encoder in float32, not {precision}; "
                             "use runtime 'torch' or 'auto' with a reduced precision")
        if runtime == "auto" and precision != "float32":
            runtime = "torch"
        # raises for an unknown runtime, or "onnxruntime" where it cannot run (before touching the device)
        self._onnx = onnx_runtime_encoder(encoder, self.device, runtime, spin)
        self._encoder = encoder
        self.runtime = "torch" if self._onnx is None else "onnxruntime"
        self.precision = precision
        self.mirror_average = mirror_average
        self.batch_size = batch_size or encoder_batch(self.device.type == "cuda", self._onnx is not None)

    @functools.cached_property
    def module(self) -> ImageEncoder:
        """The encoder's folded copy (batch norm in the convolutions) on the
        device: PyTorch's forward pass, and the ImageNet head's (made when first
        asked for: a cache built by ONNX Runtime never needs it)."""
        module = self._encoder.for_inference().to(self.device)
        self._encoder = None  # only the folded copy is kept
        return module

    def _forward(self, x: torch.Tensor) -> EncoderOutput:
        if self._onnx is not None:  # ONNX Runtime reads NCHW as it comes
            return self._onnx(x)
        return self.module(x.contiguous(memory_format=torch.channels_last))

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> EncoderOutput:
        x = pixels.to(self.device, non_blocking=True)
        step = self.batch_size
        # exact_float32 for float32: the same features on CUDA as on a CPU (no TF32)
        with autocast(self.device, self.precision):
            parts = [mirror_averaged(self._forward, x[i:i + step]) if self.mirror_average
                     else self._forward(x[i:i + step]) for i in range(0, len(x), step)]
        # One array each (contiguous: ONNX Runtime's spatial rows are a transposed view of its map).
        return EncoderOutput(torch.cat([p.pooled for p in parts]).float(),
                             torch.cat([p.spatial for p in parts]).float(), parts[0].grid)

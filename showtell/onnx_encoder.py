"""The encoder's forward pass in ONNX Runtime on a CPU, where
:class:`~showtell.inference.InferenceEncoder` (the feature cache, caption(),
the CLI, the web app) chooses it.

Eager PyTorch runs EfficientNet-Lite0's depthwise convolutions slowly on a
CPU; ONNX Runtime fuses each convolution with its activation. On 2 AMD EPYC
cores (float32) the forward pass alone took 11-14 ms a photo against about 31,
and the whole Flickr8k cache builds at 63.3 photos/s against PyTorch's 29.7
(``python benchmarks/bench_features.py [--runtime torch]``). The network is the
encoder's :meth:`for_inference` copy (batch norm folded), exported in memory
when a cache build starts or a Captioner loads (nothing written to disk; about
0.4 s for Lite0, in the benchmarks' times), so the features are the encoder's
own to float tolerance and the cache key does not depend on which runtime
built them.

Optional: ``requirements-onnx.txt`` (onnx, onnxruntime). Without it PyTorch
runs the encoder.
"""
from __future__ import annotations

import ctypes
import importlib.util
import io
import os
import warnings
import weakref

import torch

from .defaults import ENCODER_RUNTIMES
from .encoders import EncoderOutput, ImageEncoder

RUNTIMES = ENCODER_RUNTIMES
# Photos per call: ONNX Runtime on 2 cores was fastest at 16 (a cache build of 1,500
# Flickr8k photos: 50 photos/s at 4, 62 at 16; benchmarks/bench_features.py --batch-size N).
ONNX_CPU_BATCH = 16
INSTALL_HINT = "pip install -r requirements-onnx.txt (onnx, onnxruntime)"


def available() -> bool:
    """Whether ONNX Runtime and the onnx package (which the exporter writes with) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class OnnxEncoder:
    """Callable like an inference encoder: images (B, 3, H, W) on the CPU -> :class:`EncoderOutput`.
    ``spin=False`` for callers that run other work on the cores between calls."""

    def __init__(self, encoder: ImageEncoder, spin: bool = True):
        if not available():
            raise RuntimeError(f"the onnxruntime runtime needs ONNX Runtime: {INSTALL_HINT}")
        import onnxruntime as ort

        body = encoder.for_inference().body.to(memory_format=torch.contiguous_format)
        h, w = encoder.preprocessing.size
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # The exporter reports graph details it could not constant-fold; the network is unchanged.
            warnings.simplefilter("ignore")
            torch.onnx.export(body, (torch.zeros(1, 3, h, w),), buf, input_names=["images"],
                              output_names=["feature_map"], opset_version=17, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "feature_map": {0: "batch"}})
        self._model, self._spin = buf.getvalue(), spin
        self._session = self._new_session(torch.get_num_threads())
        _LIVE.add(self)

    def _new_session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's idle threads spin for a while after each call: faster
        # back-to-back calls (a cache build: 79-80 photos/s against 67-72 without,
        # 1,500 photos), but between captions they take the cores from PyTorch's
        # decoder (caption() took 116-118 ms against 62-72 without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin else "0")
        return ort.InferenceSession(self._model, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> EncoderOutput:
        if images.device.type != "cpu":
            raise ValueError(f"OnnxEncoder runs on the CPU; got images on {images.device}")
        if self._session is None:  # forked: a new session with one thread, as torch gets after a fork
            self._session = self._new_session(1)
        x = images.detach().float().contiguous().numpy()
        (fmap,) = self._session.run(None, {"images": x})
        return EncoderOutput.of_map(torch.from_numpy(fmap))


_LIVE: weakref.WeakSet[OnnxEncoder] = weakref.WeakSet()


def _drop_sessions_after_fork() -> None:
    """In a fork()ed child (multiprocessing's default on Linux), set aside every
    session: its thread pool stayed in the parent, so run() would wait for it
    forever, and so would its destructor (the child hung even at exit). The
    parent's sessions are never freed in the child; each encoder makes a new
    one on its next call."""
    for encoder in list(_LIVE):
        if encoder._session is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(encoder._session))
            encoder._session = None


os.register_at_fork(after_in_child=_drop_sessions_after_fork)


def onnx_runtime_encoder(encoder: ImageEncoder, device: str | torch.device = "cpu", runtime: str = "auto",
                         spin: bool = True) -> OnnxEncoder | None:
    """``encoder`` in ONNX Runtime where ``runtime`` asks for it (``"onnxruntime"``)
    or allows it (``"auto"``: on a CPU, when installed), else None: PyTorch runs
    it (``"torch"``, or an export that failed under ``"auto"``, with a warning).
    ``spin`` as for :class:`OnnxEncoder`. Raises for an unknown runtime, and for
    ``"onnxruntime"`` off the CPU, not installed, or failing to export."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "onnxruntime" and not on_cpu:
        raise ValueError(f"the onnxruntime runtime runs the encoder on the CPU, not on {device}; "
                         "use runtime 'torch' or 'auto' there")
    if runtime == "onnxruntime" or (runtime == "auto" and on_cpu and available()):
        try:
            return OnnxEncoder(encoder, spin=spin)
        except Exception as e:  # an encoder the exporter cannot handle: PyTorch computes the same features
            if runtime == "onnxruntime":
                raise
            warnings.warn(f"ONNX Runtime could not run {encoder.name} ({type(e).__name__}: {e}); "
                          "computing features with PyTorch", stacklevel=2)
    return None


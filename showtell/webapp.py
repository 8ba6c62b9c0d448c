"""The web UI: upload a photo, get captions (Gradio Blocks).

``app.py`` at the repository root is the command-line entry point; the logic
lives here so it can be tested without a server:

* :func:`caption_image` is the request handler as a plain function;
* :func:`build_demo` builds the ``gr.Blocks`` page around one loaded
  :class:`~showtell.captioner.Captioner` (the model is never loaded twice);
* :func:`launch` starts it with the queue and upload limits set.

Uploads are decoded by :func:`showtell.images.load_image`, the same code path
as ``caption()`` and training, so a bad upload gets the same clear message
(not an image, truncated, empty, too many pixels) in the page and through
``gradio_client``.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

# Nothing may reach the internet: set these before gradio / gradio_client /
# huggingface_hub are imported (they read them at import time).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from .captioner import Captioner  # noqa: E402
from .images import MAX_IMAGE_PIXELS, ImageError  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

DEFAULT_BEAM = 3
DEFAULT_CAPTIONS = 3
MAX_BEAM = 10
MAX_CAPTIONS = 5
DEFAULT_MAX_FILE_SIZE = "10mb"
# Caption requests served at the same time (the button, the examples and the
# API share this one limit), each with cores // concurrency torch threads (set
# by app.py, see threads_per_request). Measured with benchmarks/bench_app.py
# on 2 cores while another process was training:
# * torch threads matter most: 2 threads per request next to a busy process
#   took ~2 s per caption (OpenMP threads spinning against each other), 1 thread
#   took ~65 ms. So a request gets 1 thread and 2 requests run in parallel to
#   use both cores; the model is loaded once and shared (forward passes in
#   inference mode are thread-safe).
# * with 8 concurrent clients, concurrency 1, 2 and 4 gave the same median
#   (~1.0-1.05 s) and throughput (7.2-7.7 req/s): what is left is Gradio's and
#   the clients' own overhead (~100 ms per call with a no-op model; gradio_client
#   polls for results every 50 ms).
# * no batching (batch=True): one batch of 4 images costs ~29 ms of compute per
#   image instead of ~60 ms, but at 8 clients the model used under half a core
#   (7.5 req/s x 60 ms), so batching would not move these numbers; and Gradio
#   fails every request of a batch when one of them raises, so one bad upload
#   would give other users an error.
# Override with --concurrency / SHOWTELL_CONCURRENCY.
DEFAULT_CONCURRENCY = 2
QUEUE_MAX_SIZE = 64  # waiting requests beyond this get "Queue is full"
TABLE_HEADERS = ["rank", "caption", "probability", "share of n-best (%)"]

CSS = """
#best-caption textarea { font-size: 1.6rem !important; font-weight: 600; line-height: 1.3; }
"""

ACCEPTED = (f"Please upload a JPEG, PNG, WebP, GIF or BMP photo of at most "
            f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels.")


def threads_per_request(concurrency: int = DEFAULT_CONCURRENCY) -> int:
    """torch threads for each request so that ``concurrency`` requests at once
    use the CPU cores without oversubscribing them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, concurrency))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number between {lo} and {hi}, got {value!r}.",
                       print_exception=False) from None
    if not math.isfinite(f) or f != round(f) or not lo <= f <= hi:
        raise gr.Error(f"{name} must be a whole number between {lo} and {hi}, got {value!r}.",
                       print_exception=False)
    return int(round(f))


def _display_name(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.path.basename(os.fspath(image)) or "the uploaded file"
    return "the image"


def caption_image(captioner: Captioner, image: Any, beam_size: Any = DEFAULT_BEAM,
                  num_captions: Any = DEFAULT_CAPTIONS) -> tuple[str, list[list]]:
    """Caption one image for the UI and the API.

    ``image`` is a file path (what the page and ``gradio_client`` send), a
    ``PIL.Image`` or a numpy array. Returns ``(best caption, n-best rows)``
    where each row is ``[rank, caption, probability, share %]``, best first.
    ``probability`` is the model's probability of the whole sentence,
    ``exp(logprob)``; ``share`` is the softmax of the log-probabilities over the
    n-best list (sums to 100). ``num_captions`` larger than ``beam_size`` is
    clamped to it (a beam of k yields at most k captions).

    Raises ``gr.Error`` with a clear message for a missing or unreadable image
    or an out-of-range option; Gradio shows it in the page and ``gradio_client``
    raises it as ``AppError`` with the same text.
    """
    if image is None:
        raise gr.Error("Please upload an image first.", print_exception=False)
    beam = _as_int(beam_size, "Beam size", 1, MAX_BEAM)
    n = min(_as_int(num_captions, "Number of captions", 1, MAX_CAPTIONS), beam)
    (result,) = captioner.caption_each([image], beam_size=beam, n_best=n)
    if isinstance(result, ImageError):
        name, msg = _display_name(image), str(result)
        if isinstance(image, (str, os.PathLike)):
            # Name the file as the user knows it, not by its server-side temp path.
            msg = msg.replace(os.fspath(image), name)
        if not msg.startswith(name + ":"):
            msg = f"{name}: {msg}"
        raise gr.Error(f"Could not caption {msg.rstrip('.')}. {ACCEPTED}", print_exception=False)
    caps = [c for c in result if math.isfinite(c.logprob)]
    if not caps:
        raise gr.Error("The model produced no caption for this image.", print_exception=False)
    top = max(c.logprob for c in caps)
    weights = [math.exp(c.logprob - top) for c in caps]
    total = sum(weights)
    rows = [[rank, c.text, float(f"{math.exp(c.logprob):.3g}"), round(100.0 * w / total, 1)]
            for rank, (c, w) in enumerate(zip(caps, weights), start=1)]
    return caps[0].text, rows


def _image_input(**kwargs) -> gr.Image:
    """A ``gr.Image`` that hands our function the uploaded file's path without
    decoding it: Gradio's own preprocessing opens every upload with Pillow and
    a non-image or truncated file would fail there with a generic error, before
    our code runs. :func:`load_image` decodes it instead and names the problem.

    The instance's ``preprocess`` is wrapped rather than subclassing
    ``gr.Image`` (Gradio writes a ``.pyi`` stub next to modules that define
    component subclasses)."""
    component = gr.Image(type="filepath", **kwargs)
    original = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        try:  # a base64 data: URL (rare): let Gradio write it to a file
            return original(payload)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(f"Could not read the uploaded image ({type(e).__name__}). {ACCEPTED}",
                           print_exception=False) from e

    component.preprocess = preprocess
    return component


def example_photos() -> list[str]:
    return [str(p) for p in sorted(EXAMPLES_DIR.glob("*.jpg"))]


def build_demo(captioner: Captioner, concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """The page, around one loaded ``captioner``. ``concurrency`` is how many
    caption requests run at once (the page, examples and API share it)."""

    def caption(image, beam_size=DEFAULT_BEAM, num_captions=DEFAULT_CAPTIONS):
        """Caption a photo. Returns the best caption and the n-best list
        (rank, caption, probability = exp(log-prob), share of the n-best in %)."""
        return caption_image(captioner, image, beam_size, num_captions)

    with gr.Blocks(title="Show and Tell: image captions") as demo:
        gr.Markdown("# Show and Tell\nUpload a photo (or paste one, or use the webcam) and press "
                    "**Caption**. The model is a CNN encoder with an LSTM decoder trained on Flickr8k; "
                    "captions come from beam search.")
        with gr.Row():
            with gr.Column():
                image = _image_input(label="Photo", elem_id="photo", sources=["upload", "clipboard", "webcam"],
                                     height=340)
                with gr.Row():
                    beam = gr.Slider(1, MAX_BEAM, value=DEFAULT_BEAM, step=1, label="Beam size",
                                     info="More beams search more captions (slower).", elem_id="beam-size")
                    nbest = gr.Slider(1, MAX_CAPTIONS, value=DEFAULT_CAPTIONS, step=1,
                                      label="Number of captions",
                                      info="At most the beam size (larger values are clamped).",
                                      elem_id="num-captions")
                button = gr.Button("Caption", variant="primary", elem_id="caption-btn")
            with gr.Column():
                best = gr.Textbox(label="Best caption", elem_id="best-caption", interactive=False, lines=2,
                                  buttons=["copy"])
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "str", "number", "number"],
                                     interactive=False, label="N-best captions", elem_id="nbest", wrap=True,
                                     column_widths=["8%", "52%", "20%", "20%"])
                gr.Markdown("*probability* is the model's probability of the whole caption, exp(sum of word "
                            "log-probabilities); *share of n-best* normalises these over the listed captions "
                            "(softmax), so they add up to 100%.")
        button.click(caption, inputs=[image, beam, nbest], outputs=[best, table], api_name="caption",
                     concurrency_limit=concurrency, concurrency_id="caption")
        photos = example_photos()
        if photos:
            examples = gr.Examples(examples=[[p] for p in photos], inputs=[image], label="Examples (click one)",
                                   elem_id="examples", cache_examples=False, run_on_click=False,
                                   api_visibility="private")
            # One click fills the image and captions it with the current slider values.
            examples.load_input_event.then(caption, inputs=[image, beam, nbest], outputs=[best, table],
                                           api_visibility="private", concurrency_limit=concurrency,
                                           concurrency_id="caption")
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX_SIZE)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860,
           max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE, **kwargs):
    """Start the server (blocking unless ``prevent_thread_lock=True``)."""
    return demo.launch(server_name=host, server_port=port, max_file_size=max_file_size, css=CSS, **kwargs)


def warm_up(captioner: Captioner) -> None:
    """Caption one example so the first real request does not pay for
    one-time setup inside torch (allocators, kernels)."""
    photos = example_photos()
    captioner.caption_each([photos[0] if photos else _blank()], beam_size=DEFAULT_BEAM, n_best=1)


def _blank():
    from PIL import Image
    return Image.new("RGB", (224, 224), (127, 127, 127))


__all__ = ["build_demo", "caption_image", "launch", "warm_up", "free_port", "threads_per_request"]

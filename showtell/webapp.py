"""The web UI: upload a photo, get captions and see where the model looked
(Gradio Blocks).

``app.py`` at the repository root is the command-line entry point; the logic
lives here so it can be tested without a server:

* :func:`caption_image` is the API's handler as a plain function: the best
  caption, the n-best list with the score each is ranked by, a confidence signal, the
  time taken, and what the encoder recognised (the tags that guided the caption);
* :func:`page_outputs` is the page's handler as a plain function: the same
  from one caption of the photo, plus where the model looked for each word,
  keyed by the names of the page's outputs (:data:`PAGE_OUTPUTS`);
* :func:`build_demo` builds the page around one loaded
  :class:`~showtell.captioner.Captioner` (the model is never loaded twice);
* :func:`launch` starts it with the queue, upload and request-size limits and
  the header timeout set.

Uploads are decoded by :func:`showtell.images.load_image`, the same code path
as ``caption()`` and training, so a bad upload gets the same clear message
(not an image, truncated, empty, too many pixels) in the page and through
``gradio_client``. The page shows that message once, in place of the caption;
the API raises it (``AppError`` in ``gradio_client``).
"""
from __future__ import annotations

import base64
import binascii
import html
import io
import json
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

# Nothing may reach the internet: set these before gradio / gradio_client /
# huggingface_hub are imported (they read them at import time).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import h11  # noqa: E402
import pydantic  # noqa: E402
import uvicorn.config  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from gradio.route_utils import FnIndexInferError  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402

from .captioner import Captioner, Description, Explanation  # noqa: E402
from .defaults import BEAM_SIZE  # noqa: E402
from .images import ACCEPTED, ImageError, load_image  # noqa: E402
from .overlay import attention_overlay, fit_within  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

DEFAULT_BEAM = BEAM_SIZE
DEFAULT_CAPTIONS = 3
MAX_BEAM = 10
MAX_CAPTIONS = 5
DEFAULT_MAX_FILE_SIZE = "10mb"
OVERLAY_SIZE = 448  # longer side of the attention overlays shown in the page
LOG_LINE_CHARS = 2000  # the longest line written to the server's stdout / stderr
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
# Uploads and the overlays of page captions are files in Gradio's cache; every
# DELETE_EVERY seconds those older than DELETE_AFTER are deleted, and all of
# them at shutdown (30 uploads never captioned left 28.6 MB, and every page
# caption 13 overlays, for good). Override with SHOWTELL_DELETE_AFTER.
DELETE_AFTER = 300
DELETE_EVERY = 60
# A request's line and headers must arrive within this many seconds of the
# server starting to wait for them (a new connection, or the end of the
# previous response): a connection that sends nothing is closed, one that
# sends part of a head (slowloris) gets 408 and is closed. uvicorn has no such
# limit (500 idle sockets were held open for good); its keep-alive timeout
# (5 s) only covers a connection idle after a response, until its first byte.
# Override with SHOWTELL_HEADER_TIMEOUT.
HEADER_TIMEOUT = 10.0
# The n-best table: each caption with the score it is ranked by (the log-probability
# per word, the page's length penalty being 1), the same number `showtell caption
# --n-best` prints.
SCORE_HEADER = "log-prob per word"
TABLE_HEADERS = ["#", "caption", SCORE_HEADER]

CSS = """
#best-caption textarea { font-size: 1.6rem !important; font-weight: 600; line-height: 1.3; }
/* Gradio sizes the textarea from its text once, when the caption arrives; a
   window narrowed later (a phone turned, a resize) wraps it onto more lines.
   field-sizing lets the box follow its text at every width, so it never clips. */
#best-caption textarea { field-sizing: content; height: auto !important; min-height: 2lh;
                         overflow-y: hidden !important; }
#message:not(:empty) .prose, #message .st-message { color: var(--error-text-color); }
.st-message { border: 1px solid var(--error-border-color); background: var(--error-background-fill);
              border-radius: 8px; padding: 0.6em 0.8em; font-weight: 600; }
.st-confidence { display: inline-block; border-radius: 999px; padding: 0.15em 0.7em; font-weight: 600; }
.st-confidence.sure { background: #d9f2e3; color: #14532d; }
.st-confidence.unsure { background: #fde8c8; color: #7c2d12; }
.st-nbest { width: 100%; border-collapse: collapse; table-layout: auto; }
.st-nbest th, .st-nbest td { padding: 0.35em 0.5em; border-bottom: 1px solid var(--border-color-primary);
                             text-align: left; vertical-align: top; }
.st-nbest th.rank, .st-nbest td.rank, .st-nbest th.score, .st-nbest td.score { white-space: nowrap; width: 1%; }
.st-nbest td.score, .st-nbest th.score { text-align: right; font-variant-numeric: tabular-nums; }
.st-nbest td.caption { overflow-wrap: anywhere; }
#timing { font-size: 0.8rem; opacity: 0.75; }
#message:not(:has(.st-message)), #confidence:not(:has(.st-confidence)), #nbest:not(:has(table)) { display: none; }
"""

NO_IMAGE = "Please upload a photo first (or click an example)."


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


def parse_size(size: str | int | None) -> int | None:
    """``"10mb"``, ``"500kb"`` or a number of bytes as bytes (None: no limit)."""
    if size is None or isinstance(size, int):
        return size
    text = str(size).strip().lower().replace(" ", "")
    units = {"gb": 1024 ** 3, "mb": 1024 ** 2, "kb": 1024, "b": 1}
    for unit, factor in units.items():
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * factor
    if text.isdigit():
        return int(text)
    raise ValueError(f"a file size such as 10mb, 500kb or 1048576, got {size!r}")


def _option(value: Any, name: str, lo: int, hi: int) -> int:
    """A slider value from the page or any API client, as an int in [lo, hi]."""
    problem = f"{name} must be a whole number between {lo} and {hi}, got {value!r}."
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise gr.Error(problem, print_exception=False)
    try:
        f = float(value)
    except (ValueError, OverflowError):  # "abc"; 10**400, which no float holds
        raise gr.Error(problem, print_exception=False) from None
    if not math.isfinite(f) or f != round(f) or not lo <= f <= hi:
        raise gr.Error(problem, print_exception=False)
    return int(round(f))


def _display_name(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.path.basename(os.fspath(image)) or "the uploaded file"
    return "the image"


def caption_image(captioner: Captioner, image: Any, beam_size: Any = DEFAULT_BEAM,
                  num_captions: Any = DEFAULT_CAPTIONS) -> dict[str, Any]:
    """Caption one image for the page and the API.

    ``image`` is a file path (what the page and ``gradio_client`` send), raw
    bytes (a ``data:`` URL), a ``PIL.Image`` or a numpy array. Returns::

        {"caption": best caption,
         "captions": [{"rank", "caption", "score", "logprob", "sure"}, ...],  # best first
         "confidence": {"signal", "value", "threshold", "sure", "label"},
         "tags": [{"words", "prob", "classes"}, ...],  # what the encoder's ImageNet head sees
         "required": [[words], ...],  # the tags the caption had to name (guided captioning), or []
         "set_aside": bool,  # a tag was confident, but the caption it forced was set aside for the unguided one
         "seconds": time spent on this request}

    ``score`` is what the captions were ranked by: the log-probability per
    word (length penalty 1, as ``caption()``), the number ``showtell caption
    --n-best`` prints; ``sure`` is that caption's confidence (the best one's is
    ``confidence``). ``num_captions`` larger than ``beam_size`` is refused, as
    in ``caption()`` and the command line (a beam of k keeps k captions).

    Raises ``gr.Error`` with a clear message for a missing or unreadable image
    or an out-of-range option.
    """
    out, _ = _described(captioner, image, beam_size, num_captions)
    return out


def _described(captioner: Captioner, image: Any, beam_size: Any, num_captions: Any,
               attention: bool = False) -> tuple[dict[str, Any], Description]:
    """:func:`caption_image`'s dict and the :class:`Description` it was made
    from: one encoder pass and one search, with the attention behind the best
    caption's words when ``attention`` (and the model has it)."""
    t0 = time.perf_counter()
    if image is None:
        raise gr.Error(NO_IMAGE, print_exception=False)
    beam = _option(beam_size, "Beam size", 1, MAX_BEAM)
    n = _option(num_captions, "Number of captions", 1, MAX_CAPTIONS)
    if n > beam:
        raise gr.Error(n_best_problem(n, beam), print_exception=False)
    try:
        found = captioner.describe(image, attention=attention and captioner.model.decoder.has_attention,
                                   beam_size=beam, n_best=n)
    except ImageError as e:
        raise gr.Error(_image_problem(image, e), print_exception=False) from None
    caps = [c for c in found.captions if math.isfinite(c.logprob)]
    if not caps:
        raise gr.Error("The model produced no caption for this image.", print_exception=False)
    rows = [{"rank": rank, "caption": c.text, "score": round(c.score, 4), "logprob": round(c.logprob, 4),
             "sure": c.confidence.sure} for rank, c in enumerate(caps, start=1)]
    out = {"caption": caps[0].text, "captions": rows, "confidence": caps[0].confidence.as_dict(),
           "tags": [{"words": list(t.words), "prob": round(t.prob, 4), "classes": list(t.classes)}
                    for t in caps[0].tags],
           "required": [list(words) for words in caps[0].required],
           "set_aside": caps[0].set_aside,
           "seconds": round(time.perf_counter() - t0, 3)}
    return out, found


def n_best_problem(n: int, beam: int) -> str:
    """The one rule for more captions than beams, on the page, the API and
    the command line: refused, saying what to change."""
    return (f"Number of captions ({n}) is more than the beam size ({beam}): a beam of {beam} keeps at most "
            f"{beam} captions. Raise the beam size or lower the number of captions.")


def _image_problem(image: Any, error: Exception) -> str:
    name, msg = _display_name(image), str(error)
    if isinstance(image, (str, os.PathLike)):
        # Name the file as the user knows it, not by its server-side temp path.
        msg = msg.replace(os.fspath(image), name)
    elif msg.startswith("image bytes: "):  # load_image's name for bytes: the user sent "the image"
        msg = msg[len("image bytes: "):]
    if not msg.startswith(name + ":"):
        msg = f"{name}: {msg}"
    # The advice that fits the problem (a panorama: crop it; a bomb: fewer pixels).
    return f"Could not caption {msg.rstrip('.')}. {getattr(error, 'advice', '') or ACCEPTED}"


def attention_gallery(captioner: Captioner, image: Any, beam_size: int) -> list[tuple[Any, str]]:
    """(overlay, "N. word") for each word of the best caption: where the model
    looked while choosing it. Empty for a model without attention."""
    if not captioner.model.decoder.has_attention:
        return []
    return _overlays(captioner, image, captioner.explain(image, beam_size=beam_size))


def _overlays(captioner: Captioner, image: Any, explanation: Explanation) -> list[tuple[Any, str]]:
    # The photo is decoded again at the display size: the model's input was decoded
    # small (JPEG draft mode), the overlays are shown at up to OVERLAY_SIZE px.
    photo = fit_within(load_image(image, max_bytes=captioner.max_image_bytes,
                                  target_size=(OVERLAY_SIZE, OVERLAY_SIZE)), OVERLAY_SIZE)
    return [(attention_overlay(photo, a), f"{i}. {w}")
            for i, (w, a) in enumerate(zip(explanation.words, explanation.attention), start=1)]


def page_outputs(captioner: Captioner, image: Any, beam_size: Any, num_captions: Any) -> dict[str, Any]:
    """What the page shows for a photo, keyed by the names of
    :data:`PAGE_OUTPUTS`: the API's answer as HTML plus the attention overlays,
    from one caption of the photo. A problem is shown once, as ``message``, in
    place of the caption (no toast, no red badges on every output)."""
    try:
        out, found = _described(captioner, image, beam_size, num_captions, attention=True)
        t = time.perf_counter()
        gallery = _overlays(captioner, image, found.explanation) if found.explanation is not None else []
        seconds = out["seconds"] + time.perf_counter() - t
    except gr.Error as e:
        return {**PAGE_OUTPUTS, "message": f'<div class="st-message">{html.escape(e.message)}</div>'}
    timing = (f"{seconds:.2f} s on the server (caption and attention {out['seconds']:.2f} s, beam "
              f"{int(beam_size)}; drawing the maps {seconds - out['seconds']:.2f} s)")
    return {**PAGE_OUTPUTS, "best": out["caption"], "confidence": _confidence_html(out["confidence"]),
            "nbest": _nbest_html(out["captions"]), "attention": gallery, "timing": timing,
            "tags": _tags_markdown(out["tags"], out["required"], out["caption"], out["set_aside"])}


# How the model card names each stored score, and its unit. Every metric is x100,
# as `showtell evaluate` prints it.
SCORE_LABELS = {"bleu1": ("BLEU-1", ""), "bleu2": ("BLEU-2", ""), "bleu3": ("BLEU-3", ""), "bleu4": ("BLEU-4", ""),
                "cider": ("CIDEr-D", ""), "meteor": ("METEOR", ""), "rouge_l": ("ROUGE-L", ""),
                "distinct_captions": ("distinct captions", " %"), "mean_length": ("mean caption length", " words")}
# The photos in each split of Flickr8k's official files and coco-2733's fixed split (other datasets vary).
SPLIT_PHOTOS = {"flickr8k": {"train": 6000, "val": 1000, "test": 1000},
                "coco-2733": {"train": 2233, "val": 250, "test": 250}}
DATASET_NAMES = {"flickr8k": "Flickr8k"}  # how the card writes a dataset's name
_DECODING_KEYS = ("beam_size", "guidance_threshold", "guidance_fallback", "length_penalty", "images", "notes")


def _scores_text(scores: dict) -> str:
    """Stored scores with their names and units, e.g. "BLEU-4 21.7, CIDEr-D 52.9,
    distinct captions 82.0 %"; an unknown key is spelled out, never shown raw."""
    parts = []
    for key, value in scores.items():
        if key in _DECODING_KEYS or "/" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # "name/metric": one dataset's share of a mean over several
        label, unit = SCORE_LABELS.get(key, (key.replace("_", " "), ""))
        parts.append(f"{label} {value:.1f}{unit}")
    return ", ".join(parts)


def _decoding_text(scores: dict) -> str:
    """How the stored test scores were decoded ("1,000 photos, beam 3, guided at 0.8, length penalty 1")."""
    parts = [f"{scores['images']:,} photos"] if isinstance(scores.get("images"), int) else []
    if "beam_size" in scores:
        parts.append("greedy" if scores["beam_size"] == 1 else f"beam {scores['beam_size']}")
    if "guidance_threshold" in scores:
        g = scores["guidance_threshold"]
        fallback = scores.get("guidance_fallback")
        parts.append("unguided" if g is None else f"guided at {g:g}" +
                     (f" (set aside {fallback:g} a word below unguided)" if fallback is not None else ""))
    if "length_penalty" in scores:
        parts.append(f"length penalty {scores['length_penalty']:g}")
    if "decoder_precision" in scores:
        parts.append(f"{scores['decoder_precision']} decoder")
    return ", ".join(parts)


def _data_text(d: dict) -> str:
    """The data a model was trained on, as far as its data config says: the
    dataset(s), the training split, how many photos it holds and any --max-images."""
    if d.get("datasets"):
        return _datasets_text(d)
    dataset = d.get("dataset", "?")
    data = {"flickr8k": "Flickr8k", "coco": "MS-COCO", "karpathy": "Karpathy split"}.get(dataset, dataset)
    source = d.get("annotations") or d.get("data_root") or ""
    if dataset != "flickr8k" and source:
        data += f" ({os.path.basename(source.rstrip('/'))})"
    split = d.get("train_split", "train")
    total = SPLIT_PHOTOS.get(dataset, {}).get(split)
    cap = d.get("max_images") or 0
    if cap and total:
        return f"{data}, {split} split: the first {min(cap, total):,} of its {total:,} photos (--max-images {cap})"
    if cap:
        return f"{data}, {split} split: at most its first {cap:,} photos (--max-images {cap})"
    return f"{data}, {split} split" + (f" ({total:,} photos)" if total else "")


def _datasets_text(d: dict) -> str:
    """Several datasets trained together (train.py --data, each NAME=PATH@WEIGHT)."""
    from .config import parse_dataset_spec

    split, cap = d.get("train_split", "train"), d.get("max_images") or 0
    parts = []
    for spec in d["datasets"]:
        source = parse_dataset_spec(spec)
        known = SPLIT_PHOTOS.get(source.name) or SPLIT_PHOTOS.get(os.path.basename(source.path.rstrip("/")), {})
        total = known.get(split)
        details = [f"{split} split"]
        if total:
            details.append(f"the first {min(cap, total):,} of its {total:,} photos" if cap else f"{total:,} photos")
        if source.weight != 1:
            details.append(f"weight {source.weight:g}: each caption seen {source.weight:g} times an epoch")
        parts.append(f"{DATASET_NAMES.get(source.name, source.name)} ({', '.join(details)})")
    text = " and ".join(parts) + ", one vocabulary over all"
    return text + (f" (--max-images {cap})" if cap else "")


def model_card(captioner: Captioner) -> str:
    """Markdown about the served model, from what its checkpoint stores."""
    card = captioner.card
    m, d = card.get("model_config", {}), card.get("data_config", {})
    decoder = {"show_attend_tell": "Show, Attend and Tell (LSTM with soft attention over the encoder's grid)",
               "show_tell": "Show and Tell / NIC (LSTM, the image as its first input)"}.get(
        m.get("decoder"), m.get("decoder", "?"))
    encoder = f"{m.get('encoder', '?')} ({'fine-tuned' if m.get('fine_tune_encoder') else 'frozen'}"
    if card.get("encoder_weights"):
        encoder += f", weights {card['encoder_weights']}"
    encoder += ")"
    lines = [f"- **Trained on:** {_data_text(d)}",
             f"- **Encoder:** {encoder}",
             f"- **Decoder:** {decoder}; hidden size {m.get('hidden_dim', '?')}",
             f"- **Vocabulary:** {card.get('vocab_size', 0):,} words"]
    val_split = d.get("val_split", "val")
    mean = f", the mean of {len(d['datasets'])} datasets' val splits" if len(d.get("datasets") or ()) > 1 else ""
    if d.get("datasets"):  # the first dataset's test scores are the model's own
        from .config import parse_dataset_spec

        first = parse_dataset_spec(d["datasets"][0]).name
        own = f" on {DATASET_NAMES.get(first, first)}"
    else:
        own = ""
    for key, what in (("val_scores", f"Validation scores ({val_split} split, greedy, while training{mean}; x100)"),
                      ("test_scores", f"Test scores{own} (`showtell evaluate --store`; x100)")):
        scores = card.get(key)
        shown = _scores_text(scores) if scores else ""
        if shown:
            how = _decoding_text(scores)
            lines.append(f"- **{what}:** {shown}" + (f" ({how})" if how else ""))
        else:
            lines.append(f"- **{what.split(' (')[0]}:** none stored in the checkpoint")
    for dataset, splits in (card.get("dataset_scores") or {}).items():
        for split, scores in splits.items():
            if scores != card.get(f"{split}_scores") and _scores_text(scores):
                how = _decoding_text(scores)
                lines.append(f"- **{split.capitalize()} scores on {dataset}:** {_scores_text(scores)}"
                             + (f" ({how})" if how else ""))
    lines.append(f"- **Confidence:** \"not sure\" below a log-probability per word of "
                 f"{captioner.confidence_threshold:g}")
    lines.append(f"- **File:** `{os.path.basename(captioner.checkpoint)}`")
    return "\n".join(lines)


def _confidence_html(conf: dict) -> str:
    if conf["sure"]:
        return (f'<span class="st-confidence sure">fairly sure</span> '
                f'<small>log-probability per word {conf["value"]:.2f} '
                f'(not sure below {conf["threshold"]:.2f})</small>')
    return (f'<span class="st-confidence unsure">not sure</span> '
            f'<small>log-probability per word {conf["value"]:.2f}, below {conf["threshold"]:.2f}: '
            f'the photo may be unlike what the model was trained on</small>')


def _nbest_html(rows: list[dict]) -> str:
    body = "".join(f'<tr><td class="rank">{r["rank"]}</td><td class="caption">{html.escape(r["caption"])}</td>'
                   f'<td class="score">{r["score"]:.3f}</td></tr>' for r in rows)
    return ('<table class="st-nbest"><thead><tr><th class="rank">#</th><th>caption</th>'
            f'<th class="score" title="what the captions are ranked by; higher is better">{SCORE_HEADER}</th>'
            f'</tr></thead><tbody>{body}</tbody></table>')


def _tags_markdown(tags: Sequence[dict], required: Sequence[Sequence[str]], caption: str = "",
                   set_aside: bool = False) -> str:
    """What the encoder recognised, and which of it the caption had to name. A
    tag whose words the caption does not use is marked so: the page never shows
    "dog 77 %" over a caption about two people without saying the two disagree."""
    if not tags:
        return ""
    words = set(caption.split())
    missing = lambda t: caption and not words & set(t["words"])
    seen = ", ".join(f"{'/'.join(t['words'][:2])} {100 * t['prob']:.0f}%"
                     + (" (not in the caption)" if missing(t) else "") for t in tags)
    if required:
        named = all(words & set(w) for w in required) or not caption
        return f"**The encoder sees:** {seen}. The caption had to name " + \
            " and ".join("/".join(w[:2]) for w in required) + \
            ("." if named else ", but no caption of this model could: it is the best unguided one.")
    if set_aside:
        return (f"**The encoder sees:** {seen}. A caption made to name {'/'.join(tags[0]['words'][:2])} "
                "was far less likely than this one, so this one is shown.")
    return f"**The encoder sees:** {seen} (not sure enough to guide the caption)."


def _data_url_bytes(url: str, limit: int | None) -> bytes:
    """The original bytes of a base64 ``data:`` URL, refused over ``limit``
    before decoding (the size is known from the text's length)."""
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header:
        raise gr.Error(f"A data: URL must be base64 encoded (data:image/jpeg;base64,...). {ACCEPTED}",
                       print_exception=False)
    if limit is not None and len(data) * 3 // 4 > limit:
        raise gr.Error(f"The image is larger than the upload limit of {limit / 2**20:.0f} MB.",
                       print_exception=False)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error(f"The data: URL is not valid base64. {ACCEPTED}", print_exception=False) from None


def _image_input(limit: Callable[[], int | None], **kwargs) -> gr.Image:
    """A ``gr.Image`` that hands our function the uploaded file's path (or a
    ``data:`` URL's bytes) without decoding it: Gradio's own preprocessing
    opens every upload with Pillow, so a non-image would fail there with a
    generic error, and re-encodes a data: URL (another caption than the same
    file uploaded). :func:`load_image` decodes it instead and names the problem.

    The instance's ``preprocess`` is replaced rather than subclassing
    ``gr.Image`` (Gradio writes a ``.pyi`` stub next to modules that define
    component subclasses)."""
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        url = payload.url or ""
        if url.startswith("data:"):
            return _data_url_bytes(url, limit())
        if not payload.path:
            raise gr.Error(f"The request carries no image file. {ACCEPTED}", print_exception=False)
        return payload.path

    component.preprocess = preprocess
    component.data_model = _CheckedModel(component.data_model)
    return component


class _CheckedModel:
    """A component's pydantic data model whose validation error is one clear
    ``gr.Error`` (Gradio reports a payload that is not a file, such as a bare
    string, as an error with no message)."""

    def __init__(self, model):
        self._model = model

    def model_validate(self, obj, **kwargs):
        try:
            return self._model.model_validate(obj, **kwargs)
        except pydantic.ValidationError:
            raise gr.Error("The image must be sent as a file (gradio_client: handle_file(path)) or as a "
                           f"base64 data: URL, got {type(obj).__name__}. {ACCEPTED}", print_exception=False) from None

    def __getattr__(self, name):
        return getattr(self._model, name)


def _slider(name: str, lo: int, hi: int, **kwargs) -> gr.Slider:
    """A ``gr.Slider`` whose API input is checked by us: Gradio's own check
    fails on "abc", None or [3] with a generic error."""
    component = gr.Slider(lo, hi, step=1, **kwargs)
    component.preprocess = lambda payload: _option(payload, name, lo, hi)
    return component


def example_photos() -> list[str]:
    """The bundled example photos, sorted by name."""
    return [str(p) for p in sorted(EXAMPLES_DIR.glob("*.jpg"))]


# The page's outputs by name, with what each shows
# when there is nothing to show: a handler returns a dict keyed by these names,
# and the browser clears them to these values as soon as the photo changes, so
# a new photo never sits beside the previous one's caption (no server round trip).
PAGE_OUTPUTS: dict[str, Any] = {"best": "", "confidence": "", "nbest": "", "attention": [], "timing": "",
                                "tags": "", "message": ""}


def _clear_js(names: Sequence[str]) -> str:
    """A browser function that returns the empty value of each named output, in ``names``' order."""
    return f"() => {json.dumps([PAGE_OUTPUTS[name] for name in names])}"


def build_demo(captioner: Captioner, concurrency: int = DEFAULT_CONCURRENCY) -> gr.Blocks:
    """The page, around one loaded ``captioner``. ``concurrency`` is how many
    caption requests run at once (the page, examples and API share it)."""
    limit: dict[str, int | None] = {"bytes": parse_size(DEFAULT_MAX_FILE_SIZE)}

    def api_caption(image, beam_size=DEFAULT_BEAM, num_captions=DEFAULT_CAPTIONS):
        """Caption a photo. Returns the best caption, the n-best table (#,
        caption, log-probability per word: what the captions are ranked by) and the details: confidence
        ("sure" false means not sure), what the encoder's ImageNet head sees
        (tags) and which of it the caption had to name (required), seconds, and
        every caption's log-probability."""
        out = caption_image(captioner, image, beam_size, num_captions)
        table = [[r["rank"], r["caption"], r["score"]] for r in out["captions"]]
        return out["caption"], {"headers": TABLE_HEADERS, "data": table}, out

    def page_caption(image, beam_size, num_captions):
        """The page's handler: the same as the API, plus the attention overlays."""
        return {shown[name]: value for name, value in page_outputs(captioner, image, beam_size, num_captions).items()}

    encoder = captioner.card.get("model_config", {}).get("encoder", "?")
    intro = ("# Show and Tell\nUpload a photo (or paste one, or use the webcam): it is captioned at once. "
             f"A CNN ({encoder}) reads the photo and an LSTM writes the caption with beam search; "
             "*About this model* says what it was trained on.")
    with gr.Blocks(title="Show and Tell: image captions") as demo:
        gr.Markdown(intro)
        with gr.Row():
            with gr.Column():
                image = _image_input(lambda: limit["bytes"], label="Photo", elem_id="photo",
                                     sources=["upload", "clipboard", "webcam"], height=340)
                with gr.Row():
                    beam = _slider("Beam size", 1, MAX_BEAM, value=DEFAULT_BEAM, label="Beam size",
                                   info="More beams search more captions (slower).", elem_id="beam-size")
                    nbest = _slider("Number of captions", 1, MAX_CAPTIONS, value=DEFAULT_CAPTIONS,
                                    label="Number of captions",
                                    info="At most the beam size.",
                                    elem_id="num-captions")
                button = gr.Button("Caption", variant="primary", elem_id="caption-btn")
                with gr.Accordion("About this model", open=False, elem_id="model-card"):
                    gr.Markdown(model_card(captioner))
            with gr.Column():
                # Named by PAGE_OUTPUTS; page_outputs() fills them by name.
                shown = {
                    "message": gr.HTML("", elem_id="message", container=False, padding=False, min_height=0),
                    "best": gr.Textbox(label="Best caption", elem_id="best-caption", interactive=False, lines=2,
                                       buttons=["copy"]),
                    "confidence": gr.HTML("", elem_id="confidence", container=False, padding=False, min_height=0),
                    "tags": gr.Markdown("", elem_id="tags"),
                    "nbest": gr.HTML("", elem_id="nbest", container=False, padding=False, min_height=0),
                    "attention": gr.Gallery(label="Where the model looked for each word (click one to enlarge)",
                                            elem_id="attention", columns=5, height=420, allow_preview=True,
                                            object_fit="contain", format="jpeg", interactive=False,
                                            visible=captioner.model.decoder.has_attention),  # NIC has none to show
                    "timing": gr.Markdown("", elem_id="timing"),
                }
        outputs = list(shown.values())
        image.change(None, js=_clear_js(list(shown)), outputs=outputs, queue=False, api_visibility="private")
        run = dict(fn=page_caption, inputs=[image, beam, nbest], outputs=outputs, api_visibility="private",
                   concurrency_limit=concurrency, concurrency_id="caption")
        image.upload(**run)
        button.click(**run)
        photos = example_photos()
        if photos:
            examples = gr.Examples(examples=[[p] for p in photos], inputs=[image], label="Examples (click one)",
                                   elem_id="examples", cache_examples=False, run_on_click=False,
                                   api_visibility="private")
            # One click fills the image and captions it with the current slider values.
            examples.load_input_event.then(**run)
        # The API: the same handler without the overlays, on hidden outputs.
        with gr.Group(visible=False):
            api_best = gr.Textbox(label="caption")
            api_table = gr.Dataframe(headers=TABLE_HEADERS, label="n-best")
            api_details = gr.JSON(label="details")
            api_button = gr.Button("api", elem_id="api-caption")
        api_button.click(api_caption, inputs=[image, beam, nbest], outputs=[api_best, api_table, api_details],
                         api_name="caption", concurrency_limit=concurrency, concurrency_id="caption")
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX_SIZE)
    demo._showtell_limit = limit  # launch() sets the upload limit the data: URL check uses
    return demo


# --- request limits ------------------------------------------------------------------


def _api_names(request) -> str:
    blocks = getattr(request.app, "get_blocks", lambda: None)()
    names = sorted({f"/{fn.api_name}" for fn in getattr(blocks, "fns", {}).values()
                    if fn.api_name and getattr(fn, "api_visibility", "public") == "public"}) if blocks else []
    return ", ".join(names) or "none"


async def _unknown_endpoint(request, exc):
    """An API name that no event has: 404 naming the endpoints there are."""
    name = request.path_params.get("api_name") or str(exc).rsplit(":", 1)[-1].strip()
    return JSONResponse({"detail": f"No API endpoint /{name}; this app has {_api_names(request)}."}, status_code=404)


async def _unknown_function_index(request, exc):
    """A queue request for an fn_index that does not exist (Gradio raises
    KeyError for it); any other KeyError stays a server error."""
    if request.url.path.endswith("/queue/join") and exc.args and isinstance(exc.args[0], int):
        return JSONResponse({"detail": f"No function with fn_index {exc.args[0]}; "
                             f"call an endpoint by name: {_api_names(request)}."}, status_code=404)
    traceback.print_exception(exc)  # a bug: keep its traceback in the log, as without this handler
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_CALL_RESULT = re.compile(r"^/gradio_api/call/[^/]+/([^/]+)/?$")


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The ``Host`` header values served (None: any). A server on the loopback
    answers only to loopback names, so a forged ``Host`` is never reflected in
    the URLs Gradio writes into /config; on the network, SHOWTELL_ALLOWED_HOSTS
    (comma-separated) lists the names to answer to, else any is accepted."""
    names = os.environ.get("SHOWTELL_ALLOWED_HOSTS", "")
    if names.strip():
        return frozenset(n.strip().lower() for n in names.split(",") if n.strip())
    return frozenset(_LOOPBACK) if host in _LOOPBACK else None


BOTH_LENGTHS = ("A request must not carry both Content-Length and Transfer-Encoding (a request smuggling "
                "vector: a proxy and this server could read different bodies); send one of them")


class _RequestChecks:
    """ASGI middleware answering, before Gradio sees them: a request with both
    ``Content-Length`` and ``Transfer-Encoding`` (400, and the connection is
    closed: h11 would read the chunked body and ignore the length, a proxy in
    front might do the opposite), a ``Host`` header that is not allowed (400)
    and a result stream for an event id the queue does not know (404: the
    response was cut off mid-stream)."""

    def __init__(self, app, hosts: frozenset[str] | None = None):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope.get("headers") or ()}
            if b"content-length" in names and b"transfer-encoding" in names:
                # Unread body bytes must never be taken for a next request: close.
                await JSONResponse({"detail": BOTH_LENGTHS}, status_code=400,
                                   headers={"connection": "close"})(scope, receive, send)
                return
            problem = self._problem(scope)
            if problem is not None:
                status, detail = problem
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope) -> tuple[int, str] | None:
        if self.hosts is not None:
            host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.hosts:
                return 400, "This server does not answer to that Host header (SHOWTELL_ALLOWED_HOSTS lists the names)"
        match = _CALL_RESULT.match(scope.get("path", ""))
        if match and scope.get("method") == "GET":
            event_id = match.group(1)
            queue = scope["app"].get_blocks()._queue
            known = event_id in queue.event_ids_to_events or any(
                event_id in ids for ids in queue.pending_event_ids_session.values())
            if not known:
                return 404, (f"No event {event_id[:100]!r}: POST /gradio_api/call/<endpoint> first, then GET the "
                             "event_id it returns")
        return None


class _HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head. The timer
    runs while the server waits for a request (h11's states: both IDLE), from
    the connection or the end of the previous response, and stops when the
    head is complete; at the deadline a connection that sent nothing of its
    head is closed, one that sent part of it gets 408 Request Timeout first."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        blocks = getattr(config.app, "get_blocks", lambda: None)()
        self.header_timeout = getattr(blocks, "_showtell_header_timeout", HEADER_TIMEOUT)
        self._head_timer: Any = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._time_the_head()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._time_the_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._time_the_head()

    def _waiting_for_head(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    def _time_the_head(self) -> None:
        if self.transport.is_closing() or not self._waiting_for_head():
            self._stop_head_timer()
        elif self._head_timer is None:  # the deadline counts from when the wait began
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        if self.conn.trailing_data[0]:  # part of a head came (h11 buffers it until the head is whole)
            body = (f"The request's line and headers did not arrive within {self.header_timeout:g} seconds.\n"
                    ).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


_PROTOCOL_LOCK = threading.Lock()


def _launch_with_header_timeout(demo: gr.Blocks, **kwargs):
    """``demo.launch(**kwargs)`` serving HTTP with :class:`_HeaderTimeoutProtocol`.
    Gradio builds uvicorn's Config itself and offers no way to pick its HTTP
    protocol, and uvicorn loads the protocol named "auto" when the server
    starts, which ``launch(prevent_thread_lock=True)`` waits for: so "auto"
    names ours for the time of that call only."""
    block = not kwargs.pop("prevent_thread_lock", False)
    with _PROTOCOL_LOCK:
        saved = uvicorn.config.HTTP_PROTOCOLS["auto"]
        uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{_HeaderTimeoutProtocol.__name__}"
        try:
            result = demo.launch(prevent_thread_lock=True, **kwargs)
        finally:
            uvicorn.config.HTTP_PROTOCOLS["auto"] = saved
    if block and not bool(getattr(sys, "ps1", sys.flags.interactive)):  # as Gradio's launch would
        demo.block_thread()
    return result


def body_limit(max_file_size: int) -> int:
    """The largest request body served: an image at the upload limit as a
    base64 data: URL (4/3 of its size) plus room for the JSON or multipart
    around it."""
    return max_file_size * 4 // 3 + 256 * 1024


class _CappedLines:
    """A text stream that cuts each line at ``limit`` characters, so a huge
    request echoed in a traceback cannot write a 50 MB line to the log."""

    def __init__(self, stream, limit: int = LOG_LINE_CHARS):
        self._stream, self._limit, self._column = stream, limit, 0

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            room = self._limit - self._column
            if room > 0:
                out.append(piece[:room])
            if piece.endswith(("\n", "\r")):
                if len(piece) > room > 0 or (room <= 0 and self._column > 0):
                    out.append(f" [... line cut at {self._limit} characters]\n")
                self._column = 0
            else:
                self._column += len(piece)
        self._stream.write("".join(out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def cap_log_lines(limit: int = LOG_LINE_CHARS) -> None:
    """Cut every line this process writes to stdout and stderr at ``limit``
    characters (Gradio prints tracebacks with the request's data)."""
    if not isinstance(sys.stdout, _CappedLines):
        sys.stdout = _CappedLines(sys.stdout, limit)
    if not isinstance(sys.stderr, _CappedLines):
        sys.stderr = _CappedLines(sys.stderr, limit)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860,
           max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE, header_timeout: float | None = None, **kwargs):
    """Start the server (blocking unless ``prevent_thread_lock=True``), with
    uploads and data: URLs limited to ``max_file_size`` and every request body
    to :func:`body_limit` of it; uploads and overlays deleted DELETE_AFTER
    seconds after they were written and at shutdown; a request's head given
    ``header_timeout`` seconds (default SHOWTELL_HEADER_TIMEOUT or
    HEADER_TIMEOUT) to arrive; requests checked by :class:`_RequestChecks`."""
    if header_timeout is None:
        header_timeout = float(os.environ.get("SHOWTELL_HEADER_TIMEOUT") or HEADER_TIMEOUT)
    if not (math.isfinite(header_timeout) and header_timeout > 0):
        raise ValueError(f"header_timeout must be a positive number of seconds, got {header_timeout!r}")
    demo._showtell_header_timeout = header_timeout  # read by _HeaderTimeoutProtocol
    size = parse_size(max_file_size)
    if hasattr(demo, "_showtell_limit"):
        demo._showtell_limit["bytes"] = size
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    if size is not None:
        # FastAPI's own limit: 413 from Content-Length before reading, and while
        # counting a body streamed without one.
        app_kwargs.setdefault("max_body_size", body_limit(size))
    handlers = dict(app_kwargs.get("exception_handlers") or {})
    handlers.setdefault(FnIndexInferError, _unknown_endpoint)
    handlers.setdefault(KeyError, _unknown_function_index)
    app_kwargs["exception_handlers"] = handlers
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", ()),
                                Middleware(_RequestChecks, hosts=allowed_hosts(host))]
    if demo.delete_cache is None:
        age = int(os.environ.get("SHOWTELL_DELETE_AFTER") or DELETE_AFTER)
        # Gradio deletes every file at shutdown; its own schedule is not used
        # (see delete_old_files), ours runs instead.
        demo.delete_cache = (10**9, age)
        every = min(DELETE_EVERY, max(1, age // 2))
        threading.Thread(target=_delete_on_schedule, args=(demo, every, age), daemon=True,
                         name="showtell-delete-old-files").start()
    return _launch_with_header_timeout(demo, server_name=host, server_port=port, max_file_size=size, css=CSS,
                                       app_kwargs=app_kwargs, **kwargs)


def delete_old_files(demo: gr.Blocks, age: float) -> int:
    """Delete the files this app wrote (uploads, overlays) more than ``age``
    seconds ago, keeping the examples; returns how many. Gradio's own schedule
    iterates its sets of files while requests add to them, and under load its
    task died of "Set changed size during iteration" at the first clash, after
    which nothing was deleted (1,599 uploads after three rounds of 16 clients)."""
    keep = set()
    for block in demo.blocks.values():
        keep.update(getattr(block, "keep_in_cache", ()))
    now, deleted = time.time(), 0
    for files in list(demo.temp_file_sets):
        for path in list(files):  # a copy, made without releasing the GIL: requests add meanwhile
            if path in keep:
                continue
            try:
                if now - os.lstat(path).st_ctime > age:
                    os.remove(path)
                    deleted += 1
                    files.discard(path)
            except FileNotFoundError:
                files.discard(path)
            except OSError:
                pass  # tried again next time
    return deleted


def _delete_on_schedule(demo: gr.Blocks, every: float, age: float) -> None:
    while True:
        time.sleep(every)
        try:
            delete_old_files(demo, age)
        except Exception:  # never let one failure end the schedule
            traceback.print_exc()


def warm_up(captioner: Captioner) -> None:
    """Caption one example (and draw its attention) so the first real request
    does not pay for one-time setup inside torch (allocators, kernels)."""
    photos = example_photos()
    photo = photos[0] if photos else _blank()
    page_outputs(captioner, photo, DEFAULT_BEAM, DEFAULT_CAPTIONS)


def _blank():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (127, 127, 127)).save(buf, "PNG")
    return buf.getvalue()


__all__ = ["build_demo", "caption_image", "page_outputs", "PAGE_OUTPUTS", "attention_gallery", "model_card",
           "launch", "warm_up", "free_port", "threads_per_request", "parse_size", "body_limit", "cap_log_lines"]

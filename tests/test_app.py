"""The web UI (showtell/webapp.py, app.py): the caption handler as a plain
function, then the real server on a free loopback port called through
gradio_client, with good and bad uploads."""
import dataclasses
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import base64  # noqa: E402
import concurrent.futures  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from showtell.captioner import Captioner, get_captioner  # noqa: E402
from showtell.checkpoint import save_checkpoint  # noqa: E402
from showtell.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from showtell.images import ImageError, load_image  # noqa: E402
from showtell.model import CaptionModel  # noqa: E402
from showtell.text import SPECIAL_TOKENS, Vocabulary  # noqa: E402
from showtell.webapp import (  # noqa: E402
    PAGE_OUTPUTS, TABLE_HEADERS, _CappedLines, _clear_js, attention_gallery, body_limit, build_demo, caption_image,
    free_port, launch, model_card, page_outputs, threads_per_request)

ROOT = Path(__file__).resolve().parent.parent
# Gradio's queue calls pandas in ways pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
EXAMPLES = ROOT / "examples"
PHOTO = EXAMPLES / "cat.jpg"
MAX_FILE_SIZE = 2 * 1024 * 1024  # small, so the too-large test file stays small


# --- bad files ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {}
    files["not_image"] = d / "notes.jpg"
    files["not_image"].write_text("this is a shopping list, not a photo\n" * 20)
    files["text"] = d / "readme.txt"
    files["text"].write_text("plain text")
    files["truncated"] = d / "truncated.jpg"
    data = PHOTO.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"] = d / "empty.png"
    files["empty"].write_bytes(b"")
    files["bomb"] = d / "huge.png"
    files["bomb"].write_bytes(_png_claiming_size(20_000, 20_000))
    files["too_big"] = d / "big.jpg"
    files["too_big"].write_bytes(data + os.urandom(MAX_FILE_SIZE + 1024 - len(data)))
    return files


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


# --- the handler as a plain function ----------------------------------------

@pytest.fixture(scope="module")
def captioner():
    # As app.py does: torch threads per request = cores // concurrency (a
    # second thread per request only slows things down when the cores are busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_request())
    yield get_captioner()  # the bundled model, loaded once for the whole session
    torch.set_num_threads(threads)


def _check_rows(best, rows, n):
    """rows: the API table's [#, caption, log-prob per word] rows."""
    assert isinstance(best, str) and best.strip()
    assert len(rows) == n
    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert rows[0][1] == best
    assert all(isinstance(r[1], str) and r[1].strip() for r in rows)
    scores = [r[2] for r in rows]  # what the captions are ranked by: best first
    assert scores == sorted(scores, reverse=True) and all(x < 0 for x in scores)


def _table(out):
    return [[r["rank"], r["caption"], r["score"]] for r in out["captions"]]


def test_handler_returns_best_caption_and_sorted_n_best(captioner):
    out = caption_image(captioner, str(PHOTO))
    _check_rows(out["caption"], _table(out), 3)
    logprobs = [r["logprob"] for r in out["captions"]]
    assert all(lp < 0 for lp in logprobs)
    # Ranked by log-probability per word (<end> included): the default length penalty 1.
    per_word = [r["logprob"] / (len(r["caption"].split()) + 1) for r in out["captions"]]
    assert per_word == sorted(per_word, reverse=True)
    # The score shown is that number: the one the CLI prints and the captions are ranked by.
    assert [r["score"] for r in out["captions"]] == pytest.approx(per_word, abs=1e-3)
    out5 = caption_image(captioner, str(PHOTO), beam_size=5, num_captions=5)
    _check_rows(out5["caption"], _table(out5), 5)
    assert len({r["caption"] for r in out5["captions"]}) == 5
    assert 0 < out5["seconds"] < 30


def test_handler_reports_confidence_from_the_model(captioner):
    out = caption_image(captioner, str(PHOTO))
    conf = out["confidence"]
    best = out["captions"][0]
    assert conf["value"] == pytest.approx(best["logprob"] / (len(best["caption"].split()) + 1), abs=1e-3)
    assert conf["sure"] == (conf["value"] >= conf["threshold"])
    assert conf["label"] == ("fairly sure" if conf["sure"] else "not sure")
    # A cat is not in Flickr8k's world (the model calls it a child): not sure.
    assert conf["sure"] is False


def test_handler_reports_the_tags_that_guided_the_caption(captioner):
    out = caption_image(captioner, str(PHOTO))
    assert out["tags"][0]["words"][0] == "cat" and out["tags"][0]["prob"] > 0.8  # the encoder sees the cat
    assert out["required"] == [out["tags"][0]["words"]]
    assert set(out["caption"].split()) & set(out["required"][0])  # and the caption names it


def test_handler_takes_pil_and_numpy_and_float_sliders(captioner):
    pil = Image.open(PHOTO)
    expected = _table(caption_image(captioner, str(PHOTO), 2, 1))
    assert _table(caption_image(captioner, pil, 2.0, 1.0)) == expected
    assert _table(caption_image(captioner, np.asarray(pil.convert("RGB")), 2, 1)) == expected
    assert _table(caption_image(captioner, PHOTO.read_bytes(), "2", 1)) == expected


def test_more_captions_than_beams_is_refused_as_in_the_cli(captioner):
    # One rule everywhere (caption(), the CLI, the page and the API): refused, naming both numbers.
    with pytest.raises(gr.Error, match=r"Number of captions \(5\) is more than the beam size \(2\)"):
        caption_image(captioner, str(PHOTO), beam_size=2, num_captions=5)
    with pytest.raises(ValueError, match="n_best must be between 1 and beam_size"):
        captioner(str(PHOTO), beam_size=2, n_best=5)


@pytest.mark.parametrize("beam, n", [(0, 1), (11, 1), (2.5, 1), ("x", 1), (None, 1), ([3], 1), (True, 1),
                                     (float("nan"), 1), (3, 0), (3, 6)])
def test_handler_rejects_out_of_range_options(captioner, beam, n):
    with pytest.raises(gr.Error, match="must be a whole number between 1 and"):
        caption_image(captioner, str(PHOTO), beam, n)


def test_handler_without_image(captioner):
    with pytest.raises(gr.Error, match="upload a photo first"):
        caption_image(captioner, None)


@pytest.mark.parametrize("kind, expected, advice", [
    ("not_image", "Could not caption notes.jpg: not an image", "Please upload a JPEG, PNG"),
    ("text", "Could not caption readme.txt: not an image", "Please upload a JPEG, PNG"),
    ("truncated", "Could not caption truncated.jpg: the image file is truncated", "Please upload a JPEG, PNG"),
    ("empty", "Could not caption empty.png: the file is empty", "Please upload a JPEG, PNG"),
    ("bomb", "Could not caption huge.png: the image is too large", "of at most 64 megapixels"),
])
def test_handler_names_the_problem_with_a_bad_file(captioner, bad_files, kind, expected, advice):
    with pytest.raises(gr.Error) as info:
        caption_image(captioner, str(bad_files[kind]))
    msg = info.value.message
    assert msg.startswith(expected), msg
    assert advice in msg  # the advice that fits the problem
    assert str(bad_files[kind].parent) not in msg  # no server-side paths


def _claiming(fmt: str, width: int, height: int) -> bytes:
    """A small real file in ``fmt`` whose header claims width x height pixels."""
    if fmt == "PNG":
        return _png_claiming_size(width, height)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 10)).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = bytearray(buf.getvalue())
    if fmt == "JPEG":  # the baseline frame header: height, width; then as long as the truncation check asks
        struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
        return bytes(data) + bytes(width * height // 512 + 1)
    if fmt == "GIF":  # the logical screen, then the frame
        struct.pack_into("<HH", data, 6, width, height)
        struct.pack_into("<HH", data, data.index(b"\x2c", 13) + 5, width, height)
    elif fmt == "BMP":
        struct.pack_into("<ii", data, 18, width, height)
    elif fmt == "WEBP":  # VP8L: 14 bits each of width - 1 and height - 1
        assert data[12:16] == b"VP8L"
        bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
        struct.pack_into("<I", data, 21, bits | (width - 1) | (height - 1) << 14)
    return bytes(data)


def test_the_accepted_files_message_names_each_formats_limit_as_enforced(captioner, monkeypatch):
    """The page's advice (it said 64 megapixels for every format while a WebP
    is refused over 16) names each format offered with the limit load_image
    enforces: a photo of that many pixels passes every check made before
    decoding, one row more is refused with that limit in the message."""
    from showtell import images
    from showtell.webapp import ACCEPTED

    stated = {}
    for names, megapixels in re.findall(r"an? ([\w ,]+?) photo of at most ([\d.]+) megapixels", ACCEPTED):
        stated.update({name: round(float(megapixels) * 1e6) for name in re.split(r", | or ", names)})
    assert stated == {"JPEG": 64_000_000, "PNG": 64_000_000, "GIF": 64_000_000, "BMP": 64_000_000,
                      "WebP": 16_000_000}, ACCEPTED

    class Admitted(Exception):
        """Raised once every check before decoding has passed."""

    checked = images._check_decode_cost  # the last check before img.load()

    def then_stop(img):
        checked(img)
        raise Admitted

    monkeypatch.setattr(images, "_check_decode_cost", then_stop)
    for fmt, name in images.FORMAT_NAMES.items():
        limit = stated[name]
        width = math.isqrt(limit)
        height = limit // width  # 8000 x 8000, 4000 x 4000
        with pytest.raises(ImageError, match="Admitted"):
            load_image(_claiming(fmt, width, height))
        with pytest.raises(ImageError, match=rf"too large .*limit {limit:,} pixels") as refused:
            load_image(_claiming(fmt, width, height + 1))
        assert f"{limit / 1e6:g}" in refused.value.advice, (fmt, refused.value.advice)
    with pytest.raises(gr.Error) as shown:  # and the page says so
        caption_image(captioner, _claiming("WEBP", 4000, 4001))
    assert shown.value.message.endswith(ACCEPTED) and "limit 16,000,000 pixels" in shown.value.message


def test_attention_gallery_has_one_overlay_per_word(captioner):
    out = caption_image(captioner, str(PHOTO), 3, 1)
    gallery = attention_gallery(captioner, str(PHOTO), 3)
    words = out["caption"].split()
    assert [label for _, label in gallery] == [f"{i}. {w}" for i, w in enumerate(words, 1)]
    photo = Image.open(PHOTO)
    assert all(im.size == photo.size for im, _ in gallery)  # 400 px: under the 448 px display size
    assert np.abs(np.asarray(gallery[0][0], float) - np.asarray(gallery[-1][0], float)).mean() > 2


def test_page_outputs_come_from_one_caption_of_the_photo(captioner, bad_files, monkeypatch):
    """The page's handler captions the photo once (one encoder pass, one search,
    the attention from it) and fills every output by name."""
    calls = []
    caption = captioner.model.caption
    monkeypatch.setattr(captioner.model, "caption", lambda *a, **k: calls.append(k) or caption(*a, **k))
    shown = page_outputs(captioner, str(PHOTO), 3, 2)
    assert len(calls) == 1 and calls[0]["attention"]
    assert shown.keys() == PAGE_OUTPUTS.keys() and shown["message"] == ""
    out = caption_image(captioner, str(PHOTO), 3, 2)
    assert shown["best"] == out["caption"] and out["captions"][1]["caption"] in shown["nbest"]
    gallery = attention_gallery(captioner, str(PHOTO), 3)
    assert [label for _, label in shown["attention"]] == [label for _, label in gallery]
    assert " s on the server" in shown["timing"]
    # a problem: the message, and every other output empty
    bad = page_outputs(captioner, str(bad_files["text"]), 3, 2)
    assert "Could not caption" in bad["message"]
    assert {k: v for k, v in bad.items() if k != "message"} == {k: v for k, v in PAGE_OUTPUTS.items() if k != "message"}
    # the browser clears the outputs to the same values, in the order it is given them
    assert _clear_js(["timing", "attention", "best"]) == '() => ["", [], ""]'


def test_model_card_comes_from_the_checkpoint(captioner, tmp_path):
    card = model_card(captioner)
    assert "Flickr8k" in card and "efficientnet_lite0" in card and "Show, Attend and Tell" in card
    assert f"{len(captioner.vocab):,} words" in card
    val = captioner.card["val_scores"]
    assert f"BLEU-4 {val['bleu4']:.1f}" in card
    # Another checkpoint: a COCO-trained NIC model with stored test scores and no val scores.
    torch.manual_seed(0)
    words = list(SPECIAL_TOKENS) + "a dog runs on the grass".split()
    model = CaptionModel.build(ModelConfig(embed_dim=16, hidden_dim=16, decoder="show_tell"), Vocabulary(words))
    ckpt = model.checkpoint(DataConfig(dataset="coco", annotations="coco/captions_train2017.json",
                                       image_root="coco/train2017"), TrainConfig())
    ckpt["test_scores"] = {"bleu1": 55.55, "bleu4": 12.34}
    path = tmp_path / "coco.pt"
    save_checkpoint(ckpt, str(path))
    other = Captioner(str(path))
    card = model_card(other)
    assert "MS-COCO (captions_train2017.json)" in card and "Flickr8k" not in card
    assert "NIC" in card and f"{len(words)} words" in card
    assert "Validation scores:** none stored" in card and "BLEU-4 12.3" in card and "BLEU-1 55.5" in card
    assert attention_gallery(other, str(PHOTO), 2) == []  # no attention to show, no error


def test_log_lines_are_cut(tmp_path):
    buf = io.StringIO()
    capped = _CappedLines(buf, limit=50)
    capped.write("short line\n")
    capped.write("x" * 30)
    capped.write("y" * 10_000 + "\nnext\n")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "short line" and lines[2] == "next"
    assert lines[1].startswith("x" * 30 + "y" * 20) and "cut at 50" in lines[1] and len(lines[1]) < 100


# --- the real server through gradio_client ----------------------------------

@pytest.fixture(scope="module")
def server(captioner):
    demo = build_demo(captioner)
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, max_file_size=MAX_FILE_SIZE, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def test_api_caption_with_the_image_alone(client):
    best, table, details = client.predict(handle_file(str(PHOTO)), api_name="/caption")
    assert table["headers"] == TABLE_HEADERS
    _check_rows(best, table["data"], 3)  # defaults: beam 3, 3 captions
    assert details["caption"] == best and [r["caption"] for r in details["captions"]] == [r[1] for r in
                                                                                           table["data"]]
    assert set(details["confidence"]) == {"signal", "value", "threshold", "sure", "label"}
    assert details["tags"][0]["words"][0] == "cat" and details["seconds"] > 0


def test_api_caption_with_every_option(client):
    best, table, _ = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), 4, 2, api_name="/caption")
    _check_rows(best, table["data"], 2)
    best_kw, table_kw, _ = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), beam_size=4, num_captions=2,
                                          api_name="/caption")
    assert (best_kw, table_kw["data"]) == (best, table["data"])


def test_api_describes_the_caption_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/caption"]  # the page's own events are not part of the API
    params = api["named_endpoints"]["/caption"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["image", "beam_size", "num_captions"]
    assert [p["parameter_has_default"] for p in params] == [False, True, True]
    assert [p.get("parameter_default") for p in params[1:]] == [3, 3]
    assert len(api["named_endpoints"]["/caption"]["returns"]) == 3


@pytest.mark.parametrize("kind, expected", [
    ("not_image", "Could not caption notes.jpg: not an image"),
    ("text", "Could not caption readme.txt: not an image"),
    ("truncated", "Could not caption truncated.jpg: the image file is truncated"),
    ("bomb", "Could not caption huge.png: the image is too large"),
])
def test_api_bad_upload_gets_the_clear_message_and_the_server_goes_on(client, bad_files, captioner, kind,
                                                                       expected):
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(bad_files[kind])), api_name="/caption")
    msg = info.value.message
    assert msg.startswith(expected), msg
    assert "verbose error reporting" not in msg
    with pytest.raises(gr.Error) as direct:  # the page and the API show the handler's own text
        caption_image(captioner, str(bad_files[kind]))
    assert msg == direct.value.message
    best, _, _ = client.predict(handle_file(str(PHOTO)), api_name="/caption")
    assert best.strip()


def test_upload_over_the_size_limit_is_refused(server, client, bad_files):
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(handle_file(str(bad_files["too_big"])), api_name="/caption")
    with open(bad_files["too_big"], "rb") as f:  # and the server refuses it (413) for any other client
        r = httpx.post(server + "gradio_api/upload", files={"files": ("big.jpg", f, "image/jpeg")}, timeout=30)
    assert r.status_code == 413
    _still_serving(client)


@pytest.mark.parametrize("beam, expected", [(0, "got 0"), ("abc", "got 'abc'"), (None, "got None"),
                                            ([3], "got [3]"), (2.5, "got 2.5")])
def test_api_bad_options_get_a_clear_message(client, beam, expected):
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(PHOTO)), beam, 1, api_name="/caption")
    assert info.value.message == f"Beam size must be a whole number between 1 and 10, {expected}."
    with pytest.raises(AppError, match="Number of captions must be a whole number between 1 and 5, got 'x'"):
        client.predict(handle_file(str(PHOTO)), 3, "x", api_name="/caption")


def _still_serving(client):
    best, _, _ = client.predict(handle_file(str(PHOTO)), 1, 1, api_name="/caption")
    assert best.strip()


def _data_url(data: bytes, mime="image/jpeg") -> dict:
    return {"url": f"data:{mime};base64," + base64.b64encode(data).decode(), "meta": {"_type": "gradio.FileData"}}


def test_data_url_is_captioned_from_its_own_bytes(client):
    """The same photo as a file and as a data: URL: the same captions and
    log-probabilities (Gradio would re-encode the data: URL first)."""
    for name in ("cat.jpg", "coffee.jpg"):
        as_file = client.predict(handle_file(str(EXAMPLES / name)), api_name="/caption")
        as_url = client.predict(_data_url((EXAMPLES / name).read_bytes()), api_name="/caption")
        assert as_url[1]["data"] == as_file[1]["data"]
        assert [r["logprob"] for r in as_url[2]["captions"]] == [r["logprob"] for r in as_file[2]["captions"]]
    with pytest.raises(AppError, match="data: URL is not valid base64"):
        client.predict({"url": "data:image/jpeg;base64,@@@@", "meta": {"_type": "gradio.FileData"}},
                       api_name="/caption")
    with pytest.raises(AppError, match="Could not caption the image: not an image"):
        client.predict(_data_url(b"hello, not a photo"), api_name="/caption")
    with pytest.raises(AppError, match="must be sent as a file"):
        client.predict("x" * 1000, api_name="/caption")
    _still_serving(client)


def test_data_url_cannot_pass_the_upload_limit(server, client):
    # Over the upload limit, yet small enough as base64 to pass the body limit: refused when decoded.
    just_over = PHOTO.read_bytes() + bytes(MAX_FILE_SIZE + 1000 - PHOTO.stat().st_size)
    assert len(base64.b64encode(just_over)) < body_limit(MAX_FILE_SIZE)
    with pytest.raises(AppError, match="larger than the upload limit of 2 MB"):
        client.predict(_data_url(just_over), api_name="/caption")
    _still_serving(client)


def _post(url, body):
    kind = "multipart/form-data; boundary=xyz" if url.endswith("/upload") else "application/json"
    return httpx.post(url, content=body, headers={"content-type": kind}, timeout=30)


@pytest.mark.parametrize("route", ["gradio_api/queue/join", "gradio_api/call/caption", "gradio_api/upload"])
def test_oversized_bodies_are_refused_before_they_are_read(server, client, route):
    limit = body_limit(MAX_FILE_SIZE)
    big = b'{"data": ["' + b"A" * (limit + 1) + b'"], "fn_index": 0, "session_hash": "big"}'
    r = _post(server + route, big)
    assert r.status_code == 413, r.text[:200]
    # Without a Content-Length (chunked), the body is counted as it streams.
    head = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n") if route.endswith("upload") else b'{"data": ["'
    chunks = itertools.chain([head], (b"A" * 256 * 1024 for _ in range(limit // (256 * 1024) + 2)))
    r = _post(server + route, chunks)
    assert r.status_code == 413, r.text[:200]
    _still_serving(client)


@pytest.mark.parametrize("method, route, body, expected", [
    ("post", "gradio_api/call/nope", {"data": [None]}, "No API endpoint /nope; this app has /caption."),
    ("post", "gradio_api/run/nope", {"data": [None]}, "No API endpoint /nope; this app has /caption."),
    ("post", "gradio_api/queue/join", {"data": [None], "fn_index": 999, "session_hash": "s"},
     "No function with fn_index 999; call an endpoint by name: /caption."),
    ("post", "nope", {}, "Not Found"),
])
def test_unknown_endpoints_get_a_clear_404(server, client, method, route, body, expected):
    r = httpx.request(method, server + route, json=body, timeout=30)
    assert r.status_code == 404 and r.json()["detail"] == expected
    _still_serving(client)


def test_concurrent_clients_are_all_served(server, client):
    photos = [EXAMPLES / n for n in ("cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg")]
    expected = {p.name: client.predict(handle_file(str(p)), api_name="/caption")[0] for p in photos}

    def one(path):
        return path.name, Client(server, verbose=False).predict(handle_file(str(path)), api_name="/caption")[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = dict(pool.map(one, photos))
    assert got == expected


# --- app.py: options, environment, and the real process ---------------------

def test_app_options_from_flags_and_environment(monkeypatch):
    import app
    for name in ("SHOWTELL_HOST", "GRADIO_SERVER_NAME", "SHOWTELL_PORT", "GRADIO_SERVER_PORT", "SHOWTELL_CHECKPOINT",
                 "SHOWTELL_ENCODER_RUNTIME", "SHOWTELL_MIRROR_AVERAGE"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.checkpoint, args.max_file_size) == ("127.0.0.1", 7860, None, "10mb")
    assert args.encoder_runtime == "auto" and args.mirror_average is False
    assert app.parse_args(["--mirror-average"]).mirror_average is True
    monkeypatch.setenv("SHOWTELL_MIRROR_AVERAGE", "1")
    assert app.parse_args([]).mirror_average is True
    monkeypatch.setenv("SHOWTELL_MIRROR_AVERAGE", "0")
    assert app.parse_args([]).mirror_average is False
    monkeypatch.setenv("SHOWTELL_ENCODER_RUNTIME", "torch")
    assert app.parse_args([]).encoder_runtime == "torch"
    assert app.parse_args(["--encoder-runtime", "onnxruntime"]).encoder_runtime == "onnxruntime"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    assert (app.parse_args([]).host, app.parse_args([]).port) == ("0.0.0.0", 7000)
    monkeypatch.setenv("SHOWTELL_HOST", "127.0.0.2")
    monkeypatch.setenv("SHOWTELL_PORT", "7001")
    assert (app.parse_args([]).host, app.parse_args([]).port) == ("127.0.0.2", 7001)
    args = app.parse_args(["--host", "localhost", "--port", "9000", "--checkpoint", "m.pt"])
    assert (args.host, args.port, args.checkpoint) == ("localhost", 9000, "m.pt")


def test_app_py_serves_captions_on_the_port_from_the_environment(tmp_path):
    port = free_port()
    env = dict(os.environ, SHOWTELL_PORT=str(port), SHOWTELL_HOST="127.0.0.1")
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert time.monotonic() < deadline, "app.py did not start: " + (tmp_path / "app.log").read_text()
                time.sleep(0.2)
        best, table, _ = client.predict(handle_file(str(PHOTO)), api_name="/caption")
        _check_rows(best, table["data"], 3)
        with pytest.raises(AppError, match="not an image"):
            client.predict(handle_file(str(ROOT / "examples" / "SOURCES.md")), api_name="/caption")
        assert client.predict(handle_file(str(PHOTO)), 1, 1, api_name="/caption")[0].strip()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert (tmp_path / "app.log").read_text().count("ready in") == 1  # the model loaded once


def test_the_page_says_when_the_caption_does_not_name_what_the_encoder_sees():
    from showtell.webapp import _tags_markdown

    dog = {"words": ["dog", "dogs"], "prob": 0.77, "classes": ["beagle"]}
    bed = {"words": ["bed", "beds"], "prob": 0.1, "classes": ["four-poster"]}
    text = _tags_markdown([dog, bed], [], "two people are sitting on a bed")
    assert "dog/dogs 77% (not in the caption)" in text and "bed/beds 10%," not in text
    assert "bed/beds 10%" in text and "bed/beds 10% (not in" not in text
    assert "(not in the caption)" not in _tags_markdown([dog], [], "a dog runs")
    unmet = _tags_markdown([dog], [["dog", "dogs"]], "two people sit")
    assert "no caption of this model could" in unmet
    assert unmet.endswith("unguided one.") and "could" not in _tags_markdown([dog], [["dog", "dogs"]], "a dog runs")
    # Guided, but the forced caption was set aside: said so, not "not sure enough".
    aside = _tags_markdown([dog, bed], [], "two people are sitting on a bed", set_aside=True)
    assert "dog/dogs 77% (not in the caption)" in aside and "made to name dog/dogs was far less likely" in aside
    assert "not sure enough" not in aside and "not sure enough" in text


def test_page_outputs_report_a_set_aside_guided_caption(monkeypatch):
    """The API's result carries set_aside, and the page's tag line follows it,
    for a photo whose guided caption the fallback set aside."""
    from showtell.captioner import get_captioner
    from showtell.webapp import caption_image, page_outputs

    captioner = get_captioner()
    cat = os.path.join(ROOT, "examples", "cat.jpg")
    assert caption_image(captioner, cat)["set_aside"] is False  # the cat caption names the cat
    # With a margin of 0 any guided caption less probable per word than the unguided one is set aside.
    monkeypatch.setattr(captioner, "defaults", dataclasses.replace(captioner.defaults, guidance_fallback=0.0))
    out = caption_image(captioner, cat)
    page = page_outputs(captioner, cat, 3, 1)
    assert out["set_aside"] is True and out["required"] == [] and "cat" not in out["caption"].split()
    assert "made to name cat/cats was far less likely" in page["tags"]

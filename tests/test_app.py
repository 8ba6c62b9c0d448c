"""The web UI (showtell/webapp.py, app.py): the caption handler as a plain
function, then the real server on a free loopback port called through
gradio_client, with good and bad uploads."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import concurrent.futures  # noqa: E402
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

from showtell.captioner import get_captioner  # noqa: E402
from showtell.webapp import (  # noqa: E402
    TABLE_HEADERS, build_demo, caption_image, free_port, launch, threads_per_request)

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
    assert isinstance(best, str) and best.strip()
    assert len(rows) == n
    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert rows[0][1] == best
    assert all(isinstance(r[1], str) and r[1].strip() for r in rows)
    probs = [r[2] for r in rows]
    assert all(0 < p <= 1 for p in probs)
    assert probs == sorted(probs, reverse=True)
    shares = [r[3] for r in rows]
    assert shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(100, abs=0.2 * n)


def test_handler_returns_best_caption_and_sorted_n_best(captioner):
    best, rows = caption_image(captioner, str(PHOTO))
    _check_rows(best, rows, 3)
    best5, rows5 = caption_image(captioner, str(PHOTO), beam_size=5, num_captions=5)
    _check_rows(best5, rows5, 5)
    assert len({r[1] for r in rows5}) == 5


def test_handler_takes_pil_and_numpy_and_float_sliders(captioner):
    pil = Image.open(PHOTO)
    expected = caption_image(captioner, str(PHOTO), 2, 1)
    assert caption_image(captioner, pil, 2.0, 1.0) == expected
    assert caption_image(captioner, np.asarray(pil.convert("RGB")), 2, 1) == expected


def test_handler_clamps_captions_to_beam_size(captioner):
    best, rows = caption_image(captioner, str(PHOTO), beam_size=2, num_captions=5)
    _check_rows(best, rows, 2)


@pytest.mark.parametrize("beam, n", [(0, 1), (11, 1), (2.5, 1), ("x", 1), (3, 0), (3, 6)])
def test_handler_rejects_out_of_range_options(captioner, beam, n):
    with pytest.raises(gr.Error, match="must be a whole number"):
        caption_image(captioner, str(PHOTO), beam, n)


def test_handler_without_image(captioner):
    with pytest.raises(gr.Error, match="upload an image"):
        caption_image(captioner, None)


@pytest.mark.parametrize("kind, expected", [
    ("not_image", "Could not caption notes.jpg: not an image"),
    ("text", "Could not caption readme.txt: not an image"),
    ("truncated", "Could not caption truncated.jpg: the image file is truncated"),
    ("empty", "Could not caption empty.png: the file is empty"),
    ("bomb", "Could not caption huge.png: the image is too large"),
])
def test_handler_names_the_problem_with_a_bad_file(captioner, bad_files, kind, expected):
    with pytest.raises(gr.Error) as info:
        caption_image(captioner, str(bad_files[kind]))
    msg = info.value.message
    assert msg.startswith(expected), msg
    assert "Please upload a JPEG, PNG" in msg
    assert str(bad_files[kind].parent) not in msg  # no server-side paths


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
    best, table = client.predict(handle_file(str(PHOTO)), api_name="/caption")
    assert table["headers"] == TABLE_HEADERS
    _check_rows(best, table["data"], 3)  # defaults: beam 3, 3 captions


def test_api_caption_with_every_option(client):
    best, table = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), 4, 2, api_name="/caption")
    _check_rows(best, table["data"], 2)
    best_kw, table_kw = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), beam_size=4, num_captions=2,
                                       api_name="/caption")
    assert (best_kw, table_kw["data"]) == (best, table["data"])


def test_api_describes_the_caption_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/caption"]  # example clicks are not part of the API
    params = api["named_endpoints"]["/caption"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["image", "beam_size", "num_captions"]
    assert [p["parameter_has_default"] for p in params] == [False, True, True]
    assert [p.get("parameter_default") for p in params[1:]] == [3, 3]


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
    best, _ = client.predict(handle_file(str(PHOTO)), api_name="/caption")
    assert best.strip()


def test_upload_over_the_size_limit_is_refused(server, client, bad_files):
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(handle_file(str(bad_files["too_big"])), api_name="/caption")
    with open(bad_files["too_big"], "rb") as f:  # and the server refuses it (413) for any other client
        r = httpx.post(server + "gradio_api/upload", files={"files": ("big.jpg", f, "image/jpeg")}, timeout=30)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    best, _ = client.predict(handle_file(str(PHOTO)), api_name="/caption")
    assert best.strip()


def test_api_bad_options_get_a_clear_message(client):
    with pytest.raises(AppError, match="minimum value 1"):
        client.predict(handle_file(str(PHOTO)), 0, 1, api_name="/caption")


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
    for name in ("SHOWTELL_HOST", "GRADIO_SERVER_NAME", "SHOWTELL_PORT", "GRADIO_SERVER_PORT", "SHOWTELL_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.checkpoint, args.max_file_size) == ("127.0.0.1", 7860, None, "10mb")
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
        best, table = client.predict(handle_file(str(PHOTO)), api_name="/caption")
        _check_rows(best, table["data"], 3)
        with pytest.raises(AppError, match="not an image"):
            client.predict(handle_file(str(ROOT / "examples" / "SOURCES.md")), api_name="/caption")
        assert client.predict(handle_file(str(PHOTO)), 1, 1, api_name="/caption")[0].strip()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert (tmp_path / "app.log").read_text().count("ready in") == 1  # the model loaded once

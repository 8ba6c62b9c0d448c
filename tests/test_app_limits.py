"""The web app cleans up after itself and answers odd requests with a clear
4xx (issue 22): uploads and overlays are deleted after a bounded time and at
shutdown, a forged Host header is refused, an unknown event id is a 404, a
number of captions no float holds is a clear message, a request head must
arrive within the header timeout, and a request carrying both Content-Length
and Transfer-Encoding is refused."""
import os
import socket
import threading
import time
from types import SimpleNamespace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from showtell.captioner import get_captioner  # noqa: E402
from showtell.webapp import (BOTH_LENGTHS, DELETE_AFTER, DELETE_EVERY, HEADER_TIMEOUT, allowed_hosts,  # noqa: E402
                             build_demo, delete_old_files, free_port, launch)

pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
PHOTO = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose files live 2 s, with its demo (to close it in a test)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOWTELL_DELETE_AFTER", "2")
    mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
    demo = build_demo(get_captioner())
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        mp.undo()


def _upload(url: str) -> Path:
    r = httpx.post(url + "gradio_api/upload", files={"files": ("photo.jpg", PHOTO.read_bytes(), "image/jpeg")},
                   timeout=30)
    r.raise_for_status()
    return Path(r.json()[0])


def test_files_are_deleted_after_a_bounded_time(served):
    demo, url = served
    assert demo.delete_cache == (10**9, 2)  # Gradio deletes at shutdown; delete_old_files on schedule
    path = _upload(url)
    assert path.is_file()
    deadline = time.monotonic() + 15
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not path.exists(), "an upload outlived its 2 s"


def test_defaults_bound_the_files_lifetime():
    assert DELETE_EVERY <= DELETE_AFTER <= 600


def test_forged_host_is_refused_and_never_reflected(served):
    _, url = served
    r = httpx.get(url + "config", headers={"host": "evil.example"}, timeout=30)
    assert r.status_code == 400 and "evil" not in r.text
    assert httpx.get(url + "config", timeout=30).status_code == 200
    assert allowed_hosts("0.0.0.0") is None and "localhost" in allowed_hosts("127.0.0.1")


def test_unknown_event_id_is_a_404_and_known_ones_stream(served):
    _, url = served
    r = httpx.get(url + "gradio_api/call/caption/no-such-event", timeout=30)
    assert r.status_code == 404 and "No event 'no-such-event'" in r.json()["detail"]
    client = Client(url, verbose=False)
    job = client.submit(handle_file(str(PHOTO)), 3, 1, api_name="/caption")
    assert job.result(timeout=60)[0].strip()


def test_huge_number_of_captions_is_a_clear_message(served):
    _, url = served
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=r"Number of captions must be a whole number between 1 and 5, got 1000"):
        client.predict(handle_file(str(PHOTO)), 3, 10**400, api_name="/caption")


def test_files_left_are_deleted_at_shutdown(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOWTELL_DELETE_AFTER", "600")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    demo = build_demo(get_captioner())
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        path = _upload(f"http://127.0.0.1:{port}/")
        time.sleep(1)
        assert path.is_file()
    finally:
        demo.close()
    assert not path.exists()


def test_old_files_are_deleted_while_requests_add_files(tmp_path):
    """Gradio's own schedule died of "Set changed size during iteration" under
    load; deleting while another thread keeps adding files must not fail."""
    files, stop = set(), threading.Event()
    old = [tmp_path / f"old{i}.jpg" for i in range(200)]
    for p in old:
        p.write_bytes(b"x")
        files.add(str(p))
    demo = SimpleNamespace(blocks={"examples": SimpleNamespace(keep_in_cache={str(old[0])})}, temp_file_sets=[files])

    def add():
        i = 0
        while not stop.is_set() and i < 100_000:  # bounded: an unbounded set filled 24 GB under load
            files.add(str(tmp_path / f"new{i}.jpg"))  # never written: a request's file still on its way
            i += 1

    adder = threading.Thread(target=add)
    adder.start()
    try:
        deleted = sum(delete_old_files(demo, age=-1) for _ in range(20))
    finally:
        stop.set()
        adder.join()
    assert deleted == 199 and old[0].exists() and not any(p.exists() for p in old[1:])


# --- reading request heads (raw sockets) -----------------------------------------

HEAD_SECONDS = 1.5  # the test server's header timeout (the default is HEADER_TIMEOUT)
SLACK = 3.0  # how late after its deadline a connection may be closed on a busy machine


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """The app served with a header timeout of HEAD_SECONDS: (host, port)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
    demo = build_demo(get_captioner())
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True, header_timeout=HEAD_SECONDS)
    try:
        yield "127.0.0.1", port
    finally:
        demo.close()
        mp.undo()


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True) or ``seconds`` pass (False)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, and nothing after it."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-response"
        body += chunk
    assert len(body) == length  # one response: the test sends one request at a time
    return head + b"\r\n\r\n" + body


def _get(path: str = "/config") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(timed):
    assert 1 <= HEADER_TIMEOUT <= 60  # the default: seconds to tens of seconds
    socks = [socket.create_connection(timed) for _ in range(50)]  # the probe held 500 open for good
    t0 = time.monotonic()
    try:
        results = [_read_until_closed(s, HEAD_SECONDS + SLACK - (time.monotonic() - t0)) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(closed and data == b"" for data, closed in results), "an idle connection outlived the header timeout"
    assert time.monotonic() - t0 >= HEAD_SECONDS - 0.2  # and not before it
    with pytest.raises(ValueError, match="header_timeout must be a positive number of seconds"):
        launch(gr.Blocks(), header_timeout=0)


def test_a_request_head_sent_too_slowly_gets_408_and_is_closed(timed):
    with socket.create_connection(timed) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /config HTTP/1.1\r\n")
        for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"x" * 40:  # slowloris: a byte every 0.1 s, never done
            time.sleep(0.1)
            try:
                s.sendall(bytes([byte]))
            except OSError:  # the server closed it
                break
        data, closed = _read_until_closed(s, max(0.5, HEAD_SECONDS + SLACK - (time.monotonic() - t0)))
    assert closed and time.monotonic() - t0 < HEAD_SECONDS + SLACK
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"connection: close" in data
    assert f"did not arrive within {HEAD_SECONDS:g} seconds".encode() in data


def test_a_head_within_the_timeout_is_served_and_each_next_head_is_timed_again(timed):
    with socket.create_connection(timed) as s:
        s.sendall(b"GET /config HTTP/1.1\r\n")
        time.sleep(HEAD_SECONDS / 3)  # slow, but within the deadline
        s.sendall(b"Host: 127.0.0.1\r\n\r\n")
        assert _read_response(s).startswith(b"HTTP/1.1 200 OK")
        time.sleep(HEAD_SECONDS / 2)
        s.sendall(_get())  # keep-alive: the same connection serves a second request
        assert _read_response(s).startswith(b"HTTP/1.1 200 OK")
        data, closed = _read_until_closed(s, HEAD_SECONDS + SLACK)
    assert data == b"" and closed  # then idle: closed again, silently
    assert httpx.get(f"http://{timed[0]}:{timed[1]}/config", timeout=30).status_code == 200


@pytest.mark.parametrize("request_head", [
    b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 0\r\n\r\n"], ids=["upload", "config"])
def test_content_length_with_transfer_encoding_is_a_400_and_the_connection_closes(timed, request_head):
    smuggled = b"0\r\n\r\n" + _get("/gradio_api/info")  # a proxy reading 5 bytes would pass this on
    with socket.create_connection(timed) as s:
        s.sendall(request_head + smuggled)
        data, closed = _read_until_closed(s, 30)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and closed
    assert BOTH_LENGTHS.encode() in data and data.count(b"HTTP/1.1 ") == 1  # the smuggled request is not served
    with socket.create_connection(timed) as s:  # either one alone is read as before
        for framing in (b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"Content-Length: 2\r\n\r\n{}"):
            s.sendall(b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing)
            assert _read_response(s).startswith(b"HTTP/1.1 200 OK")

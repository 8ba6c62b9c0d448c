"""The web app cleans up after itself and answers odd requests with a clear
4xx (issue 22): uploads and overlays are deleted after a bounded time and at
shutdown, a forged Host header is refused, an unknown event id is a 404 and a
number of captions no float holds is a clear message."""
import os
import threading
import time
from types import SimpleNamespace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from showtell.captioner import get_captioner  # noqa: E402
from showtell.webapp import (DELETE_AFTER, DELETE_EVERY, allowed_hosts, build_demo, delete_old_files,  # noqa: E402
                             free_port, launch)

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

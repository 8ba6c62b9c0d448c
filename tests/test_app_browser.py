"""The web page in a real headless browser: Debian's chromium driven by
Playwright (no browser download: ``apt-get install chromium``)."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

CHROMIUM = os.environ.get("SHOWTELL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
# Gradio's queue calls pandas in ways pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
EXAMPLES = ROOT / "examples"
BEST = "#best-caption textarea"
TOAST = "[data-testid=toast-text]"


def _need_browser():
    problems = []
    if not os.path.exists(CHROMIUM):
        problems.append(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright Python package is not installed (pip install playwright; "
                        "no `playwright install` needed)")
    if problems:
        msg = "the browser test cannot run: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def server():
    _need_browser()
    from showtell.captioner import get_captioner
    from showtell.webapp import build_demo, free_port, launch, threads_per_request

    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_request())  # as app.py does
    demo = build_demo(get_captioner())
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    outside = []
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
    page.goto(server)
    page.wait_for_selector("#caption-btn")
    yield page
    page.close()
    assert not outside, f"the page made requests outside the app: {outside}"


def _upload(page, path):
    # Wait for the upload to finish before pressing the button, or it sends no image.
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url) as response:
        page.locator("#photo input[type=file]").set_input_files(str(path))
    assert response.value.ok, response.value.status


def _wait_for_caption_or_error(page, timeout_ms=30_000):
    page.wait_for_function(
        f"""() => document.querySelector('{TOAST}') ||
                  document.querySelector('{BEST}').value.trim() !== ''""", timeout=timeout_ms)


def test_upload_a_photo_and_read_its_caption(page, tmp_path):
    _upload(page, EXAMPLES / "coffee.jpg")
    page.click("#caption-btn")
    _wait_for_caption_or_error(page)
    assert page.locator(TOAST).count() == 0, page.locator(TOAST).first.inner_text()
    caption = page.locator(BEST).input_value()
    assert caption.strip()
    rows = "#nbest [role=row]:has([role=gridcell])"  # the n-best table: 3 captions by default
    page.wait_for_function(f"document.querySelectorAll('{rows}').length === 3")
    assert page.locator(rows).first.locator("[role=gridcell]").nth(1).inner_text().strip() == caption
    shot = tmp_path / "caption.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_a_non_image_upload_shows_the_clear_message(page, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("not really a photo")
    _upload(page, bad)
    page.click("#caption-btn")
    page.wait_for_selector(TOAST, timeout=30_000)
    message = page.locator(TOAST).first.inner_text()
    assert message.startswith("Could not caption holiday.jpg: not an image"), message
    assert page.locator(BEST).input_value() == ""
    page.locator(TOAST).first.wait_for(state="visible")
    page.wait_for_timeout(400)  # let the toast slide in for the screenshot
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    # The server goes on serving: a good photo in the same page is captioned.
    _upload(page, EXAMPLES / "cat.jpg")
    page.click("#caption-btn")
    page.wait_for_function(f"document.querySelector('{BEST}').value.trim() !== ''", timeout=30_000)


def test_one_click_on_an_example_captions_it(page):
    page.locator("#examples button").first.click()
    page.wait_for_function(f"document.querySelector('{BEST}').value.trim() !== ''", timeout=30_000)
    assert page.locator(BEST).input_value().strip()
    assert page.locator(TOAST).count() == 0


def test_use_via_api_page_shows_the_client_call(page):
    page.get_by_text("Use via API").first.click()
    page.wait_for_function("document.body.innerText.includes('/caption')", timeout=15_000)
    text = page.locator("body").inner_text()
    assert "gradio_client" in text and 'api_name="/caption"' in text

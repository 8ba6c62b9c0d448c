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


MESSAGE = "#message .st-message"
ROWS = "#nbest table.st-nbest tbody tr"
THUMBS = "#attention button.thumbnail-item"


def _upload(page, path):
    # The upload itself must succeed; the page then captions it on its own.
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url) as response:
        page.locator("#photo input[type=file]").set_input_files(str(path))
    assert response.value.ok, response.value.status


def _wait_for_caption(page, timeout_ms=60_000):
    page.wait_for_function(f"document.querySelector('{BEST}').value.trim() !== ''", timeout=timeout_ms)
    return page.locator(BEST).input_value()


def _no_errors_shown(page):
    assert page.locator(TOAST).count() == 0, page.locator(TOAST).first.inner_text()
    assert page.locator(MESSAGE).count() == 0, page.locator(MESSAGE).inner_text()
    assert page.locator("[data-testid=status-tracker] .error").count() == 0


def test_upload_captions_at_once_with_confidence_table_and_time(page):
    _upload(page, EXAMPLES / "hopper.jpg")  # no button press: uploading is enough
    caption = _wait_for_caption(page)
    assert caption.strip()
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 3")
    _no_errors_shown(page)
    first = page.locator(ROWS).first.locator("td")
    assert first.nth(0).inner_text() == "1" and first.nth(1).inner_text() == caption
    # Each caption with the score it is ranked by: the log-probability per word, best first.
    assert page.locator("#nbest th.score").inner_text() == "log-prob per word"
    scores = [float(page.locator(ROWS).nth(i).locator("td.score").inner_text()) for i in range(3)]
    assert scores == sorted(scores, reverse=True) and all(x < 0 for x in scores), scores
    # The model gets this portrait wrong (a woman in uniform, no cup) and says so.
    assert "not sure" in page.locator("#confidence").inner_text()
    assert " s on the server" in page.locator("#timing").inner_text()
    # The model card reads the checkpoint.
    page.locator("#model-card").get_by_text("About this model").click()
    page.wait_for_function("document.querySelector('#model-card').innerText.includes('words')")  # opened
    card = page.locator("#model-card").inner_text()
    from showtell.captioner import BUNDLED_MODEL
    from showtell.checkpoint import load_checkpoint

    stored = load_checkpoint(BUNDLED_MODEL)  # what the card must show: the checkpoint's own numbers
    assert "Flickr8k" in card and f"{len(stored['vocab']):,} words" in card
    assert f"BLEU-4 {stored['val_scores']['bleu4']:.1f}" in card


def test_the_rank_header_stays_on_one_line_and_the_page_fits_400_px(page):
    _upload(page, EXAMPLES / "camera.jpg")
    _wait_for_caption(page)
    page.wait_for_selector(ROWS)
    header = page.locator("#nbest th").first.bounding_box()["height"]
    cell = page.locator(ROWS).first.locator("td").first.bounding_box()["height"]
    assert header < 1.6 * cell  # one line, not "ra / nk"
    page.set_viewport_size({"width": 400, "height": 900})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    table = page.locator("#nbest table").bounding_box()
    assert table["x"] >= 0 and table["x"] + table["width"] <= 400


def test_click_a_word_to_see_where_the_model_looked(page, tmp_path):
    _upload(page, EXAMPLES / "camera.jpg")
    words = _wait_for_caption(page).split()
    page.wait_for_function(f"document.querySelectorAll('{THUMBS}').length === {len(words)}", timeout=30_000)
    labels = [page.locator(THUMBS).nth(i).inner_text().strip() for i in range(len(words))]
    assert labels == [f"{i}. {w}" for i, w in enumerate(words, 1)]
    last = len(words) - 1
    page.locator(THUMBS).nth(last).click()  # the last word, e.g. "camera"
    preview = page.locator("#attention .preview img").first
    preview.wait_for(state="visible", timeout=10_000)
    assert page.locator("#attention .preview").inner_text().strip().startswith(f"{last + 1}. {words[last]}")
    box = preview.bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    # Each overlay is its own image: the last word's is not the first's.
    src = preview.get_attribute("src")
    assert src and src != page.locator(THUMBS).first.locator("img").get_attribute("src")
    page.wait_for_timeout(500)  # let the preview settle for the screenshot
    # The README's screenshot is this scene, retaken by `make docs` (scripts/make_docs.py).
    shot = tmp_path / "attention.png"
    page.screenshot(path=str(shot), full_page=False, type="png")
    assert 20_000 < shot.stat().st_size


def test_a_new_photo_never_sits_beside_the_previous_caption(page):
    _upload(page, EXAMPLES / "cat.jpg")
    caption_a = _wait_for_caption(page)
    page.wait_for_selector(THUMBS)
    # Record every value the caption box and the overlay strip take, frame by frame.
    page.evaluate(f"""() => {{
        window.seen = [];
        const box = document.querySelector('{BEST}');
        const tick = () => {{
            const state = box.value + ' | ' + document.querySelectorAll('{THUMBS}').length;
            if (window.seen[window.seen.length - 1] !== state) window.seen.push(state);
            requestAnimationFrame(tick);
        }};
        tick();
    }}""")
    _upload(page, EXAMPLES / "hopper.jpg")
    page.wait_for_function(f"document.querySelector('{BEST}').value.trim() !== '' && "
                           f"document.querySelector('{BEST}').value !== {caption_a!r}", timeout=60_000)
    caption_b = page.locator(BEST).input_value()
    assert caption_b != caption_a
    seen = page.evaluate("window.seen")
    # A's caption and overlays disappear (all cleared at once) before B's caption shows.
    assert seen[0].startswith(caption_a + " | ") and not seen[0].endswith("| 0")
    cleared = seen.index(" | 0")
    first_b = next(i for i, v in enumerate(seen) if v.startswith(caption_b + " | "))
    assert cleared < first_b, seen
    assert not any(v.startswith(caption_a + " | ") for v in seen[cleared:]), seen


def test_a_non_image_upload_shows_one_clear_message(page, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("not really a photo")
    _upload(page, bad)
    page.wait_for_selector(MESSAGE, timeout=30_000)
    message = page.locator(MESSAGE).inner_text()
    assert message.startswith("Could not caption holiday.jpg: not an image"), message
    page.wait_for_timeout(500)  # anything else that was going to appear has appeared
    assert page.locator(TOAST).count() == 0  # the one message is in the page, not also in a toast
    assert page.locator("[data-testid=status-tracker] .error").count() == 0  # no red "Error" badges
    assert page.locator(BEST).input_value() == "" and page.locator(THUMBS).count() == 0
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    # The server goes on serving, and a good photo clears the message.
    _upload(page, EXAMPLES / "cat.jpg")
    _wait_for_caption(page)
    assert page.locator(MESSAGE).count() == 0


def test_a_text_file_gets_one_message_and_the_button_explains(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text")
    page.locator("#photo input[type=file]").set_input_files(str(notes))
    page.wait_for_selector(TOAST, timeout=10_000)  # the browser refuses it: Gradio's own toast, once
    assert page.locator(TOAST).count() == 1
    assert "Invalid file type: notes.txt" in page.locator(TOAST).first.inner_text()
    assert page.locator(MESSAGE).count() == 0 and page.locator(BEST).input_value() == ""
    page.click("#caption-btn")  # pressing Caption with no photo: a hint in the page, no error badges
    page.wait_for_selector(MESSAGE, timeout=30_000)
    assert page.locator(MESSAGE).inner_text().startswith("Please upload a photo first")
    assert page.locator("[data-testid=status-tracker] .error").count() == 0


def test_one_click_on_an_example_captions_it(page):
    page.locator("#examples button").first.click()
    caption = _wait_for_caption(page)
    assert caption.strip()
    page.wait_for_selector(THUMBS, timeout=30_000)
    _no_errors_shown(page)


def test_use_via_api_page_shows_the_client_call(page):
    page.get_by_text("Use via API").first.click()
    page.wait_for_function("document.body.innerText.includes('/caption')", timeout=15_000)
    text = page.locator("body").inner_text()
    assert "gradio_client" in text and 'api_name="/caption"' in text


def test_the_caption_box_never_clips_after_the_window_narrows(page):
    _upload(page, EXAMPLES / "astronaut.jpg")  # a long caption: two lines at 1280 px, more at 400
    caption = _wait_for_caption(page)
    assert len(caption.split()) >= 10, caption
    page.set_viewport_size({"width": 400, "height": 900})  # a resize, no reload
    page.wait_for_timeout(500)
    box = page.evaluate(f"""() => {{
        const t = document.querySelector('{BEST}');
        return {{scroll: t.scrollHeight, client: t.clientHeight, width: t.getBoundingClientRect().right}};
    }}""")
    assert box["scroll"] <= box["client"] + 1, box  # every line of the caption is visible
    assert box["width"] <= 400, box


def test_more_captions_than_beams_gets_the_same_rule_as_the_cli(page):
    _upload(page, EXAMPLES / "cat.jpg")
    _wait_for_caption(page)
    page.locator("#beam-size input[type=number]").fill("2")  # 3 captions asked, beam 2
    page.locator("#beam-size input[type=number]").press("Enter")
    page.click("#caption-btn")
    page.wait_for_selector(MESSAGE, timeout=30_000)
    assert page.locator(MESSAGE).inner_text().startswith(
        "Number of captions (3) is more than the beam size (2)"), page.locator(MESSAGE).inner_text()
    assert page.locator("[data-testid=status-tracker] .error").count() == 0

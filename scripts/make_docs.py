"""Regenerate every caption and command output quoted in README.md and docs/,
and the page's screenshot, from the code and the bundled model as they are.

    python scripts/make_docs.py                  # rewrite the quoted blocks and docs/screenshot-attention.png
    python scripts/make_docs.py --check          # exit 1 naming each stale block; rewrites nothing
    python scripts/make_docs.py --no-screenshot  # the blocks only (no browser needed)
    python scripts/make_docs.py --quick          # not the scores table (three evaluations: minutes)

(`make docs` runs the first.) A generated block sits between two marker lines
in a Markdown file::

    <!-- make_docs: cli-quickstart -->
    ...                       (written by BLOCKS["cli-quickstart"] below)
    <!-- /make_docs -->

Everything between the markers is replaced; the prose around them is not
touched. After a new bundled model (showtell/models/showtell-flickr8k.pt), one
run of this script brings every quoted caption, score and output up to date.
``--check`` compares numbers with a tolerance of 0.01 (another CPU may round the
fourth decimal of a log-probability differently) and text exactly;
``tests/test_docs.py`` runs it in CI.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCREENSHOT = ROOT / "docs" / "screenshot-attention.png"
CHROMIUM = os.environ.get("SHOWTELL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BLOCK = re.compile(r"(<!-- make_docs: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /make_docs -->)", re.S)
NUMBER = re.compile(r"-?\d+\.\d+")
TOLERANCE = 0.01
# What each example photo shows (examples/SOURCES.md), for the tables that quote its captions.
EXAMPLE_PHOTOS = {"astronaut": "astronaut Eileen Collins in an orange flight suit",
                  "camera": "a man with a camera on a tripod", "cat": "a tabby cat's face",
                  "coffee": "an espresso cup", "hopper": "Grace Hopper in naval uniform",
                  "rocket": "a rocket on its launch pad at dusk"}

BLOCKS: dict[str, Callable[[], str]] = {}


def block(name: str):
    def register(fn):
        BLOCKS[name] = fn
        return fn
    return register


def _captioner():
    from showtell.captioner import get_captioner

    return get_captioner()


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``showtell ARGV`` in this process: (exit status, stdout, stderr)."""
    from showtell.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _console(*commands: list[str]) -> str:
    """A console session: each command as typed, then what it printed."""
    lines = []
    for argv in commands:
        status, out, err = _run(argv)
        lines.append("$ showtell " + " ".join(argv))
        lines += (out + err).rstrip("\n").splitlines()
    return "```console\n" + "\n".join(lines) + "\n```\n"


def _fence(lang: str, text: str) -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


# --- the blocks ---------------------------------------------------------------------


@block("python-quickstart")
def python_quickstart() -> str:
    from showtell import caption

    best = caption("examples/cat.jpg", n_best=3)
    c = best[0]
    return _fence("python", f"""from showtell import caption
caption("examples/cat.jpg")                   # {caption("examples/cat.jpg")!r}
best = caption("examples/cat.jpg", n_best=3)  # 3 ScoredCaption, best first
best[0].score                                 # {round(c.score, 3)!r}: what they are ranked by (log-prob per word)
best[0].confidence.label                      # {c.confidence.label!r} (threshold {c.confidence.threshold:g})
caption(["a.jpg", "b.jpg"])                   # a list in, a list out (decoded in batches)""")


@block("explain-python")
def explain_python() -> str:
    e = _captioner().explain("examples/camera.jpg")
    last = len(e.words) - 1
    return _fence("python", f"""from showtell import Captioner
from showtell.overlay import attention_overlay, attention_grid
from PIL import Image

captioner = Captioner()
e = captioner.explain("examples/camera.jpg")  # the same caption caption() gives with the same options
e.text          # {e.text!r}
e.words[{last}]     # {e.words[last]!r}
e.attention.shape  # {tuple(e.attention.shape)!r}: one 7x7 map per word, float32, each sums to 1
photo = Image.open("examples/camera.jpg")
attention_overlay(photo, e.attention[{last}]).save("{e.words[last]}.png")  # the photo's size, heatmap blended
attention_grid(photo, e.words, e.attention).save("grid.png")   # every word, labelled""")


@block("explain-cli")
def explain_cli() -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        status, out, err = _run(["caption", "examples/camera.jpg", "--attention", tmp])
        files = sorted(os.listdir(tmp))
    return _fence("console", "$ showtell caption examples/camera.jpg --attention out/\n" + out.rstrip() + "\n$ ls out/\n"
                  + " ".join(files))


@block("cli-quickstart")
def cli_quickstart() -> str:
    return _console(["caption", "examples/cat.jpg", "examples/rocket.jpg"],
                    ["caption", "examples/cat.jpg", "--n-best", "3"],
                    ["caption", "examples/cat.jpg", "--json"])


@block("exit-codes")
def exit_codes() -> str:
    """The exit-status table, each row's example run here and now."""
    rows = [
        ("0", "every image was captioned", ["caption", "examples/cat.jpg"]),
        ("1", "an image could not be captioned (missing, unreadable, not an image: reported on stderr, or as "
              "`{\"image\", \"error\"}` with `--json`, and the others still captioned), or the work failed "
              "(a corrupt checkpoint, a dataset file that cannot be read, a full disk)",
         ["caption", "nosuch.jpg"]),
        ("2", "the command line is wrong (a flag out of range, more captions than beams, no such checkpoint, "
              "`--device cuda` without a GPU): one `error:` line, before any slow work starts",
         ["caption", "examples/cat.jpg", "--n-best", "5", "--beam-size", "3"]),
        ("2", "", ["caption", "examples/cat.jpg", "--beam-size", "0"]),
        ("2", "", ["caption", "examples/cat.jpg", "--checkpoint", "nosuch.pt"]),
    ]
    lines = ["| status | meaning | example | what it prints on stderr |", "|---|---|---|---|"]
    for status, meaning, argv in rows:
        got, _, err = _run(argv)
        if str(got) != status:
            raise SystemExit(f"showtell {' '.join(argv)} exited {got}, the docs say {status}")
        shown = f"`{err.strip()}`" if err.strip() else "(nothing)"
        lines.append(f"| {status} | {meaning} | `showtell {' '.join(argv)}` | {shown} |")
    lines.append("| 130 | interrupted (Ctrl-C) | | `error: interrupted` |")
    return "\n".join(lines) + "\n"


@block("examples-confidence")
def examples_confidence() -> str:
    """The example photos as the page captions them (beam 3, 3 captions, guided)."""
    captioner = _captioner()
    lines = ["| photo | what it shows | the model's caption (the page's decoding) | log-prob per word | the page says |",
             "|---|---|---|---|---|"]
    for name, shows in EXAMPLE_PHOTOS.items():
        best = captioner(f"examples/{name}.jpg", beam_size=3, n_best=3)[0]
        lines.append(f"| {name}.jpg | {shows} | {best.text} | {best.confidence.value:.3f} | "
                     f"{best.confidence.label} |")
    return "\n".join(lines) + "\n"


@block("examples-guided")
def examples_guided() -> str:
    captioner = _captioner()
    threshold = captioner.defaults.guidance_threshold  # the model's own (its calibration)
    lines = ["| photo | unguided (`--no-guidance`) | guided (default) | top tag |", "|---|---|---|---|"]
    for name in EXAMPLE_PHOTOS:
        path = f"examples/{name}.jpg"
        plain = captioner(path, guided=False)
        (best,) = captioner.caption_each([path])[0]  # caption()'s decoding: guided
        tag = best.tags[0] if best.tags else None
        if best.required:
            shown = best.text
        elif tag and tag.prob >= threshold:  # guided, but set aside (DecodeOptions.guidance_fallback)
            forced = captioner(path, guidance_fallback=None)
            shown = f"(the same: \"{forced}\", forced to say {tag.words[0]}, was set aside)"
        else:
            shown = f"(the same: no tag reaches {threshold})"
        top = f"{'/'.join(tag.words[:2])} {tag.prob:.2f}" if tag else "-"
        lines.append(f"| {name}.jpg | {plain} | {shown} | {top} |")
    return "\n".join(lines) + "\n"


@block("guided-python")
def guided_python() -> str:
    from showtell import Captioner, caption

    cat = "examples/cat.jpg"
    best = caption(cat, n_best=2)
    tag = best[0].tags[0]
    return _fence("python", f"""from showtell import caption, Captioner

caption("examples/cat.jpg")                         # {caption(cat)!r}
caption("examples/cat.jpg", guided=False)           # {caption(cat, guided=False)!r}
caption("examples/cat.jpg", guidance_threshold=0.5) # {caption(cat, guidance_threshold=0.5)!r}
best = caption("examples/cat.jpg", n_best=2)
best[0].tags[0]    # WordTag(words={tag.words!r}, prob={tag.prob:.3f}, classes={tag.classes!r})
best[0].required   # {best[0].required!r}: the words the caption had to use
best[0].satisfied  # {best[0].satisfied!r}
Captioner().describe("examples/cat.jpg")  # caption, logprob, score, tags, top-5 classes, required words""")


@block("api-details")
def api_details() -> str:
    from showtell.webapp import caption_image

    out = caption_image(_captioner(), "examples/cat.jpg")
    out.pop("seconds")
    out["tags"] = out["tags"][:2]
    items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items() if k != "captions"]
    items.insert(1, ' "captions": [\n' + ",\n".join(f"  {json.dumps(c)}" for c in out["captions"]) + "\n ]")
    return _fence("python", "# details, for examples/cat.jpg (tags cut to two; \"seconds\", the time the request "
                            "took, left out):\n{\n" + ",\n".join(items) + "\n}")


@block("bundled-model")
def bundled_model() -> str:
    """One sentence on the bundled model, from its checkpoint."""
    from showtell.webapp import _data_text

    card = _captioner().card
    m = card.get("model_config", {})
    decoder = {"show_attend_tell": "Show-Attend-Tell", "show_tell": "NIC (Show and Tell)"}.get(m.get("decoder"),
                                                                                             m.get("decoder"))
    scst = card.get("train_config", {}).get("objective") == "scst"
    return (f"The bundled model (`{BUNDLED}`): {m.get('encoder')} encoder (frozen), {decoder} decoder "
            f"(hidden size {m.get('hidden_dim')}), trained on {_data_text(card.get('data_config', {}))}"
            + (" by cross-entropy, then self-critical training (CIDEr-D rewards)" if scst else "")
            + f"; a vocabulary of {card['vocab_size']:,} words.\n")


@block("model-card")
def model_card_block() -> str:
    from showtell.webapp import model_card

    return model_card(_captioner()) + "\n"


DATA = Path(os.environ.get("SHOWTELL_DATA", ROOT.parent / "shared" / "data"))
BUNDLED = "showtell/models/showtell-flickr8k.pt"


def _evaluate(flags: list[str]) -> dict:
    """``showtell evaluate`` of the bundled model: its JSON line."""
    flags = [f.replace("../shared/data", str(DATA)) for f in flags]
    status, out, err = _run(["evaluate", BUNDLED, "--no-progress", *flags])
    if status != 0:
        raise SystemExit(f"showtell evaluate {' '.join(flags)} failed: {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


def _decoding(decoding: str | None) -> str:
    """A row's decoding in words; None: caption()'s default decoding of the bundled model."""
    cap = _captioner()
    d = cap.defaults
    if decoding is not None:
        return f"{decoding}, {cap.decoder_precision} decoder"
    return (f"beam {d.beam_size}, guided (threshold {d.guidance_threshold:g}, fallback {d.guidance_fallback:g}), "
            f"length penalty {d.length_penalty:g}, {cap.decoder_precision} decoder: the default")


# (photos, decoding, evaluate's flags): the README's scores table (None: the default decoding)
DEFAULT_DECODING = None
RESULT_ROWS = [
    ("Flickr8k test (1,000)", DEFAULT_DECODING, ["--data", "../shared/data/flickr8k", "--split", "test"]),
    ("Flickr8k test (1,000)", "greedy, unguided",
     ["--data", "../shared/data/flickr8k", "--split", "test", "--beam-size", "1", "--no-guidance"]),
    ("coco-2733 test (250)", DEFAULT_DECODING, ["--data", "../shared/data/coco-2733", "--split", "test"]),
    ("coco-mini (80)", DEFAULT_DECODING, ["--data", "../shared/data/coco-mini", "--split", "train"]),
]


@block("results")
def results() -> str:
    """The bundled model's scores (slow: four evaluations, minutes on a CPU)."""
    lines = ["| photos | decoding | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | distinct captions | command: `showtell evaluate "
             f"{BUNDLED} ...` |", "|---|---|---|---|---|---|---|---|"]
    for photos, decoding, flags in RESULT_ROWS:
        r = _evaluate(flags)
        cells = [f"{r[k]:.1f}" if r.get(k) is not None else "-" for k in ("bleu4", "meteor", "rouge_l", "cider")]
        lines.append(f"| {photos} | {_decoding(decoding)} | {' | '.join(cells)} | {r['distinct_captions']:.1f} % | "
                     f"`{' '.join(flags)}` |")
    return "\n".join(lines) + "\n"


TEST_PHOTOS = ["3385593926_d3e9c21170.jpg", "2677656448_6b7e7702af.jpg", "241347760_d44c8d3a01.jpg",
               "2654514044_a70a6e2c21.jpg", "1258913059_07c613f7ff.jpg", "311146855_0b65fdb169.jpg"]


@block("test-photos")
def test_photos() -> str:
    """A few Flickr8k test photos: the bundled model's caption beside a reference."""
    flickr8k = DATA / "flickr8k"
    references: dict[str, str] = {}
    for line in (flickr8k / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, _, text = line.partition("\t")
        references.setdefault(key.split("#")[0], text.strip())
    captions = _captioner()([str(flickr8k / "Images" / name) for name in TEST_PHOTOS])
    lines = ["| photo | showtell (`caption()`: beam 3, guided) | one of its reference captions |", "|---|---|---|"]
    lines += [f"| {name} | {text} | {references[name]} |" for name, text in zip(TEST_PHOTOS, captions)]
    return "\n".join(lines) + "\n"


# Blocks that take minutes: --check skips them unless --all (CI checks the rest).
SLOW = {"results"}


# --- rewriting and checking ---------------------------------------------------------------


def same(quoted: str, fresh: str, tolerance: float = TOLERANCE) -> bool:
    """Whether a quoted block says what a fresh run says: the text exactly,
    the decimal numbers within ``tolerance``."""
    if NUMBER.split(quoted) != NUMBER.split(fresh):
        return False
    return all(abs(float(a) - float(b)) <= tolerance for a, b in zip(NUMBER.findall(quoted), NUMBER.findall(fresh)))


def regenerate(files=DOC_FILES, check: bool = False, skip: set[str] = frozenset()) -> list[str]:
    """Rewrite (or with ``check`` only compare) every generated block but those
    named in ``skip``; returns one line per stale block, with its diff. An
    unknown block name is an error."""
    with contextlib.chdir(ROOT):  # the blocks quote paths relative to the checkout (examples/cat.jpg)
        return _regenerate(files, check, skip)


def _regenerate(files, check: bool, skip: set[str]) -> list[str]:
    cache: dict[str, str] = {}
    stale = []
    for path in files:
        text = path.read_text(encoding="utf-8")

        def fresh_body(match: re.Match) -> str:
            name = match.group("name")
            if name not in BLOCKS:
                raise SystemExit(f"{path.name}: no block named {name!r} in scripts/make_docs.py")
            if name in skip:
                return match.group(0)
            if name not in cache:
                cache[name] = BLOCKS[name]()
            body = cache[name]
            if not same(match.group("body"), body):
                diff = "".join(difflib.unified_diff(match.group("body").splitlines(True), body.splitlines(True),
                                                    "quoted", "fresh", n=0))
                stale.append(f"{path.relative_to(ROOT)}: block {name} is stale\n{diff}")
            return match.group(1) + body + match.group(4)

        new = BLOCK.sub(fresh_body, text)
        if not check and new != text:
            path.write_text(new, encoding="utf-8")
    return stale


def screenshot(path: Path = SCREENSHOT) -> None:
    """The page after uploading examples/camera.jpg and clicking the caption's
    last word, from the real page (app served here, headless Chromium)."""
    import torch
    from playwright.sync_api import sync_playwright

    from showtell.webapp import build_demo, free_port, launch, threads_per_request

    torch.set_num_threads(threads_per_request())  # as app.py does
    demo = build_demo(_captioner())
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#caption-btn")
            page.locator("#photo input[type=file]").set_input_files(str(ROOT / "examples" / "camera.jpg"))
            page.wait_for_function("document.querySelector('#best-caption textarea').value.trim() !== ''",
                                   timeout=120_000)
            thumbs = page.locator("#attention button.thumbnail-item")
            words = page.locator("#best-caption textarea").input_value().split()
            page.wait_for_function(f"document.querySelectorAll('#attention button.thumbnail-item').length "
                                   f"=== {len(words)}", timeout=60_000)
            thumbs.nth(len(words) - 1).click()
            page.locator("#attention .preview img").first.wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(800)  # let the preview settle
            page.screenshot(path=str(path), full_page=False, type="png")
            browser.close()
    finally:
        demo.close()
    _shrink_png(path)


def _shrink_png(path: Path) -> None:
    """Keep the committed screenshot small: 256 colours (octree keeps the
    heatmap's hues) at 0.75 of the size."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a quoted block is stale")
    p.add_argument("--no-screenshot", action="store_true", help="leave docs/screenshot-attention.png as it is")
    p.add_argument("--quick", action="store_true",
                   help=f"leave out the blocks that take minutes ({', '.join(sorted(SLOW))}); --check does "
                        "unless --all")
    p.add_argument("--all", action="store_true", help="--check: the slow blocks too")
    args = p.parse_args(argv)
    skip = SLOW if args.quick or (args.check and not args.all) else set()
    stale = regenerate(check=args.check, skip=skip)
    if args.check:
        for s in stale:
            print(s, file=sys.stderr)
        print(f"{len(stale)} stale block(s)" if stale else "README.md and docs/ are current")
        return 1 if stale else 0
    print(f"rewrote {len(stale)} block(s)")
    if not args.no_screenshot:
        screenshot()
        print(f"wrote {SCREENSHOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the checkout's showtell, wherever the script is run from
    sys.exit(main())

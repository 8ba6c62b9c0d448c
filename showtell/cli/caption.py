"""``showtell caption``: caption photos and folders of photos with a
:class:`~showtell.captioner.Captioner`, printing results batch by batch."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from ..defaults import BEAM_SIZE, GUIDANCE_FALLBACK, GUIDANCE_THRESHOLD, MAX_LEN
from .common import (DEVICE_HELP, FAILED, OK, USAGE, UsageError, add_decoder_precision, add_encoder_runtime,
                     add_guidance_flags, add_length_penalty, check_checkpoint_file, check_device, check_int8_device,
                     decode_options, guidance_option, length_penalty_option, positive, printable)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
BATCH_SIZE = 32  # photos decoded together: results are printed batch by batch

SUMMARY = "caption photos, or every photo in a folder"
DESCRIPTION = ("Caption photos, or every photo in a folder (by extension: "
               + " ".join(IMAGE_EXTENSIONS) + "). A caption the model is not sure of ends with "
               "'(not sure)'. A file that cannot be captioned (missing, unreadable, not an image) is "
               f"reported and the others still captioned. Exit status: {OK} every image captioned; {FAILED} "
               "some image could not be, or the work failed (e.g. a corrupt checkpoint); "
               f"{USAGE} the command line is wrong (a flag out of range, no such checkpoint), found before any "
               "work starts.")


def fill_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("images", nargs="+", help="image files and folders of images")
    p.add_argument("--recursive", "-r", action="store_true", help="also the images in folders within folders")
    p.add_argument("--checkpoint", default=None, help="a trained model (default: the bundled one)")
    p.add_argument("--beam-size", type=int, default=BEAM_SIZE,
                   help=f"captions kept at each step of beam search; 1 = greedy (default {BEAM_SIZE})")
    p.add_argument("--n-best", type=int, default=1,
                   help="captions per image, best first, each with the score it is ranked by; at most "
                        "--beam-size (a larger value is an error, as on the web page) (default 1)")
    p.add_argument("--max-len", type=int, default=MAX_LEN, help=f"longest caption in words (default {MAX_LEN})")
    add_length_penalty(p)
    p.add_argument("--batch-size", type=positive, default=BATCH_SIZE,
                   help=f"images decoded together; results are printed batch by batch (default {BATCH_SIZE})")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line (JSON Lines), "
                   "with the photo's ImageNet tags and the words that guided its caption")
    add_guidance_flags(p, plain="plain captions: do not make them name what the encoder's ImageNet classifier sees",
                       guided="a caption must name an ImageNet tag at least this probable, 0 < P <= 1 "
                              f"(default: the model's own; {GUIDANCE_THRESHOLD} for a model without one)",
                       fallback="a guided caption whose log-probability per word falls more than F below the "
                                "unguided one's is set aside for it; 'none' keeps every guided caption "
                                f"(default: the model's own; {GUIDANCE_FALLBACK} for a model without one)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    add_encoder_runtime(p)
    add_decoder_precision(p, "a few captions")
    p.add_argument("--mirror-average", action="store_true",
                   help="caption from each photo's features averaged with its mirror image's "
                        "(test-time augmentation: twice the encoder's work)")
    p.add_argument("--attention", metavar="OUT_DIR", default=None,
                   help="also write where the model looked for each word: OUT_DIR/NAME_NN_WORD.png per word "
                        "and OUT_DIR/NAME_grid.png (NAME-2, NAME-3... for later photos of the same name; needs a "
                        "show_attend_tell model, as the bundled one is)")
    return p


def get_parser(prog: str = "python -m showtell caption") -> argparse.ArgumentParser:
    """The flags of ``showtell caption``."""
    return fill_parser(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def caption_lines(path: str, captions) -> list[str]:
    """The text output of one image: ``PATH<TAB>caption`` for the best caption,
    or with ``--n-best`` one line per caption, ``PATH<TAB>score<TAB>caption``,
    the score being what the captions are ranked by (log-probability per word
    at the default length penalty). A caption the model is not sure of ends
    with ``(not sure)`` (showtell.confidence)."""
    from ..confidence import with_mark

    if len(captions) == 1:
        return [f"{printable(path)}\t{with_mark(captions[0].text, captions[0].confidence)}"]
    return [f"{printable(path)}\t{c.score:.3f}\t{with_mark(c.text, c.confidence)}" for c in captions]


def caption_json(path: str, captions) -> dict:
    """The ``--json`` line of one image: its captions (best first, each with
    the score it was ranked by and its summed log-probability), how sure the
    model is of the best one (the web API's ``confidence``), the ImageNet word
    tags of the photo and the words its captions had to use."""
    first = captions[0]
    return {"image": path,
            "captions": [{"caption": c.text, "score": round(c.score, 4), "logprob": round(c.logprob, 4),
                          "sure": c.confidence.sure, "satisfied": c.satisfied,
                          "set_aside": c.set_aside} for c in captions],
            "confidence": first.confidence.as_dict(),
            "tags": [{"words": list(t.words), "prob": round(t.prob, 4), "classes": list(t.classes)}
                     for t in first.tags],
            "required": [list(words) for words in first.required]}


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand_images(paths: Sequence[str], recursive: bool = False) -> list[str | tuple[str, str]]:
    """``paths`` with each folder replaced by its image files (by extension,
    sorted; with ``recursive`` also those in subfolders). Files are kept as
    given, whatever their name: the caller asked for them. A folder with no
    image, or a path that does not exist, becomes ``(path, problem)``."""
    out: list[str | tuple[str, str]] = []
    for path in paths:
        if not os.path.lexists(path):  # reported at once, like an unreadable image (exit status 1)
            out.append((path, f"{path}: no such file"))
            continue
        if not os.path.isdir(path):
            out.append(path)
            continue
        if recursive:
            found = []
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                found += [os.path.join(folder, f) for f in sorted(files) if is_image_name(f)]
        else:
            found = [os.path.join(path, f) for f in sorted(os.listdir(path))
                     if is_image_name(f) and os.path.isfile(os.path.join(path, f))]
        if found:
            out += found
        else:
            where = "in it or its subfolders" if recursive else "in it (--recursive also looks in subfolders)"
            out.append((path, f"{path}: a folder with no image files {where}"))
    return out


def run(args: argparse.Namespace) -> int:
    from ..captioner import MAX_BATCH_SIZE

    device = check_device(args.device)
    if args.batch_size > MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {args.batch_size}")
    options = dict(beam_size=args.beam_size, n_best=args.n_best, max_len=args.max_len, **guidance_option(args),
                   **length_penalty_option(args))
    decode_options(**options)
    check_int8_device(args.decoder_precision == "int8", device, "--decoder-precision int8")
    if args.checkpoint:
        check_checkpoint_file(args.checkpoint)
    if args.attention is not None and os.path.exists(args.attention) and not os.path.isdir(args.attention):
        raise UsageError(f"--attention {args.attention}: is a file; give a folder for the overlay images")
    entries = expand_images(args.images, args.recursive)
    paths = [e for e in entries if isinstance(e, str)]
    failed = 0

    def report(path: str, problem: Any) -> None:
        nonlocal failed
        failed += 1
        if args.json:
            print(json.dumps({"image": path, "error": str(problem)}), flush=True)
        else:
            print(f"error: {printable(str(problem))}", file=sys.stderr)

    stems: dict[str, str] = {}  # overlay name -> the photo it shows

    def overlay_stem(path: str) -> str:
        """The overlays' file name stem: the photo's name, with -2, -3... when an
        earlier photo (another folder's photo.jpg, or photo.png) has it."""
        base = _safe_stem(path)
        stem, n = base, 1
        while stems.setdefault(stem, path) != path:
            n += 1
            stem = f"{base}-{n}"
        return stem

    for e in entries:
        if not isinstance(e, str):
            report(*e)
    if not paths:
        return FAILED

    from tqdm.auto import tqdm

    from ..captioner import Captioner
    from ..images import ImageError

    captioner = Captioner(args.checkpoint, device=device, batch_size=args.batch_size, runtime=args.encoder_runtime,
                          mirror_average=args.mirror_average, decoder_precision=args.decoder_precision)
    if args.attention is not None and not captioner.model.decoder.has_attention:
        raise UsageError(f"--attention: this model's decoder ({captioner.model.cfg.decoder}) has no attention "
                         f"to show; it needs a show_attend_tell model (the bundled model is one)")
    # A bar on stderr only for a terminal and more than one batch, so stdout stays pure results.
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr,
               disable=True if len(paths) <= args.batch_size else None, leave=False)
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        for path, result in zip(chunk, captioner.caption_each(chunk, **options)):
            if isinstance(result, ImageError):
                report(path, result)
                continue
            if args.attention is not None:
                _write_attention(captioner, path, args.attention, options, overlay_stem(path))
            if args.json:
                print(json.dumps(caption_json(path, result)))
            else:
                print("\n".join(caption_lines(path, result)))
        sys.stdout.flush()  # a long folder streams its results batch by batch
        bar.update(len(chunk))
    bar.close()
    return FAILED if failed else OK


def _safe_stem(path: str) -> str:
    """A photo's name without its extension, fit for a file name (no control
    characters, no undecodable bytes)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join("_" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xDC80 <= ord(c) <= 0xDCFF else c
                   for c in stem) or "_"


def _write_attention(captioner: Any, path: str, out_dir: str, options: dict, stem: str) -> None:
    """Write the per-word attention overlays of one (readable) image into ``out_dir`` as ``stem``_..."""
    from ..images import load_image
    from ..overlay import write_attention

    opts = {k: v for k, v in options.items() if k != "n_best"}  # explain() shows the best caption
    explanation = captioner.explain(path, **opts)
    photo = load_image(path, max_bytes=captioner.max_image_bytes)
    write_attention(photo, explanation.words, explanation.attention, out_dir, stem)

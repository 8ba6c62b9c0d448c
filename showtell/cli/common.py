"""What the commands share: exit statuses and the one error handler, the
checks of what a command was given (device, checkpoint, output file, dataset
path), output escaping, and the decoding flags.

Nothing here imports torch at module level: ``--help`` and the flags' checks
come before any slow import.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import zipfile
from typing import Callable, Sequence

from ..config import DataConfig
from ..datasets import DatasetError, resolve_sources
from ..defaults import DECODER_PRECISION, DECODER_PRECISIONS, ENCODER_RUNTIMES, LENGTH_PENALTY
from ..runfolder import RunFolderError

# Exit statuses (docs/command-line.md).
OK = 0
FAILED = 1  # the work failed: an image that could not be captioned, an unreadable checkpoint
USAGE = 2  # the command line is wrong, found before any work starts (argparse's own status too)
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
CLOSED_PIPE = 128 + 13  # stdout's reader went away: what a process killed by SIGPIPE reports

DEVICE_HELP = "cpu, cuda, cuda:1, mps (default: cuda when available)"
CACHE_HELP = "feature cache (default: $SHOWTELL_CACHE or ~/.cache/showtell)"


class UsageError(ValueError):
    """A command line that cannot work (a bad flag value, a missing file, an
    unavailable device), found before any work starts: exit status 2."""


# --- running a command --------------------------------------------------------------


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                command: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv`` and run ``command``; returns the exit status. Known
    problems print one line, ``error: ...``; a bug keeps its traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or argparse's own usage error (2)
        return e.code if isinstance(e.code, int) else USAGE
    try:
        return command(args)
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if isinstance(e, UsageError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return USAGE
        if isinstance(e, _expected_errors()) or (isinstance(e, OSError) and e.errno in _DISK_ERRNOS):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return FAILED
        raise


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # a full or read-only disk is no bug either


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a problem with the user's input or machine, not a bug."""
    import torch

    from ..checkpoint import CheckpointError
    from ..images import ImageError

    return (CheckpointError, DatasetError, ImageError, RunFolderError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, FloatingPointError, torch.OutOfMemoryError)


def _quiet_closed_pipe() -> int:
    """After stdout's reader went away (``showtell caption DIR | head -1``):
    point stdout at /dev/null so the exit's flush is silent, and report what a
    process killed by SIGPIPE does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor (tests)
        pass
    return CLOSED_PIPE


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` safe to print as one field of a line: control characters as
    \\t, \\n, \\r or \\xNN (a file name with a newline or a tab would break
    the tab-separated output), and the undecodable bytes of a file name
    (surrogate escapes) as \\xNN. Text without either is unchanged."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


# --- checks of what a command was given -------------------------------------------


def check_device(name: str | None) -> str:
    """The device ``--device name`` asks for, checked to exist on this machine
    (default: cuda when available, else cpu)."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        available, count = torch.cuda.is_available(), torch.cuda.device_count
    elif dev.type == "mps":
        available, count = torch.backends.mps.is_available(), lambda: 1
    else:
        backend = getattr(torch, dev.type, None)
        available = callable(getattr(backend, "is_available", None)) and backend.is_available()
        count = getattr(backend, "device_count", lambda: 1)
    if not available:
        raise UsageError(f"--device {name}: no {dev.type} device is available on this machine "
                         f"(use --device cpu, or leave --device out)")
    if dev.index is not None and dev.index >= count():
        raise UsageError(f"--device {name}: this machine has {count()} {dev.type} device(s), "
                         f"numbered from {dev.type}:0")
    return str(dev)


def is_torch_file(path: str) -> bool:
    """Whether ``path`` can be a ``torch.save`` file at all: a zip archive
    (torch >= 1.6) or a legacy pickle (first byte 0x80, the protocol marker).
    An image, a text file or an empty file is neither."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _what_file(path: str) -> str:
    """A few words on what a file that is not a checkpoint looks like."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return f"it is a {img.format} image"
    except (UnidentifiedImageError, OSError):
        return "it was not written by torch.save"


def check_checkpoint_file(path: str) -> None:
    """Refuse, before loading anything, a path that cannot be a checkpoint."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a checkpoint file")
    try:
        torch_file = is_torch_file(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if not torch_file:
        raise UsageError(f"{path}: not a showtell checkpoint ({_what_file(path)})")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output file that could not be written (a folder, or under a file)."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    folder = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {folder} (permission denied)")


def dataset_sources(cfg: DataConfig):
    """The datasets a config names, each told by what its path holds; a path
    that is none is a :class:`UsageError`."""
    try:
        return resolve_sources(cfg)
    except DatasetError as e:
        raise UsageError(str(e)) from None


def coco_splits_message(split: str) -> str:
    return (f"the coco dataset has no {split} split: the official captions files give a train split "
            f"(--annotations) and a val split (--val-annotations); use the val split, or --dataset karpathy "
            f"with dataset_coco.json for the standard train/val/test split")


# --- flag values --------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# --- decoding flags (caption, evaluate, compare) ------------------------------------


def add_length_penalty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help=f"rank beam hypotheses by logprob / length**A (default {LENGTH_PENALTY:g}, as caption(); "
                        f"0: the plain sum)")


def length_penalty_option(args: argparse.Namespace) -> dict:
    """The length_penalty that --length-penalty asks for ({} = the default)."""
    return {} if args.length_penalty is None else {"length_penalty": args.length_penalty}


def add_guidance_flags(p: argparse.ArgumentParser, plain: str, guided: str, fallback: str) -> None:
    """--no-guidance (help ``plain``) or --guidance-threshold P (help ``guided``),
    and --guidance-fallback F (help ``fallback``)."""
    guidance = p.add_mutually_exclusive_group()
    guidance.add_argument("--no-guidance", action="store_true", help=plain)
    guidance.add_argument("--guidance-threshold", type=float, default=None, metavar="P", help=guided)
    p.add_argument("--guidance-fallback", type=_fallback, default=None, metavar="F", help=fallback)


def _fallback(text: str):
    """--guidance-fallback's value: a number, or 'none' (kept as the string; guidance_option makes it None)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (log-probability per word) or 'none', got {text!r}") from None


def guidance_option(args: argparse.Namespace) -> dict:
    """The guidance_threshold and guidance_fallback that --no-guidance /
    --guidance-threshold / --guidance-fallback ask for ({} = the model's defaults)."""
    out = {}
    if args.no_guidance:
        out["guidance_threshold"] = None
    elif args.guidance_threshold is not None:
        out["guidance_threshold"] = args.guidance_threshold
    if args.guidance_fallback is not None:
        out["guidance_fallback"] = None if args.guidance_fallback == "none" else args.guidance_fallback
    return out


def decode_options(**options):
    """``DecodeOptions(**options)``; a value it refuses is a
    :class:`UsageError` naming the flag (beam_size -> --beam-size)."""
    from ..decoding import DecodeOptions

    try:
        return DecodeOptions(**options)
    except (TypeError, ValueError) as e:
        message = str(e)
        for name in options:
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(message) from e


def add_encoder_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder-runtime", choices=ENCODER_RUNTIMES, default="auto",
                   help="what runs the encoder: auto (ONNX Runtime on a CPU where installed: faster captions, "
                        "about 0.5 s more to load), torch, onnxruntime")


def add_decoder_precision(p: argparse.ArgumentParser, what: str) -> None:
    """--decoder-precision auto|float32|int8 (help: ``what`` may differ in int8)."""
    p.add_argument("--decoder-precision", choices=DECODER_PRECISIONS, default=DECODER_PRECISION,
                   help=f"the decoder's arithmetic: auto (the default, as caption(): int8 on a CPU, else float32), "
                        f"float32 (exact) or int8 (the decoder reads a quarter of the bytes, about twice as fast; "
                        f"{what} may differ from float32's, within chance in the three worlds)")


def check_int8_device(int8: bool, device: str, flag: str) -> None:
    """Refuse an int8 decoder (asked for by ``flag``) on another device than a CPU."""
    if int8 and not device.startswith("cpu"):
        raise UsageError(f"{flag}: the int8 decoder runs on a CPU only (this command decodes on {device}); "
                         f"add --device cpu")

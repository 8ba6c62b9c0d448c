"""``showtell export``: a checkpoint stripped to the model alone."""
from __future__ import annotations

import argparse

from .common import OK, check_checkpoint_file, check_output_file

SUMMARY = "strip a checkpoint to the model alone, optionally in fp16"
DESCRIPTION = "Strip a checkpoint to the model alone (no optimizer), optionally in fp16."


def fill_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", help="a checkpoint (best.pt or last.pt)")
    p.add_argument("output", help="where to write the model")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision (half the size)")
    return p


def get_parser(prog: str = "python -m showtell export") -> argparse.ArgumentParser:
    """The flags of ``showtell export``."""
    return fill_parser(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    check_checkpoint_file(args.checkpoint)
    check_output_file(args.output, "output")
    from ..checkpoint import read_checkpoint, save_checkpoint
    from ..model import CaptionModel

    ckpt = read_checkpoint(args.checkpoint)
    model = CaptionModel.from_checkpoint(ckpt)
    # The model alone (no training state), with what was measured of it.
    save_checkpoint(model.record(ckpt.data_config, ckpt.train_config, half=args.fp16, scores=ckpt.scores,
                                 dataset_scores=ckpt.dataset_scores, calibration=ckpt.calibration), args.output)
    print(f"wrote {args.output}")
    return OK

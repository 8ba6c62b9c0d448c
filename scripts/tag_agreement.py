"""How far a fine-tuned encoder's ImageNet tags (what guided captioning reads)
moved from the untuned encoder's: the top tag of each of the first N
coco-2733 photos, by both.

    python scripts/tag_agreement.py runs/joint-w2-mls-ft/best.pt --photos 100
"""
import argparse
import glob
import os

import torch

from showtell.checkpoint import load_checkpoint
from showtell.images import load_image
from showtell.model import CaptionModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tuned", help="checkpoint whose encoder's last stage was fine-tuned")
    p.add_argument("--baseline", default=os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt"),
                   help="checkpoint with the untuned encoder (default: the bundled model)")
    p.add_argument("--images", default=os.path.join(ROOT, "..", "shared", "data", "coco-2733", "images"))
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--sure", type=float, default=0.3, help="also count tags at least this probable")
    args = p.parse_args()
    tuned = CaptionModel.from_checkpoint(load_checkpoint(args.tuned), "cpu").eval()
    base = CaptionModel.from_checkpoint(load_checkpoint(args.baseline), "cpu").eval()
    paths = sorted(glob.glob(os.path.join(args.images, "*")))[:args.photos]
    same = sure = same_sure = 0
    with torch.no_grad():
        for path in paths:
            x = base.preprocessing(load_image(path)).unsqueeze(0)
            a = base.classify(base.encoder(x).pooled).softmax(-1)[0]
            b = tuned.classify(tuned.encoder(x).pooled).softmax(-1)[0]
            agree = int(a.argmax() == b.argmax())
            same += agree
            if a.max() >= args.sure:
                sure += 1
                same_sure += agree
    print(f"top tag kept on {same} of {len(paths)} photos; on {same_sure} of the {sure} "
          f"whose untuned tag was at least {args.sure:.0%} sure")


if __name__ == "__main__":
    main()

"""What follows scripts/get_coco.sh: train.py --dataset karpathy on COCO's
layout (trainYYYY/, valYYYY/, dataset_coco.json), restval counted as train;
on a generated COCO-format set and on the real coco-mini photos."""
import collections
import json
import os
import subprocess
import sys

from showtell.config import DataConfig
from showtell.datasets import load_split
from synthetic import make_karpathy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--encoder", "resnet18", "--encoder-weights", "none", "--embed-dim", "16", "--hidden-dim", "16",
         "--attention-dim", "16", "--decoder", "show_attend_tell", "--min-word-count", "2", "--epochs", "1",
         "--batch-size", "64", "--no-progress"]


def _train(ann, image_root, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "karpathy", "--annotations", ann,
           "--image-root", image_root, "--out", str(out), *SMALL, *extra]
    run = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_train_on_a_generated_coco_format_set_counts_restval_as_train(tmp_path):
    ann, root = make_karpathy_set(tmp_path / "coco", {"train": 120, "restval": 40, "val": 20, "test": 20})
    cfg = DataConfig(dataset="karpathy", annotations=ann, image_root=root)
    assert [len(load_split(cfg, s)) for s in ("train", "val", "test")] == [160, 20, 20]
    assert load_split(cfg, "val")[0].path.startswith(os.path.join(root, "val2014"))
    out = _train(ann, root, tmp_path / "run")
    assert "160 images, 800 captions per epoch" in out
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train_loss"] > 0
    # --max-images caps every split: a smoke run over the same files.
    out = _train(ann, root, tmp_path / "smoke", "--max-images", "30")
    assert "30 images, 150 captions per epoch" in out


def test_train_on_coco_mini_in_karpathys_layout(tmp_path, coco_mini):
    """The 80 real COCO photos of coco-mini, described by a dataset_coco.json
    as get_coco.sh leaves it (train / restval / val)."""
    coco = json.load(open(os.path.join(coco_mini, "annotations", "captions_train2017.json")))
    captions = collections.defaultdict(list)
    for a in coco["annotations"]:
        captions[a["image_id"]].append(a["caption"])
    images = []
    for i, im in enumerate(sorted(coco["images"], key=lambda im: im["id"])):
        split = "train" if i < 50 else "restval" if i < 65 else "val"
        images.append({"filepath": "train2017", "filename": im["file_name"], "cocoid": im["id"], "split": split,
                       "sentences": [{"raw": c} for c in captions[im["id"]]]})
    ann = tmp_path / "dataset_coco.json"
    ann.write_text(json.dumps({"dataset": "coco", "images": images}))
    out = _train(str(ann), coco_mini, tmp_path / "run")
    assert "65 images, 325 captions per epoch" in out
    assert (tmp_path / "run" / "best.pt").is_file()

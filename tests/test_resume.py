"""A training run killed with SIGKILL and restarted with --resume finishes its
planned epochs and ends with the same model as a run never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from showtell.checkpoint import load_checkpoint
from showtell.cli import get_train_parser
from showtell.cli.config_flags import config_from_args as _config_from_args
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import read_flickr8k
from showtell.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 25


def _karpathy_file(tmp_path, flickr8k_root):
    """A tiny dataset in Karpathy's schema over real Flickr8k photos."""
    train_items = read_flickr8k(flickr8k_root, "train")[:12]
    val_items = read_flickr8k(flickr8k_root, "val")[:4]
    images = [{"filename": it.image_id, "split": split, "imgid": i,
               "sentences": [{"raw": c, "tokens": c.lower().split()} for c in it.captions]}
              for i, (split, it) in enumerate([("train", x) for x in train_items] + [("val", x) for x in val_items])]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return str(path)


def _args(annotations, flickr8k_root, out, cache, weights="none"):
    return ["--out", str(out), "--cache-dir", str(cache), "--no-progress",
            "--dataset", "karpathy", "--annotations", annotations, "--image-root", os.path.join(flickr8k_root, "Images"),
            "--encoder", "resnet18", "--encoder-weights", weights, "--embed-dim", "16", "--hidden-dim", "16",
            "--min-word-count", "1", "--epochs", str(EPOCHS), "--batch-size", "8", "--checkpoint-every", "1",
            "--early-stop-patience", "1000", "--max-decode-len", "8"]


def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path, flickr8k_root):
    ann = _karpathy_file(tmp_path, flickr8k_root)
    cache = tmp_path / "cache"
    killed = tmp_path / "killed"
    # Encoder weights from a file: checkpoints name them instead of holding them,
    # so each of the ~200 saves writes the decoder alone (not 47 MB of ResNet-18).
    import torchvision

    weights = str(tmp_path / "resnet18.pt")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cmd = [sys.executable, os.path.join(ROOT, "train.py")] + _args(ann, flickr8k_root, killed, cache, weights)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = killed / "last.pt"
    # A bound on a hang, not a speed test: on 2 loaded cores the start (imports,
    # features) alone has taken over 2 minutes.
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if last.exists():
                t = load_checkpoint(str(last))["training"]
                if t["epoch"] >= 3 and t["step"] > 0:  # mid-epoch, a few epochs in
                    break
            assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read().decode()
            time.sleep(0.05)
        else:
            raise AssertionError("no mid-epoch checkpoint appeared in 600 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(str(last))["training"]
    assert at_kill["epoch"] < EPOCHS

    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming from" in out.stdout
    final = load_checkpoint(str(last))
    assert final["training"]["epoch"] == EPOCHS and final["training"]["finished"]
    assert final["encoder"] is None and final["encoder_weights_path"] == weights
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))  # each epoch once, none lost

    # The same run without interruption, in-process, ends with identical weights.
    args = get_train_parser().parse_args(_args(ann, flickr8k_root, tmp_path / "straight", cache, weights))
    train(_config_from_args(ModelConfig, args), _config_from_args(DataConfig, args),
          _config_from_args(TrainConfig, args), str(tmp_path / "straight"), encoder_weights=weights,
          cache_dir=str(cache), progress=False, log=lambda s: None)
    straight = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    for k, v in straight["decoder"].items():
        assert torch.allclose(v, final["decoder"][k], atol=1e-6), k
    assert [r["train_loss"] for r in log] == [r["train_loss"] for r in straight["training"]["history"]]


def test_fine_tuning_trains_only_the_encoders_last_stage(tmp_path, flickr8k_root):
    ann = _karpathy_file(tmp_path, flickr8k_root)
    args = _args(ann, flickr8k_root, tmp_path / "ft", tmp_path / "cache")
    args[args.index("--epochs") + 1] = "1"
    args = get_train_parser().parse_args(args + ["--fine-tune-encoder", "--checkpoint-every", "0"])
    torch.manual_seed(0)
    from showtell.encoders import build_encoder

    before = build_encoder("resnet18", weights=None).state_dict()  # what train() builds with seed 0
    train(_config_from_args(ModelConfig, args), _config_from_args(DataConfig, args),
          _config_from_args(TrainConfig, args), str(tmp_path / "ft"), encoder_weights=None,
          cache_dir=str(tmp_path / "cache"), progress=False, log=lambda s: None)
    after = load_checkpoint(str(tmp_path / "ft" / "best.pt"))["encoder"]
    changed = {k.split(".")[1] for k, v in after.items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"7"}  # body index 7 is layer4, the last stage
    assert not (tmp_path / "cache" / "features").exists() or not any(
        "train" in d for d in os.listdir(tmp_path / "cache" / "features"))  # no stale cache of a changing encoder


def test_train_command_on_real_coco_annotations(tmp_path, coco_mini):
    """train.py end to end on the official COCO format (the coco-mini slice
    serves as both train and val here: it has a train file only)."""
    ann = os.path.join(coco_mini, "annotations", "captions_train2017.json")
    images = os.path.join(coco_mini, "train2017")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "coco", "--annotations", ann,
           "--image-root", images, "--val-annotations", ann, "--val-image-root", images,
           "--out", str(tmp_path / "coco"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
           "--encoder", "resnet18", "--encoder-weights", "none", "--embed-dim", "16", "--hidden-dim", "16",
           "--min-word-count", "2", "--epochs", "2", "--batch-size", "32", "--val-max-images", "10"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "80 images, 400 captions" in out.stdout
    assert out.stdout.count("val BLEU-1..4") == 2
    best = load_checkpoint(str(tmp_path / "coco" / "best.pt"))
    assert best["data_config"]["dataset"] == "coco" and len(best["vocab"]) > 4

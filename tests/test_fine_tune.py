"""Fine-tuning the encoder's last stage on cached trunk features: the trunk and
the last stage make the whole encoder, the trunk's features are cached once,
and --init-from honours --fine-tune-encoder (a cross-entropy model's encoder
tuned afterwards)."""
import os

import pytest
import torch
import torchvision

from showtell.checkpoint import load_checkpoint
from showtell.cli import get_train_parser
from showtell.cli.config_flags import config_from_args
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.encoders import build_encoder
from showtell.training import train
from test_resume import _args, _karpathy_file


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_trunk_then_last_stage_is_the_whole_encoder(name):
    torch.manual_seed(0)
    encoder = build_encoder(name, weights="default" if name.startswith("efficientnet") else None)
    x = torch.randn(2, 3, 224, 224)
    trunk = encoder.trunk()
    with torch.no_grad():
        whole = encoder(x)
        rows = trunk(x).spatial
        again = encoder.from_trunk(rows)
        folded = trunk.for_inference()(x.contiguous(memory_format=torch.channels_last)).spatial
    assert rows.shape[-1] == trunk.feature_dim and rows.shape[-1] != encoder.feature_dim
    assert torch.equal(again.pooled, whole.pooled) and torch.equal(again.spatial, whole.spatial)
    assert again.grid == whole.grid
    assert torch.allclose(folded, rows, atol=1e-3)  # what the cache computes
    assert trunk.name == f"{name}.trunk" and trunk.weights_id == encoder.weights_id
    with pytest.raises(ValueError, match="not a square map"):
        encoder.from_trunk(rows[:, :-1])


def _run(argv, out, weights):
    args = get_train_parser().parse_args(argv)
    return train(config_from_args(ModelConfig, args), config_from_args(DataConfig, args),
                 config_from_args(TrainConfig, args), str(out), init_from=args.init_from, encoder_weights=weights,
                 cache_dir=args.cache_dir, progress=False, log=lambda s: None)


def test_init_from_fine_tunes_the_last_stage_on_cached_trunk_features(tmp_path, flickr8k_root):
    ann = _karpathy_file(tmp_path, flickr8k_root)
    cache = tmp_path / "cache"
    weights = str(tmp_path / "resnet18.pt")  # named weights: their trunk can be cached
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    base = _args(ann, flickr8k_root, tmp_path / "xe", cache, weights)
    base[base.index("--epochs") + 1] = "1"
    _run(base, tmp_path / "xe", weights)
    start = load_checkpoint(str(tmp_path / "xe" / "best.pt"))
    assert start["encoder"] is None and not start["model_config"]["fine_tune_encoder"]
    entries = set(os.listdir(cache / "features"))
    assert not any(".trunk" in e for e in entries)

    tuned_args = _args(ann, flickr8k_root, tmp_path / "ft", cache, weights)
    tuned_args[tuned_args.index("--epochs") + 1] = "1"
    tuned_args += ["--init-from", str(tmp_path / "xe" / "best.pt"), "--fine-tune-encoder",
                   "--mirror-augment", "0.5", "--lr", "1e-3", "--encoder-lr", "1e-2"]
    summary = _run(tuned_args, tmp_path / "ft", weights)
    assert summary["best_epoch"] == 1
    tuned = load_checkpoint(str(tmp_path / "ft" / "last.pt"))
    assert tuned["model_config"]["fine_tune_encoder"]
    before = build_encoder("resnet18", weights=weights).state_dict()
    changed = {k.split(".")[1] for k, v in tuned["encoder"].items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"7"}  # layer4, the last stage, and nothing before it
    assert any(not torch.equal(v, start["decoder"][k]) for k, v in tuned["decoder"].items())
    # The trunk's features were cached (train, its mirror images, val); nothing else was added.
    added = set(os.listdir(cache / "features")) - entries
    assert len(added) == 3 and all(".trunk" in e for e in added)
    assert sum("-mirrored-" in e for e in added) == 1

"""A frozen encoder whose weights can be rebuilt is named in checkpoints, not
copied into them; rebuilding never downloads without permission."""
import os
import shutil

import pytest
import torch
import torchvision

from showtell.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.model import CaptionModel
from showtell.text import Vocabulary

CFG = ModelConfig(encoder="resnet18", embed_dim=8, hidden_dim=8)
VOCAB = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "dog"])


def _weights_file(path, seed=0):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def _saved(model, path):
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig()), str(path))
    return str(path)


def test_frozen_encoder_from_a_file_is_named_not_stored_and_rebuilt(tmp_path):
    weights = _weights_file(tmp_path / "r18.pt")
    model = CaptionModel.build(CFG, VOCAB, encoder_weights=weights)
    path = _saved(model, tmp_path / "m.pt")
    ck = load_checkpoint(path)
    assert ck["encoder"] is None and ck["encoder_weights"].startswith("file:")
    assert ck["encoder_weights_path"] == weights
    assert os.path.getsize(path) < 1_000_000  # ResNet-18 alone is 47 MB
    loaded = CaptionModel.from_checkpoint(path)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, loaded.encoder.state_dict()[k]), k

    moved = shutil.move(weights, tmp_path / "elsewhere.pt")
    with pytest.raises(CheckpointError, match=r"resnet18 uses the file .*r18\.pt.*encoder_weights=<file>"):
        CaptionModel.from_checkpoint(path)
    assert CaptionModel.from_checkpoint(path, encoder_weights=str(moved)).encoder.weights_id == ck["encoder_weights"]
    other = _weights_file(tmp_path / "other.pt", seed=1)
    with pytest.raises(CheckpointError, match="not the encoder weights this model was trained with"):
        CaptionModel.from_checkpoint(path, encoder_weights=other)


def test_random_and_fine_tuned_encoders_stay_in_the_checkpoint(tmp_path):
    random_init = CaptionModel.build(CFG, VOCAB, encoder_weights=None)  # a seed is no source
    assert load_checkpoint(_saved(random_init, tmp_path / "r.pt"))["encoder"] is not None
    tuned = CaptionModel.build(ModelConfig(encoder="resnet18", embed_dim=8, hidden_dim=8, fine_tune_encoder=True),
                               VOCAB, encoder_weights=_weights_file(tmp_path / "w.pt"))
    assert load_checkpoint(_saved(tuned, tmp_path / "t.pt"))["encoder"] is not None


def test_torchvision_weights_are_never_downloaded_without_permission(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torchvision cache
    downloads = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: downloads.append(a) or {})
    ck = CaptionModel.build(CFG, VOCAB, encoder_weights=None).checkpoint(DataConfig(), TrainConfig())
    ck["encoder"], ck["encoder_weights"] = None, "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(CheckpointError, match=r"encoder resnet18 uses torchvision's ImageNet weights "
                                              r"\(ResNet18_Weights.IMAGENET1K_V1.*allow_download=True"):
        CaptionModel.from_checkpoint(ck)
    assert downloads == []
    with pytest.raises(CheckpointError, match="is not torchvision's ResNet18_Weights.IMAGENET1K_V1"):
        CaptionModel.from_checkpoint(ck, encoder_weights=_weights_file(tmp_path / "w.pt"))
    # Already in torchvision's cache: rebuilt offline, without asking.
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    _weights_file(cached)
    monkeypatch.undo()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = CaptionModel.from_checkpoint(ck)
    assert model.encoder.weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.encoder.body[0].weight, torch.load(cached, weights_only=True)["conv1.weight"])

"""The checkpoint record: version 2 with its content hash, and the one reader
that takes showtell 0.2's version 1 forward (the bundled model is one)."""
import dataclasses
import os
import zipfile

import pytest
import torch

from showtell.checkpoint import (FORMAT_VERSION, Checkpoint, CheckpointError, content_hash, load_checkpoint,
                                 load_resumable, read_checkpoint, save_checkpoint)
from showtell.cli import main
from showtell.config import DECODER_CONFIGS, DataConfig, ModelConfig, TrainConfig
from showtell.defaults import GUIDANCE_FALLBACK, GUIDANCE_THRESHOLD
from showtell.decoders import DECODERS
from showtell.guidance import GuidanceMap
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

from synthetic import make_karpathy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt")
WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()

# asdict() of showtell 0.2's DataConfig() and TrainConfig(), as its checkpoints hold them.
DATA_CONFIG_02 = {"dataset": "flickr8k", "data_root": "../shared/data/flickr8k", "image_root": "", "annotations": "",
                  "val_annotations": "", "val_image_root": "", "train_split": "train", "val_split": "val",
                  "min_word_count": 5, "max_caption_len": 40, "max_images": 0}
TRAIN_CONFIG_02 = {"epochs": 10, "batch_size": 128, "lr": 0.001, "encoder_lr": 0.0001, "weight_decay": 0.0,
                   "grad_clip": 5.0, "lr_decay": 0.8, "lr_decay_every": 3, "early_stop_patience": 4,
                   "select_metric": "cider", "val_max_images": 0, "max_decode_len": 20, "seed": 0,
                   "checkpoint_every": 0, "amp": True, "objective": "xe", "label_smoothing": 0.0,
                   "attention_reg": 0.0, "scheduled_sampling": 0.0, "scheduled_sampling_ramp": 5,
                   "scst_samples": 5, "scst_baseline": "mean"}


def _tiny(decoder: str = "show_tell") -> CaptionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8)
    return CaptionModel.build(cfg, Vocabulary(WORDS), encoder_weights=None).eval()


def _checkpoint_02(model: CaptionModel, **extra) -> dict:
    """What showtell 0.2's CaptionModel.checkpoint wrote: format version 1,
    every decoder's settings in model_config, no content hash."""
    def state(module):
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    settings = {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 8, "num_layers": 1, "dropout": 0.5}
    return {"format": "showtell", "format_version": 1,
            "model_config": {"encoder": "resnet18", "decoder": model.cfg.decoder, **settings,
                             "fine_tune_encoder": False},
            "data_config": dict(DATA_CONFIG_02), "train_config": dict(TRAIN_CONFIG_02),
            "vocab": list(model.vocab.words), "decoder": state(model.decoder), "encoder": state(model.encoder),
            "encoder_weights": model.encoder.weights_id, "guidance": model.guidance.to_dict(), **extra}


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_a_02_checkpoint_loads_forward_and_captions_as_before(tmp_path, decoder):
    model = _tiny(decoder)
    val = {"bleu4": 12.5, "cider": 30.25}
    test = {"beam_size": 3, "guidance_threshold": 0.8, "length_penalty": 1.0, "bleu4": 11.0, "images": 20}
    path = str(tmp_path / "best.pt")
    torch.save(_checkpoint_02(model, val_scores=val, test_scores=test), path)  # 0.2 saved with torch.save

    ck = load_checkpoint(path)
    assert ck["format_version"] == FORMAT_VERSION == 2 and "content_hash" not in ck
    own = {f.name for f in dataclasses.fields(DECODER_CONFIGS[decoder])}
    assert set(ck["model_config"]) == {"encoder", "decoder", "fine_tune_encoder"} | own
    assert ck["val_scores"] == val and ck["test_scores"] == test
    assert ck["data_config"]["min_word_count"] == 5 and ck["train_config"]["select_metric"] == "cider"
    record = read_checkpoint(path)
    assert record.model_config == model.cfg and record.scores == {"val": val, "test": test}

    loaded = CaptionModel.from_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.guidance == model.guidance
    from showtell.decoding import DecodeOptions
    feats = model.encode(torch.randn(2, 3, 64, 64))
    opts = DecodeOptions(beam_size=2, n_best=2, max_len=6)
    assert loaded.generate(feats, opts) == model.generate(feats, opts)

    # A 0.2 last.pt resumes: its training state comes through untouched.
    torch.save(_checkpoint_02(model, training={"epoch": 1, "step": 7, "history": []}), tmp_path / "last.pt")
    assert load_resumable(str(tmp_path / "last.pt"))["training"] == {"epoch": 1, "step": 7, "history": []}
    # Written again, it is version 2 with a hash, and reads back the same.
    save_checkpoint(record, str(tmp_path / "again.pt"))
    raw = torch.load(tmp_path / "again.pt", weights_only=True)
    assert raw["format_version"] == 2 and raw["content_hash"].startswith("sha256:")
    assert read_checkpoint(str(tmp_path / "again.pt")).model_config == model.cfg


def test_the_bundled_model_carries_its_hash_and_exports_with_everything_measured(tmp_path, capsys):
    raw = torch.load(BUNDLED, weights_only=True)
    assert raw["format_version"] == 2 and raw["content_hash"] == content_hash(raw)  # checked on every load
    record = read_checkpoint(BUNDLED)
    assert record.model_config.decoder_config == DECODER_CONFIGS["show_attend_tell"](512, 512, 512, 0.5)
    assert record.scores == {"val": raw["val_scores"], "test": raw["test_scores"]} and record.training is None
    assert set(record.dataset_scores) == {"flickr8k", "coco-2733"}  # its test scores in both worlds

    out = str(tmp_path / "exported.pt")
    assert main(["export", BUNDLED, out, "--fp16"]) == 0
    new = torch.load(out, weights_only=True)
    assert new["format_version"] == 2 and new["content_hash"] == content_hash(new)
    assert new["val_scores"] == raw["val_scores"] and new["vocab"] == raw["vocab"]
    assert new["test_scores"] == raw["test_scores"] and new["dataset_scores"] == raw["dataset_scores"]
    assert new["guidance"] == raw["guidance"] and new["encoder"] is None
    assert new["decoder"].keys() == raw["decoder"].keys()
    for k, v in raw["decoder"].items():  # float16 -> float32 -> float16 is exact
        assert torch.equal(new["decoder"][k], v), k


def _flip_inside_a_tensor(path: str, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of the largest tensor's stored bytes."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 4 * n
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start + info.file_size // 2)
        data = f.read(n)
        f.seek(start + info.file_size // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def test_flipped_bytes_inside_a_tensor_are_a_clear_error_naming_the_file(tmp_path):
    path = str(tmp_path / "model.pt")
    save_checkpoint(_tiny().checkpoint(DataConfig(), TrainConfig()), path)
    assert load_checkpoint(path)["vocab"] == WORDS  # intact, it loads
    _flip_inside_a_tensor(path)
    for load in (load_checkpoint, CaptionModel.from_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{path}: its contents do not match the content hash .*corrupt"):
            load(path)
    assert main(["export", path, str(tmp_path / "out.pt")]) == 1  # one line, no traceback


def test_a_changed_value_outside_the_tensors_is_caught_too(tmp_path):
    path = str(tmp_path / "model.pt")
    save_checkpoint(_tiny().checkpoint(DataConfig(), TrainConfig()), path)
    raw = torch.load(path, weights_only=True)
    assert content_hash(raw) == raw["content_hash"]  # the hash survives a save and a load
    for key, value in (("vocab", WORDS[:-1] + ["zebra"]), ("encoder_weights", "pypi:other"),
                       ("train_config", {**raw["train_config"], "lr": 0.002})):
        torch.save({**raw, key: value}, path)  # the old hash kept
        with pytest.raises(CheckpointError, match="content hash"):
            load_checkpoint(path)


def test_versions_this_showtell_cannot_read_are_named(tmp_path):
    ck = _tiny().checkpoint(DataConfig(), TrainConfig())
    for version in (0, 3, "2"):
        torch.save({**ck, "format_version": version}, tmp_path / "v.pt")
        with pytest.raises(CheckpointError, match=rf"format version {version!r} is not supported .*versions 1 to 2"):
            load_checkpoint(str(tmp_path / "v.pt"))


def test_calibration_and_per_dataset_scores_are_kept_and_checked(tmp_path):
    model = _tiny()
    record = model.record(DataConfig(), TrainConfig(), calibration={"guidance_threshold": 0.8},
                          dataset_scores={"coco": {"test": {"cider": 40.0, "images": 80}}})
    path = str(tmp_path / "m.pt")
    save_checkpoint(record, path)
    back = read_checkpoint(path)
    assert back.calibration == {"guidance_threshold": 0.8}
    assert back.dataset_scores == {"coco": {"test": {"cider": 40.0, "images": 80}}}
    assert back.with_scores("test", {"bleu4": 1.0}).to_dict()["test_scores"] == {"bleu4": 1.0}
    ck = record.to_dict()
    for key, value, message in (("calibration", {"guidance_threshold": float("nan")}, "calibration must map"),
                                ("dataset_scores", {"coco": [1, 2]}, "dataset_scores must map"),
                                ("test_scores", [1, 2], "test_scores must be a dict")):
        save_checkpoint({**ck, key: value}, path)
        with pytest.raises(CheckpointError, match=rf"{path}: {message}"):
            load_checkpoint(path)


def test_restore_or_init_rebuilds_through_from_checkpoint_and_keeps_the_guidance_map(tmp_path):
    from showtell import training

    model = _tiny("show_attend_tell")
    custom = GuidanceMap(model.guidance.names, tuple(("dog",) if n == "tabby" else w
                                                      for n, w in zip(model.guidance.names, model.guidance.words)))
    model.guidance = custom
    path = str(tmp_path / "best.pt")
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig()), path)
    run, _ = training.restore_or_init(ModelConfig(), DataConfig(), TrainConfig(), str(tmp_path / "run"),
                                      resume=False, init_from=path, encoder_weights=None,
                                      device=torch.device("cpu"), train_items_of=lambda cfg: [],
                                      log=lambda s: None)
    assert run.model.guidance == custom and run.model_cfg == model.cfg
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(run.model.decoder.state_dict()[k], v), k


def test_evaluate_store_records_the_split_scores_in_the_checkpoint(tmp_path, monkeypatch, capsys):
    ann, images = make_karpathy_set(str(tmp_path / "data"), {"train": 2, "val": 2, "test": 2}, size=16)
    model = _tiny()
    path = str(tmp_path / "best.pt")
    data_cfg = DataConfig(dataset="karpathy", annotations=ann, image_root=images)
    save_checkpoint(model.record(data_cfg, TrainConfig(), scores={"val": {"bleu4": 5.0}}), path)
    scores = {"bleu4": 9.5, "cider": 20.0, "images": 2, "notes": ["not stored"]}
    monkeypatch.setattr("showtell.evaluation.evaluate_split", lambda *a, **k: dict(scores))
    assert main(["evaluate", path, "--split", "test", "--store", "--no-progress", "--beam-size", "2"]) == 0
    back = read_checkpoint(path)
    assert back.scores == {"val": {"bleu4": 5.0},
                           "test": {"beam_size": 2, "guidance_threshold": GUIDANCE_THRESHOLD,
                                    "guidance_fallback": GUIDANCE_FALLBACK, "length_penalty": 1.0,
                                    "decoder_precision": "int8", "bleu4": 9.5, "cider": 20.0, "images": 2}}
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(back.decoder[k], v), k
    assert isinstance(back, Checkpoint) and back.data_config == data_cfg

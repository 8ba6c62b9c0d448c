"""Every mistake on the command line gets one line naming the problem and a
non-zero exit status, before any slow work (feature extraction, model
loading) starts and before anything is written; a real bug keeps its
traceback. Also: the command list, folder captioning, and the Python API's
option checks."""
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from showtell import cli
from showtell.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
from showtell.cli import expand_images, main, train_main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.decoding import DecodeOptions

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BUNDLED = ROOT / "showtell" / "models" / "showtell-flickr8k.pt"


def _error_line(capsys) -> str:
    """stderr, which must be exactly one 'error: ...' line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if training starts or a model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("slow work started before the mistake was reported")

    monkeypatch.setattr("showtell.training.train", refuse)
    monkeypatch.setattr("showtell.model.CaptionModel.from_checkpoint", refuse)
    monkeypatch.setattr("showtell.captioner.Captioner.__init__", refuse)


@pytest.fixture
def fake_flickr8k(tmp_path):
    """A folder laid out like Flickr8k (the checks look, they do not read)."""
    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    (root / "Flickr8k.token.txt").write_text("x.jpg#0\ta dog\n")
    return root


@pytest.fixture
def fake_coco(tmp_path):
    (tmp_path / "train2017").mkdir()
    for name in ("captions_train2017.json", "captions_val2017.json"):
        (tmp_path / name).write_text("{}")
    return tmp_path


# --- the command list ---------------------------------------------------------------


def test_help_lists_each_command_with_a_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: showtell")
    for command in ("caption", "evaluate", "export", "train"):
        line = next(line for line in out.splitlines() if line.split()[:1] == [command])
        assert len(line.split()) > 3  # the command and what it does


def test_help_does_not_import_torch():
    # Help and the flags' checks come first; torch (seconds to import) only when work starts.
    code = ("import sys\nfrom showtell.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['caption', '--help'], ['evaluate', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import showtell\nassert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert callable(showtell.caption) and 'torch' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_names_the_command_line_offers_are_those_the_registries_build():
    from showtell.decoders import DECODERS
    from showtell.encoders import ENCODERS

    assert sorted(ModelConfig.ENCODERS) == sorted(ENCODERS)
    assert sorted(ModelConfig.DECODERS) == sorted(DECODERS)


def test_a_typo_gets_invalid_choice_and_the_commands(capsys):
    assert main(["capton", "a.jpg"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'capton'" in err and all(c in err for c in ("caption", "evaluate", "export", "train"))
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_each_command_calls_itself_by_the_name_it_was_run_with(capsys):
    assert main(["train", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: showtell train ")
    assert main(["evaluate", "--help"], prog="python -m showtell") == 0
    assert capsys.readouterr().out.startswith("usage: python -m showtell evaluate ")
    assert train_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: train.py ")


# --- train.py -----------------------------------------------------------------------


TRAIN_MISTAKES = {
    # name: (flags, words the message must hold, exit status)
    "coco without val annotations": (["--dataset", "coco", "--annotations", "{coco}/captions_train2017.json",
                                      "--image-root", "{coco}/train2017"], ["--val-annotations", "is needed"], 2),
    "wrong annotations path": (["--dataset", "coco", "--annotations", "{tmp}/captions_trian2017.json",
                                "--image-root", "{coco}/train2017", "--val-annotations",
                                "{coco}/captions_val2017.json"], ["--annotations", "captions_trian2017.json",
                                                                  "no such file"], 2),
    "data root missing": (["--data-root", "{tmp}/flickr8"], ["--data-root", "no such folder"], 2),
    "data root not flickr8k": (["--data-root", "{tmp}"], ["--data-root", "no Flickr8k.token.txt"], 2),
    "unknown dataset": (["--dataset", "cocoo"], ["--dataset", "invalid choice: 'cocoo'", "karpathy"], 2),
    "unknown decoder": (["--decoder", "attention"], ["--decoder", "invalid choice: 'attention'",
                                                     "show_attend_tell"], 2),
    "unknown encoder": (["--encoder", "resnet51"], ["--encoder", "invalid choice", "resnet50"], 2),
    "batch size 0": (["--batch-size", "0"], ["--batch-size", "at least 1", "0"], 2),
    "batch size 2.5": (["--batch-size", "2.5"], ["--batch-size", "invalid int value"], 2),
    "epochs 0": (["--epochs", "0"], ["--epochs", "at least 1"], 2),
    "negative lr": (["--lr", "-0.001"], ["--lr", "above 0"], 2),
    "nan lr": (["--lr", "nan"], ["--lr", "finite"], 2),
    "dropout 1.5": (["--dropout", "1.5"], ["--dropout", "at most"], 2),
    "lr decay 0": (["--lr-decay", "0"], ["--lr-decay"], 2),
    "test split of coco": (["--dataset", "coco", "--annotations", "{coco}/captions_train2017.json",
                            "--image-root", "{coco}/train2017", "--val-annotations", "{coco}/captions_val2017.json",
                            "--test"], ["--test", "no test split", "val split"], 2),
    "device bogus": (["--device", "bogus"], ["--device", "'bogus'", "not a device"], 2),
    "missing encoder weights": (["--encoder-weights", "{tmp}/resnet50.pth"], ["--encoder-weights", "no such file"],
                                2),
    "out is a file": (["--out", "{tmp}/notes.txt"], ["--out", "notes.txt", "is a file"], 2),
    "out under a file": (["--out", "{tmp}/notes.txt/run"], ["--out", "cannot write there"], 2),
    "last.pt is a folder": (["--out", "{tmp}/busy-last"], ["last.pt", "is a folder"], 2),
    "best.pt is a folder": (["--out", "{tmp}/busy-best"], ["best.pt", "is a folder"], 2),
    "resume from a jpeg": (["--out", "{tmp}/jpeg-run", "--resume"], ["last.pt", "not a showtell checkpoint",
                                                                     "JPEG"], 2),
}


@pytest.mark.parametrize("case", list(TRAIN_MISTAKES))
def test_train_mistakes_get_one_line_before_any_work(case, tmp_path, fake_flickr8k, fake_coco, no_heavy_work,
                                                     capsys):
    flags, words, status = TRAIN_MISTAKES[case]
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "busy-last" / "last.pt").mkdir(parents=True)
    (tmp_path / "busy-best" / "best.pt").mkdir(parents=True)
    (tmp_path / "jpeg-run").mkdir()
    shutil.copy(EXAMPLES / "cat.jpg", tmp_path / "jpeg-run" / "last.pt")
    argv = ["--data-root", str(fake_flickr8k), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"] + [f.format(tmp=tmp_path, coco=fake_coco) for f in flags]
    before = sorted(p.name for p in tmp_path.iterdir())

    assert train_main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]  # argparse's own errors come after its usage line
    for word in words:
        assert word in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no feature cache


def test_cuda_on_a_machine_without_a_gpu(tmp_path, fake_flickr8k, no_heavy_work, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert train_main(["--data-root", str(fake_flickr8k), "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "--device cuda: no cuda device is available" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_correct_command_line_passes_the_checks_and_trains(tmp_path, fake_flickr8k, monkeypatch):
    """The checks above are not simply refusing everything."""
    calls = []
    monkeypatch.setattr("showtell.training.train",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or {"best_epoch": 3})
    assert train_main(["--data-root", str(fake_flickr8k), "--out", str(tmp_path / "run"), "--device", "cpu",
                       "--batch-size", "7", "--epochs", "2", "--decoder", "show_attend_tell"]) == 0
    (model_cfg, data_cfg, train_cfg, out), kwargs = calls[0]
    assert (model_cfg.decoder, train_cfg.batch_size, train_cfg.epochs) == ("show_attend_tell", 7, 2)
    assert data_cfg.data_root == str(fake_flickr8k) and kwargs["device"] == "cpu"
    assert os.listdir(out) == []  # created for training; the write test left nothing behind


def test_device_names(monkeypatch):
    assert cli.check_device("cpu") == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert cli.check_device("cuda") == "cuda" and cli.check_device("cuda:0") == "cuda:0"
    with pytest.raises(cli.UsageError, match="has 1 cuda device"):
        cli.check_device("cuda:3")
    with pytest.raises(cli.UsageError, match="not a device name"):
        cli.check_device("gpu0")


# --- evaluate -----------------------------------------------------------------------


def _fake_checkpoint(path: Path, data_cfg: DataConfig) -> Path:
    """A checkpoint file in the real format whose weights are never reached."""
    save_checkpoint({"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": asdict(ModelConfig()),
                     "data_config": asdict(data_cfg), "train_config": asdict(TrainConfig()),
                     "vocab": ["<pad>", "<start>", "<end>", "<unk>"], "decoder": {}, "encoder": None,
                     "encoder_weights": "none"}, str(path))
    return path


def test_evaluate_on_a_jpeg_says_it_is_not_a_checkpoint(no_heavy_work, capsys):
    assert main(["evaluate", str(EXAMPLES / "cat.jpg")]) == 2
    line = _error_line(capsys)
    assert "cat.jpg: not a showtell checkpoint (it is a JPEG image)" in line and "pickled" not in line


@pytest.mark.parametrize("what", ["missing", "folder", "text", "empty"])
def test_evaluate_on_things_that_are_not_checkpoints(what, tmp_path, no_heavy_work, capsys):
    path = {"missing": tmp_path / "best.pt", "folder": tmp_path, "text": ROOT / "README.md",
            "empty": tmp_path / "empty.pt"}[what]
    if what == "empty":
        path.write_bytes(b"")
    assert main(["evaluate", str(path)]) == 2
    expected = {"missing": "no such checkpoint file", "folder": "is a folder", "text": "not a showtell checkpoint",
                "empty": "the file is empty"}[what]
    assert expected in _error_line(capsys)


def test_evaluate_on_a_zip_that_torch_cannot_read(tmp_path, no_heavy_work, capsys):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not a tensor")
    assert main(["evaluate", str(path)]) == 1  # it got past the first look, then failed to load
    assert "model.pt" in _error_line(capsys)


def test_evaluate_test_split_of_a_coco_run_names_the_splits_there_are(tmp_path, fake_coco, no_heavy_work, capsys):
    ckpt = _fake_checkpoint(tmp_path / "coco.pt", DataConfig(
        dataset="coco", annotations=str(fake_coco / "captions_train2017.json"), image_root=str(fake_coco / "train2017"),
        val_annotations=str(fake_coco / "captions_val2017.json")))
    assert main(["evaluate", str(ckpt), "--split", "test"]) == 2
    line = _error_line(capsys)
    assert "--split test" in line and "no test split" in line and "val split (--val-annotations)" in line


def test_evaluate_with_a_stale_dataset_location_says_how_to_override_it(tmp_path, no_heavy_work, capsys):
    ckpt = _fake_checkpoint(tmp_path / "f8k.pt", DataConfig(dataset="flickr8k", data_root=str(tmp_path / "gone")))
    assert main(["evaluate", str(ckpt), "--split", "val"]) == 1
    line = _error_line(capsys)
    assert "gone" in line and "--data-root" in line


@pytest.mark.parametrize("flags, words", [
    (["--beam-size", "0"], ["--beam-size", "at least 1"]),
    (["--max-len", "0"], ["--max-len"]),
    (["--device", "bogus"], ["--device", "bogus"]),
    (["--output", "{tmp}"], ["--output", "is a folder"]),
    (["--output", "{tmp}/notes.txt/captions.json"], ["--output", "is a file, not a folder"]),
])
def test_evaluate_flag_mistakes_come_before_loading(flags, words, tmp_path, no_heavy_work, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["evaluate", str(BUNDLED)] + [f.format(tmp=tmp_path) for f in flags]) == 2
    line = _error_line(capsys)
    assert all(w in line for w in words), line


def test_export_of_a_jpeg(tmp_path, no_heavy_work, capsys):
    assert main(["export", str(EXAMPLES / "cat.jpg"), str(tmp_path / "out.pt")]) == 2
    assert "not a showtell checkpoint" in _error_line(capsys)
    assert not (tmp_path / "out.pt").exists()


# --- caption ------------------------------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--checkpoint", str(EXAMPLES / "cat.jpg")], ["not a showtell checkpoint", "JPEG"]),
    (["--n-best", "5"], ["--n-best", "--beam-size (3)"]),
    (["--beam-size", "0"], ["--beam-size"]),
    (["--device", "bogus"], ["--device"]),
])
def test_caption_mistakes_come_before_loading(flags, words, no_heavy_work, capsys):
    assert main(["caption", str(EXAMPLES / "cat.jpg")] + flags) == 2
    line = _error_line(capsys)
    assert all(w in line for w in words), line


def test_folders_expand_to_their_images_sorted(tmp_path):
    for name in ("b.png", "A.JPG", "c.webp", "notes.txt", "sub/d.jpeg", "sub/deeper/e.tiff"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()  # a folder is never an image, whatever its name
    (tmp_path / "empty").mkdir()
    assert expand_images([str(tmp_path)]) == [str(tmp_path / n) for n in ("A.JPG", "b.png", "c.webp")]
    assert expand_images([str(tmp_path / "sub")], recursive=True) == [
        str(tmp_path / "sub" / "d.jpeg"), str(tmp_path / "sub" / "deeper" / "e.tiff")]
    # Files named on the command line are kept as given, and order is kept.
    assert expand_images([str(tmp_path / "notes.txt"), str(tmp_path / "sub")]) == [
        str(tmp_path / "notes.txt"), str(tmp_path / "sub" / "d.jpeg")]
    (problem,) = expand_images([str(tmp_path / "empty")])
    assert problem[0] == str(tmp_path / "empty") and "no image files" in problem[1]


def test_a_folder_without_images_is_reported_without_loading_the_model(tmp_path, no_heavy_work, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["caption", str(tmp_path)]) == 1
    assert "no image files" in _error_line(capsys)


def test_caption_a_folder_as_json_lines_in_batches(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"not really a jpeg")
    (photos / "SOURCES.md").write_text("not an image, and not picked up")

    assert main(["caption", str(photos), "--json", "--batch-size", "2", "--beam-size", "2"]) == 1  # one failed
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [os.path.basename(r["image"]) for r in records] == ["broken.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"]
    assert "not an image" in records[0]["error"]
    for r in records[1:]:
        assert len(r["captions"]) == 1 and r["captions"][0]["caption"].strip()
        assert math.isfinite(r["captions"][0]["logprob"])
    assert "Traceback" not in err


# --- the Python API -----------------------------------------------------------------


@pytest.mark.parametrize("options, error, name", [
    ({"beam_size": 2.5}, TypeError, "beam_size"),
    ({"beam_size": "5"}, TypeError, "beam_size"),
    ({"beam_size": True}, TypeError, "beam_size"),
    ({"n_best": 1.0}, TypeError, "n_best"),
    ({"max_len": None}, TypeError, "max_len"),
    ({"length_penalty": float("nan")}, ValueError, "length_penalty"),
    ({"length_penalty": float("inf")}, ValueError, "length_penalty"),
    ({"length_penalty": "1"}, TypeError, "length_penalty"),
    ({"ban_unk": 1}, TypeError, "ban_unk"),
    ({"max_len": 0}, ValueError, "max_len"),
])
def test_decode_options_name_the_bad_option(options, error, name):
    with pytest.raises(error, match=name):
        DecodeOptions(**options)


def test_decode_options_take_numpy_integers_and_int_penalties():
    opts = DecodeOptions(beam_size=np.int64(4), n_best=np.int32(2), length_penalty=1)
    assert (opts.beam_size, opts.n_best, opts.length_penalty) == (4, 2, 1)


def test_caption_refuses_a_fractional_beam_before_decoding():
    from showtell import caption

    with pytest.raises(TypeError, match="beam_size"):
        caption(str(EXAMPLES / "cat.jpg"), beam_size=2.5)
    with pytest.raises(ValueError, match="length_penalty"):
        caption(str(EXAMPLES / "cat.jpg"), length_penalty=float("nan"))


def test_configs_name_the_field_and_its_flag():
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) must be at least 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(TypeError, match="epochs"):
        TrainConfig(epochs=True)
    with pytest.raises(ValueError, match="dataset"):
        DataConfig(dataset="cocoo")
    with pytest.raises(ValueError, match="embed_dim"):
        ModelConfig(embed_dim=0)


# --- errors that are bugs -----------------------------------------------------------


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(args):
        raise ValueError("an internal mistake, not the user's")

    monkeypatch.setitem(cli.COMMANDS, "export", cli.COMMANDS["export"][:3] + (buggy,))
    with pytest.raises(ValueError, match="internal mistake"):
        main(["export", "a.pt", "b.pt"])


@pytest.mark.parametrize("argv, words", [
    (["train.py", "--batch-size", "0"], "--batch-size"),
    (["-m", "showtell", "evaluate", "examples/cat.jpg"], "not a showtell checkpoint"),
])
def test_from_a_shell_the_mistake_is_one_line_without_traceback(argv, words, tmp_path):
    done = subprocess.run([sys.executable] + argv + (["--out", str(tmp_path / "run")] if argv[0] == "train.py" else []),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert words in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_length_penalty_flag_is_checked_like_the_option(command, capsys):
    target = str(EXAMPLES / "cat.jpg") if command == "caption" else str(EXAMPLES / "missing.pt")
    assert main([command, target, "--length-penalty", "nan"]) == 2
    assert "--length-penalty must be finite" in capsys.readouterr().err

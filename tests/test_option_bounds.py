"""Every option is bounded, with a clear error naming it (issue 22): in
Python, on the command line and in the web API; a model with NaN weights is an
error naming its checkpoint."""
import pytest
import torch

from showtell.captioner import Captioner
from showtell.checkpoint import CheckpointError, save_checkpoint
from showtell.cli import main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.decoding import DecodeOptions, beam_search
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

WORDS = list(SPECIAL_TOKENS) + "a dog runs on the grass".split()


@pytest.mark.parametrize("options, words", [
    (dict(beam_size=100_000), "beam_size must be at most 100"),
    (dict(beam_size=2**40), "beam_size must be at most 100"),
    (dict(max_len=10**6, min_len=10**6), "max_len must be at most 200"),
    (dict(length_penalty=1e308), "length_penalty must be between -10 and 10"),
    (dict(length_penalty=-1e308), "length_penalty must be between -10 and 10"),
    (dict(n_best=4, beam_size=3), "n_best must be between 1 and beam_size"),
])
def test_decoding_options_are_bounded(options, words):
    with pytest.raises(ValueError, match=words):
        DecodeOptions(**options)


@pytest.mark.parametrize("flag, value", [("hidden_dim", 1_000_000), ("embed_dim", 10**9), ("num_layers", 1000)])
def test_model_sizes_are_bounded(flag, value):
    with pytest.raises(ValueError, match=f"{flag} \\(--{flag.replace('_', '-')}\\) must be at most"):
        ModelConfig(decoder="show_tell", **{flag: value})  # num_layers is show_tell's


@pytest.mark.parametrize("cls, flag, value", [
    (DataConfig, "max_caption_len", 10**9), (TrainConfig, "scst_samples", 1_000_000), (TrainConfig, "seed", 2**64),
    (TrainConfig, "batch_size", 10**7), (TrainConfig, "max_decode_len", 10**6), (TrainConfig, "epochs", 10**9)])
def test_data_and_training_sizes_are_bounded(cls, flag, value):
    with pytest.raises(ValueError, match=f"{flag} \\(--{flag.replace('_', '-')}\\) must be at most"):
        cls(**{flag: value})
    assert getattr(TrainConfig(seed=2**32 - 1), "seed") == 2**32 - 1


@pytest.mark.parametrize("flags, words", [
    (["--hidden-dim", "1000000"], "--hidden-dim) must be at most 16384"),
    (["--max-caption-len", str(10**9)], "--max-caption-len) must be at most 500"),
    (["--scst-samples", "1000000"], "--scst-samples) must be at most 100"),
    (["--seed", str(2**64)], "--seed) must be at most 4294967295"),
])
def test_training_flags_out_of_bounds_are_one_line_before_any_work(flags, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("showtell.training.train", lambda *a, **k: pytest.fail("training started"))
    assert main(["train", "--out", str(tmp_path / "run")] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("flags, words", [
    (["--beam-size", "100000"], "--beam-size must be at most 100"),
    (["--max-len", str(10**6)], "--max-len must be at most 200"),
    (["--length-penalty", "1e308"], "--length-penalty must be between -10 and 10"),
    (["--batch-size", "1000000"], "--batch-size must be at most 4096"),
])
def test_caption_flags_out_of_bounds_are_one_line_before_loading(flags, words, monkeypatch, capsys):
    monkeypatch.setattr("showtell.captioner.Captioner.__init__", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["caption", "examples/cat.jpg"] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return CaptionModel.build(ModelConfig(decoder="show_tell", embed_dim=16, hidden_dim=16), Vocabulary(WORDS),
                              encoder_weights=None)


@pytest.mark.parametrize("penalty", [-10.0, 10.0])
def test_extreme_length_penalties_still_give_n_best_captions(tiny_model, penalty):
    feats = torch.randn(2, tiny_model.encoder.feature_dim)
    v = tiny_model.vocab
    opts = DecodeOptions(beam_size=4, n_best=4, max_len=6, length_penalty=penalty)
    hyps = beam_search(tiny_model.decoder, feats, opts, v.end_id, v.start_id, v.unk_id)
    assert [len(h) for h in hyps] == [4, 4]
    assert all(torch.isfinite(torch.tensor(x.score)) for h in hyps for x in h)


def test_batch_size_zero_is_a_clear_error():
    for bad in (0, -1, 10**6, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a whole number from 1 to 4096"):
            Captioner(batch_size=bad)


def test_checkpoint_with_nan_weights_is_an_error_naming_it(tmp_path, tiny_model):
    ckpt = tiny_model.checkpoint(DataConfig(), TrainConfig())
    for tensor in ckpt["decoder"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    path = tmp_path / "diverged.pt"
    save_checkpoint(ckpt, str(path))
    with pytest.raises(CheckpointError,
                       match=r"diverged\.pt: the model's weights are not finite \(NaN or infinity in [a-z_.0-9]+\)"):
        Captioner(str(path), device="cpu")

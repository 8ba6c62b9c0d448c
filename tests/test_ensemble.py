"""Ensembles: several trained decoders caption together from the mean of their
word distributions (showtell.ensemble, CaptionModel.ensemble, evaluate --ensemble)."""
import math

import pytest
import torch

from showtell.checkpoint import save_checkpoint
from showtell.cli import main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.decoders import DECODERS
from showtell.decoding import DecodeOptions
from showtell.ensemble import EnsembleDecoder
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()


def _model(decoder="show_attend_tell", seed=0, words=WORDS, encoder=None):
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder="resnet18", decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8, dropout=0.0)
    model = CaptionModel.build(cfg, Vocabulary(words), encoder_weights=None).eval()
    with torch.no_grad():
        model.decoder.out.bias[2] = -2.0  # <end> less likely at once: captions of a few words
    if encoder is not None:
        model.encoder = encoder
    return model


def _features(model, n=3):
    torch.manual_seed(1)
    return torch.randn(n, 49, 512) if model.feature_kind == "spatial" else torch.randn(n, 512)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_each_step_is_the_log_of_the_members_mean_probability(decoder):
    a = _model(decoder, seed=0)
    b = _model(decoder, seed=1, encoder=a.encoder)
    ens = CaptionModel.ensemble([a, b])
    feats = _features(a)
    tokens = torch.tensor([4, 5, 6])
    with torch.no_grad():
        out, _ = ens.decoder.step(tokens, ens.decoder.init_state(feats))
        pa = a.decoder.step(tokens, a.decoder.init_state(feats))[0].softmax(-1)
        pb = b.decoder.step(tokens, b.decoder.init_state(feats))[0].softmax(-1)
    assert torch.allclose(out.exp(), (pa + pb) / 2, atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-5)  # a distribution: log_softmax keeps it


@pytest.mark.parametrize("beam_size", [1, 3])
def test_an_ensemble_of_one_model_twice_captions_like_the_model(beam_size):
    a = _model()
    feats = _features(a, n=4)
    opts = DecodeOptions(beam_size=beam_size, n_best=1, max_len=8)
    alone = [h[0].tokens for h in a.generate(feats, opts)]
    twice = [h[0].tokens for h in CaptionModel.ensemble([a, a]).generate(feats, opts)]
    assert twice == alone
    assert any(len(t) > 1 for t in alone)  # real captions, not all empty


def test_ensemble_beam_state_follows_each_member_and_differs_from_either_alone():
    a = _model(seed=0)
    b = _model(seed=3, encoder=a.encoder)
    feats = _features(a, n=4)
    opts = DecodeOptions(beam_size=3, n_best=3, max_len=8)
    ens = CaptionModel.ensemble([a, b]).generate(feats, opts)
    # Rescore each ensemble caption by teacher forcing the members: the beam's
    # logprob is the sum over words of log(mean of the members' probabilities).
    for i, hyps in enumerate(ens):
        for h in hyps:
            caption = torch.tensor([[1] + h.tokens + ([2] if h.finished else [])])
            with torch.no_grad():
                pa = a.decoder(feats[i:i + 1], caption).softmax(-1)[0]
                pb = b.decoder(feats[i:i + 1], caption).softmax(-1)[0]
            target = caption[0, 1:]
            expected = sum(math.log(float((pa[t, w] + pb[t, w]) / 2)) for t, w in enumerate(target.tolist()))
            assert h.logprob == pytest.approx(expected, abs=1e-3)
    # Guided (constrained) search runs the ensemble too: "dog" must appear.
    dog = a.vocab.index["dog"]
    guided = CaptionModel.ensemble([a, b]).generate(feats[:2], DecodeOptions(beam_size=3, max_len=8),
                                                    constraints=[[(dog,)], []])
    assert dog in guided[0][0].tokens


def test_ensemble_refuses_models_that_do_not_fit_together():
    a = _model()
    with pytest.raises(ValueError, match="vocabulary"):
        CaptionModel.ensemble([a, _model(words=WORDS + ["zebra"], encoder=a.encoder)])
    with pytest.raises(ValueError, match="same features|read different"):
        CaptionModel.ensemble([a, _model("show_tell", encoder=a.encoder)])
    with pytest.raises(ValueError, match="share one encoder"):
        CaptionModel.ensemble([a, _model(seed=5)])  # random encoders with other weights
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleDecoder([a.decoder])
    with pytest.raises(RuntimeError, match="only decodes"):
        CaptionModel.ensemble([a, a])(_features(a), torch.tensor([[1, 4, 2]] * 3))


def test_evaluate_refuses_to_store_an_ensembles_scores(tmp_path, capsys):
    path = str(tmp_path / "m.pt")
    save_checkpoint(_model().checkpoint(DataConfig(), TrainConfig()), path)
    assert main(["evaluate", path, "--ensemble", path, "--store"]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["evaluate", path, "--ensemble", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err


def test_evaluate_names_the_ensemble_member_that_does_not_fit(tmp_path, capsys, flickr8k_root):
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    save_checkpoint(_model().checkpoint(DataConfig(), TrainConfig()), a)
    save_checkpoint(_model(words=WORDS + ["zebra"]).checkpoint(DataConfig(), TrainConfig()), b)
    assert main(["evaluate", a, "--ensemble", b, "--data-root", flickr8k_root, "--split", "val"]) == 2
    assert "--ensemble: the models of an ensemble must share one vocabulary" in capsys.readouterr().err

"""The model owns its chain (encode -> forward / generate / sample), the
objectives sit beside it, and self-critical training improves its reward."""
import json
import os

import pytest
import torch

from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import read_flickr8k
from showtell.decoders import DECODERS
from showtell.decoding import DecodeOptions, beam_search
from showtell.model import CaptionModel
from showtell.objectives import CrossEntropy, SelfCritical
from showtell.text import SPECIAL_TOKENS, Vocabulary
from showtell.training import Batch

WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()


def _model(decoder="show_attend_tell"):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8)
    return CaptionModel.build(cfg, Vocabulary(WORDS), encoder_weights=None).eval()


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_encode_forward_generate_use_one_chain(decoder):
    model = _model(decoder)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = model.encode(pixels)
        both = model.encode_all(pixels)
    assert torch.equal(feats, both.for_decoder(model.feature_kind))
    assert feats.shape == ((2, 512) if decoder == "show_tell" else (2, 49, 512))
    caps = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 7, 8, 2]])
    logits, alphas = model(feats, caps, return_attention=True)
    assert logits.shape == (2, 4, len(WORDS))
    if decoder == "show_tell":
        assert alphas is None
    else:  # one distribution over the 7x7 positions per word
        assert alphas.shape == (2, 4, 49)
        assert torch.allclose(alphas.sum(-1), torch.ones(2, 4), atol=1e-5)
    opts = DecodeOptions(beam_size=3, n_best=2, max_len=6)
    v = model.vocab
    with torch.no_grad():
        steps = model.decoder.decoding_steps()  # the fused steps for show_attend_tell
    found = model.generate(feats, opts)
    assert found == beam_search(steps, feats, opts, v.end_id, v.start_id, v.unk_id)
    plain = beam_search(model.decoder, feats, opts, v.end_id, v.start_id, v.unk_id)
    assert [[h.tokens for h in per] for per in found] == [[h.tokens for h in per] for per in plain]
    assert [h.score for per in found for h in per] == pytest.approx([h.score for per in plain for h in per], abs=1e-5)
    greedy = model.generate(feats, DecodeOptions(beam_size=1, max_len=6))
    assert [len(h) for h in greedy] == [1, 1]


def test_generate_leaves_training_mode_as_it_was():
    model = _model()
    model.train()
    model.generate(torch.randn(1, 49, 512), DecodeOptions(beam_size=2, max_len=4))
    assert model.decoder.training


def test_sample_draws_with_gradients_and_masks_after_end():
    model = _model()
    model.train()
    torch.manual_seed(3)
    feats = torch.randn(3, 49, 512)
    tokens, logp, mask = model.sample(feats, n=4, max_len=7)
    assert tokens.shape == logp.shape == mask.shape and tokens.size(0) == 12
    assert tokens.size(1) <= 8
    v = model.vocab
    assert not torch.isin(tokens, torch.tensor([v.pad_id, v.start_id])).any()
    for row, m in zip(tokens.tolist(), mask.tolist()):
        n_counted = sum(m)
        assert all(m[:n_counted]) and not any(m[n_counted:])  # counts a prefix
        if v.end_id in row[:n_counted]:
            assert row.index(v.end_id) == n_counted - 1  # up to and including <end>
    assert (logp[~mask] == 0).all() and (logp[mask] < 0).all()
    (-logp.sum()).backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_sampled_log_probabilities_are_normalised_over_drawable_words(monkeypatch):
    """Padding and <start> are out of the sampling distribution before it is
    normalised; otherwise self-critical training would grow their mass unseen."""
    model = _model("show_tell")
    v = model.vocab
    real_step = model.decoder.step

    def step_favouring_padding(tokens, state):
        logits, state = real_step(tokens, state)
        return logits.index_fill(1, torch.tensor([v.pad_id, v.start_id]), 50.0), state

    monkeypatch.setattr(model.decoder, "step", step_favouring_padding)
    torch.manual_seed(0)
    _, logp, mask = model.sample(torch.randn(2, 512), n=3, max_len=5)
    assert (logp[mask] > -20).all()  # about log(1/V), not log(e^-50)


def test_attention_regulariser_adds_to_the_loss_and_its_gradient():
    model = _model()
    feats = torch.randn(2, 49, 512)
    batch = Batch(size=2, captions=torch.tensor([[1, 4, 5, 2, 0], [1, 6, 7, 8, 2]]), features=feats)
    plain, _ = CrossEntropy(model.vocab.pad_id)(model, batch)
    reg, _ = CrossEntropy(model.vocab.pad_id, attention_reg=1.0)(model, batch)
    # With ~4 words over 49 positions, every position is far from one unit of attention.
    assert reg.item() > plain.item() + 0.5
    reg.backward()
    assert model.decoder.att_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_scheduled_sampling_feeds_the_models_own_words(decoder):
    model = _model(decoder)  # eval mode: no dropout, so only the fed words differ
    feats = torch.randn(2, 512) if decoder == "show_tell" else torch.randn(2, 49, 512)
    caps = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 6, 7, 8, 9, 2]])
    other = torch.tensor([[1, 9, 9, 9, 9, 9], [1, 4, 4, 4, 4, 4]])  # same <start>, other words
    with torch.no_grad():
        forced = model(feats, caps)
        torch.manual_seed(1)
        never = model(feats, caps, sampling=1e-12)  # the step-by-step path, every word the reference
        torch.manual_seed(1)
        own = model(feats, caps, sampling=1.0)
        torch.manual_seed(1)
        own_other = model(feats, other, sampling=1.0)
    assert torch.allclose(never, forced, atol=1e-5)
    # Always fed its own words, the model no longer reads the reference after <start> ...
    assert torch.allclose(own, own_other, atol=1e-6)
    # ... and from the second word on it saw something else than under teacher forcing.
    assert torch.allclose(own[:, 0], forced[:, 0], atol=1e-5)
    assert not torch.allclose(own[:, 1:], forced[:, 1:], atol=1e-3)


def test_scheduled_sampling_rises_over_the_ramp_and_only_while_training():
    objective = CrossEntropy(0, scheduled_sampling=0.25, sampling_ramp=5)
    probs = []
    for epoch in range(8):
        objective.begin_epoch(epoch)
        probs.append(objective.sampling)
    assert probs == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.25, 0.25])
    model = _model()
    seen = []
    real_forward = model.decoder.forward
    model.decoder.forward = lambda *a, **k: seen.append(k["sampling"]) or real_forward(*a, **k)
    batch = Batch(size=1, captions=torch.tensor([[1, 4, 5, 2]]), features=torch.randn(1, 49, 512))
    objective(model, batch)  # eval mode (validation-like): teacher forcing
    model.train()
    objective(model, batch)
    assert seen == [0.0, 0.25]
    with pytest.raises(ValueError, match="scheduled_sampling"):
        TrainConfig(scheduled_sampling=1.5)
    with pytest.raises(ValueError, match="scheduled_sampling_ramp"):
        TrainConfig(scheduled_sampling_ramp=0)


class _ExactMatch:
    """A stand-in reward for the baseline arithmetic: 1 for the reference caption."""

    def __init__(self, target):
        self.target = target

    def score_indices(self, hyps, indices):
        per = [1.0 if h == self.target else 0.0 for h in hyps]
        return sum(per) / len(per), per


def test_self_critical_loss_pushes_up_captions_better_than_the_other_samples():
    model = _model("show_tell")
    model.train()
    feats = torch.randn(1, 512)
    objective = SelfCritical(_ExactMatch(["a", "dog"]), samples=4)
    batch = Batch(size=1, image_index=torch.tensor([0]), features=feats)
    torch.manual_seed(0)
    loss, n = objective(model, batch)
    assert n == 1 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="baseline"):
        SelfCritical(None, baseline="median")
    with pytest.raises(ValueError, match="2 samples"):
        SelfCritical(None, samples=1)


def _tiny_flickr(tmp_path, flickr8k_root, n_train=16, n_val=4):
    train_items = read_flickr8k(flickr8k_root, "train")[:n_train]
    val_items = read_flickr8k(flickr8k_root, "val")[:n_val]
    images = [{"filename": it.image_id, "split": split, "imgid": i,
               "sentences": [{"raw": c, "tokens": c.lower().split()} for c in it.captions]}
              for i, (split, it) in enumerate([("train", x) for x in train_items] + [("val", x) for x in val_items])]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return DataConfig(dataset="karpathy", annotations=str(path), image_root=os.path.join(flickr8k_root, "Images"),
                      min_word_count=2)


def _train_cider(path, data_cfg, cache):
    """Greedy CIDEr-D of a checkpoint's model on its own training images."""
    from showtell.datasets import load_split
    from showtell.evaluation import caption_features
    from showtell.features import FeatureCache, split_features
    from showtell.metrics import CiderD
    from showtell.text import tokenize

    model = CaptionModel.from_checkpoint(path)
    items = load_split(data_cfg, "train")
    fs = split_features(model.encoder, "karpathy", "train", items, FeatureCache(cache), progress=False)
    refs = [[tokenize(c) for c in it.captions] for it in fs.items]
    caps = caption_features(model, fs.for_decoder(model.feature_kind), DecodeOptions(beam_size=1, max_len=16))
    return CiderD(refs).score(caps, refs)[0]


def test_self_critical_training_raises_train_cider_and_resumes_exactly(tmp_path, flickr8k_root, monkeypatch):
    data_cfg = _tiny_flickr(tmp_path, flickr8k_root)
    cache = str(tmp_path / "cache")
    model_cfg = ModelConfig(decoder="show_tell", embed_dim=64, hidden_dim=64, dropout=0.0)
    from showtell import training

    common = dict(encoder_weights="default", cache_dir=cache, progress=False, log=lambda s: None)
    xe = str(tmp_path / "xe")
    training.train(model_cfg, data_cfg, TrainConfig(epochs=8, batch_size=16, lr=3e-3, max_decode_len=16), xe,
                   **common)
    before = _train_cider(os.path.join(xe, "best.pt"), data_cfg, cache)

    scst_cfg = TrainConfig(objective="scst", epochs=6, batch_size=8, lr=1e-3, scst_samples=5, max_decode_len=16,
                           checkpoint_every=1, early_stop_patience=100, select_metric="cider")
    straight = str(tmp_path / "scst")
    training.train(model_cfg, data_cfg, scst_cfg, straight, init_from=os.path.join(xe, "best.pt"), **common)
    after = _train_cider(os.path.join(straight, "last.pt"), data_cfg, cache)
    assert after > before, (before, after)

    # The same run stopped by a crash in the middle of epoch 3, then resumed, ends identical.
    crashed = str(tmp_path / "crashed")
    real_step, calls = training.train_step, []

    def crashing_step(*args):
        calls.append(1)
        if len(calls) == 5:  # epoch 3 of 2 steps each, its first step
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(training, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        training.train(model_cfg, data_cfg, scst_cfg, crashed, init_from=os.path.join(xe, "best.pt"), **common)
    monkeypatch.setattr(training, "train_step", real_step)
    training.train(model_cfg, data_cfg, scst_cfg, crashed, resume=True, **common)
    from showtell.checkpoint import load_checkpoint

    a, b = load_checkpoint(os.path.join(straight, "last.pt")), load_checkpoint(os.path.join(crashed, "last.pt"))
    for k, v in a["decoder"].items():
        assert torch.equal(v, b["decoder"][k]), k
    assert [r["train_loss"] for r in a["training"]["history"]] == [r["train_loss"] for r in b["training"]["history"]]

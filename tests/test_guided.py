"""Guided captioning wired in: the guidance map's checkpoint round trip,
CaptionModel.generate's dispatch to constrained beam search, caption() /
describe() / explain() with and without guidance on the bundled model, and the
command line's --json tags."""
import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import replace

import pytest
import torch

from showtell import caption
from showtell.captioner import BUNDLED_MODEL, GUIDANCE_THRESHOLD, get_captioner
from showtell.checkpoint import CheckpointError, save_checkpoint
from showtell.cli import main
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.constrained import constrained_beam_search
from showtell.decoders import DECODERS
from showtell.decoding import DecodeOptions
from showtell.guidance import GuidanceMap, WordTag
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAT = os.path.join(ROOT, "examples", "cat.jpg")
WORDS = list(SPECIAL_TOKENS) + "a dog the cat on grass runs man beach ball red cats dogs".split()


def _tiny(decoder="show_attend_tell", guidance=None):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8)
    model = CaptionModel(cfg, Vocabulary(WORDS), *_parts(cfg), guidance=guidance)
    with torch.no_grad():
        model.decoder.out.bias[2] = -1.0  # captions of a few words, not all empty
    return model.eval()


def _parts(cfg):
    from showtell.decoders import build_decoder
    from showtell.encoders import build_encoder

    encoder = build_encoder(cfg.encoder, weights=None)
    encoder.freeze()
    return encoder, build_decoder(cfg, len(WORDS), encoder.feature_dim)


# --- the map in the checkpoint ----------------------------------------------------------


def test_checkpoint_carries_the_guidance_map(tmp_path):
    model = _tiny()
    words = dict(zip(model.guidance.names, model.guidance.words))
    assert words["tabby"] == ("cat", "cats") and words["beagle"] == ("dog", "dogs") and words["espresso"] == ()
    # A map that the class table would not give (tabby -> dog): only the checkpoint can hold it.
    custom = GuidanceMap(model.guidance.names, tuple(("dog",) if n == "tabby" else w
                                                      for n, w in zip(model.guidance.names, model.guidance.words)))
    model.guidance = custom
    ckpt = model.checkpoint(DataConfig(), TrainConfig())
    assert ckpt["guidance"] == custom.to_dict()
    path = str(tmp_path / "m.pt")
    save_checkpoint(ckpt, path)
    loaded = CaptionModel.from_checkpoint(path)
    assert loaded.guidance == custom
    logits = torch.randn(2, 1000)
    assert loaded.guidance.word_tags(logits) == custom.word_tags(logits)


def test_a_checkpoint_without_a_map_gets_one_from_the_class_table(tmp_path):
    ckpt = _tiny().checkpoint(DataConfig(), TrainConfig())
    del ckpt["guidance"]  # as the checkpoints written before guided captioning
    path = str(tmp_path / "old.pt")
    save_checkpoint(ckpt, path)
    assert CaptionModel.from_checkpoint(path).guidance == GuidanceMap.for_vocabulary(WORDS)


def test_a_map_for_another_vocabulary_is_refused(tmp_path):
    ckpt = _tiny().checkpoint(DataConfig(), TrainConfig())
    ckpt["guidance"]["words"][281] = ["kitten"]  # not in this model's vocabulary
    path = str(tmp_path / "bad.pt")
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match="guidance: .*kitten"):
        CaptionModel.from_checkpoint(path)
    ckpt["guidance"] = {"names": "tabby"}
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match="guidance"):
        CaptionModel.from_checkpoint(path)


def test_the_bundled_model_holds_its_map():
    ckpt = torch.load(os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt"), weights_only=True)
    assert GuidanceMap.from_dict(ckpt["guidance"], ckpt["vocab"]) == GuidanceMap.for_vocabulary(ckpt["vocab"])


# --- generate() -------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_generate_dispatches_to_constrained_search_per_image(decoder):
    model = _tiny(decoder)
    v = model.vocab
    torch.manual_seed(1)
    feats = torch.randn(3, 512) if model.feature_kind == "pooled" else torch.randn(3, 49, 512)
    opts = DecodeOptions(beam_size=3, n_best=2, max_len=8)
    plain = model.generate(feats, opts)
    assert model.generate(feats, opts, None) == plain
    assert model.generate(feats, opts, [[], [], []]) == plain
    cat = (v.index["cat"], v.index["cats"])
    ball = (v.index["ball"],)
    mixed = model.generate(feats, opts, [[], [cat], [ball, cat]])
    # an unconstrained image is decoded as without guidance (to float rounding: other batch sizes)
    assert [h.tokens for h in mixed[0]] == [h.tokens for h in plain[0]]
    assert [h.logprob for h in mixed[0]] == pytest.approx([h.logprob for h in plain[0]], abs=1e-4)
    for i, constraints in ((1, [cat]), (2, [ball, cat])):
        alone = constrained_beam_search(model.decoder, feats[i:i + 1], opts, v.end_id, v.start_id, v.unk_id,
                                        [constraints])[0]
        assert alone.satisfied
        assert [h.tokens for h in mixed[i]] == [h.tokens for h in alone.hypotheses]
        for h in mixed[i]:
            assert all(set(c) & set(h.tokens) for c in constraints), model.vocab.decode(h.tokens)
    greedy = model.generate(feats, DecodeOptions(beam_size=1, max_len=8), [[cat], [], []])
    assert set(cat) & set(greedy[0][0].tokens)
    with pytest.raises(ValueError, match="constraints for 2 images"):
        model.generate(feats, opts, [[], []])


def test_constraints_from_tags_follow_the_threshold():
    model = _tiny()
    tags = [[WordTag(("cat", "cats"), 0.7, ("tabby",))], [WordTag(("dog", "dogs"), 0.2, ("beagle",))]]
    cat, dog = (model.vocab.index["cat"], model.vocab.index["cats"]), (model.vocab.index["dog"], model.vocab.index["dogs"])
    assert model.constraints(tags, 0.5) == [[cat], []]
    assert model.constraints(tags, 0.1) == [[cat], [dog]]
    assert model.constraints(tags, None) == [[], []]


def test_guidance_threshold_is_a_checked_decoding_option():
    assert DecodeOptions().guidance_threshold is None  # decoding itself is unguided unless asked
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="guidance_threshold"):
            DecodeOptions(guidance_threshold=bad)
    for bad in ("0.5", True):
        with pytest.raises(TypeError, match="guidance_threshold"):
            DecodeOptions(guidance_threshold=bad)


# --- caption(), describe(), explain() on the bundled model ---------------------------


@pytest.fixture(scope="module")
def bundled():
    return get_captioner()  # the one caption() uses


def test_caption_names_the_cat_only_when_guided(bundled):
    # guided by default, at the threshold calibrated for the model and stored with it
    ckpt = torch.load(os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt"), weights_only=True)
    assert bundled.defaults.guidance_threshold == ckpt["calibration"]["guidance_threshold"] is not None
    guided = caption(CAT)
    plain = caption(CAT, guided=False)
    assert "cat" in guided.split() or "cats" in guided.split(), guided
    assert not {"cat", "cats"} & set(plain.split()), plain
    assert caption(CAT, guidance_threshold=None) == plain
    assert caption(CAT, guided=True) == guided
    # A threshold above the cat tag's probability leaves the caption unguided.
    best = caption(CAT, n_best=2)
    cat_prob = best[0].tags[0].prob
    assert caption(CAT, guidance_threshold=min(1.0, cat_prob + 1e-3)) == plain
    with pytest.raises(ValueError, match="contradict"):
        caption(CAT, guided=False, guidance_threshold=0.5)


def test_n_best_captions_report_tags_and_required_words(bundled):
    best = caption(CAT, n_best=2)
    assert len(best) == 2
    for c in best:
        assert c.tags[0].words == ("cat", "cats") and c.tags[0].prob > 0.8
        assert c.required == (("cat", "cats"),) and c.satisfied
        assert {"cat", "cats"} & set(c.text.split())
        text, logprob, score = c[:3]  # still a (text, logprob, score) tuple at heart
        assert text == c.text and logprob < 0
    plain = caption(CAT, n_best=2, guided=False)
    assert plain[0].tags == best[0].tags and plain[0].required == () and plain[0].satisfied


def test_describe_and_explain_agree_with_caption(bundled):
    d = bundled.describe(CAT)
    assert d.text == caption(CAT) and d.n_words == len(d.text.split())
    assert d.required == (("cat", "cats"),) and d.satisfied
    assert d.classes[0].words == ("cat", "cats") and len(d.classes) == 5
    probs = [t.prob for t in d.classes]
    assert probs == sorted(probs, reverse=True)
    assert d.captions[0].text == d.text and d.logprob == d.captions[0].logprob
    e = bundled.explain(CAT)
    assert e.text == d.text and e.required == d.required and e.satisfied
    assert e.attention.shape[0] == len(e.words)
    assert bundled.explain(CAT, guided=False).required == ()


# --- command line -----------------------------------------------------------------------


def _json_lines(argv):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(argv) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_cli_json_includes_tags_and_guidance_flags():
    [guided] = _json_lines(["caption", CAT, "--json", "--device", "cpu"])
    assert guided["tags"][0]["words"] == ["cat", "cats"] and guided["tags"][0]["prob"] > 0.8
    assert "tabby" in guided["tags"][0]["classes"] or "tiger cat" in guided["tags"][0]["classes"]
    assert guided["required"] == [["cat", "cats"]] and guided["captions"][0]["satisfied"] is True
    assert guided["captions"][0]["caption"] == caption(CAT)
    [plain] = _json_lines(["caption", CAT, "--json", "--device", "cpu", "--no-guidance"])
    assert plain["required"] == [] and plain["tags"] == guided["tags"]
    assert plain["captions"][0]["caption"] == caption(CAT, guided=False)
    [strict] = _json_lines(["caption", CAT, "--json", "--device", "cpu", "--guidance-threshold", "1.0"])
    assert strict["required"] == []


def test_evaluation_guides_cached_rows_as_caption_does():
    from showtell.evaluation import caption_features

    model = _tiny()
    torch.manual_seed(2)
    spatial = torch.randn(4, 49, 512)
    pooled = spatial.mean(dim=1)
    opts = DecodeOptions(beam_size=2, max_len=6, guidance_threshold=0.01)
    constraints = model.constraints(model.word_tags(pooled), 0.01)
    assert any(constraints)  # the random head is confident enough of something at 1%
    # evaluation decodes as caption() does by default on a CPU: int8 steps (batches of 3 or 4, the same captions)
    expected = [model.vocab.decode(h[0].tokens)
                for h in model.generate(spatial, opts, constraints, decoder_precision="int8")]
    got = caption_features(model, spatial.numpy(), opts, batch_size=3, pooled=pooled.numpy())
    assert got == expected
    assert caption_features(model, spatial.numpy(), replace(opts, guidance_threshold=None)) == \
        [model.vocab.decode(h[0].tokens) for h in model.generate(spatial, opts, decoder_precision="int8")]
    exact = caption_features(model, spatial.numpy(), opts, pooled=pooled.numpy(), decoder_precision="float32")
    assert exact == [model.vocab.decode(h[0].tokens) for h in model.generate(spatial, opts, constraints)]
    with pytest.raises(ValueError, match="pooled"):
        caption_features(model, spatial.numpy(), opts)


def test_evaluate_scores_the_bundled_model_out_of_domain_on_coco_mini(coco_mini, capsys):
    """`evaluate --dataset coco` scores a Flickr8k checkpoint on COCO photos:
    the out-of-domain world, with caption()'s decoding (beam 3, guided)."""
    ann = os.path.join(coco_mini, "annotations", "captions_train2017.json")
    assert main(["evaluate", BUNDLED_MODEL, "--dataset", "coco", "--annotations", ann, "--image-root",
                 os.path.join(coco_mini, "train2017"), "--split", "train", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    calibrated = torch.load(BUNDLED_MODEL, weights_only=True)["calibration"]["guidance_threshold"]
    assert out["images"] == 80 and out["beam_size"] == 3 and out["guidance_threshold"] == calibrated
    assert 0 < out["cider"] < 100 and 0 < out["bleu4"] < 100 and out["meteor"] is not None


def test_caption_method_is_tags_then_constraints_then_search_with_attention():
    """CaptionModel.caption(): the one captioning call (caption(), explain(),
    evaluate and the page use it) gives generate()'s captions under the
    constraints of the confident tags, the tags and constraints themselves,
    and, when asked, the attention behind each word of the best caption."""
    model = _tiny()
    torch.manual_seed(2)
    spatial = torch.randn(4, 49, 512)
    pooled = spatial.mean(dim=1)
    tags = model.word_tags(pooled)
    top = sorted(t[0].prob for t in tags if t)
    threshold = (top[0] + top[-1]) / 2  # between the images' most probable tags: some guided, some not
    # (no fallback: every guided caption kept, see the next test)
    opts = DecodeOptions(beam_size=2, n_best=2, max_len=6, guidance_threshold=threshold, guidance_fallback=None)
    constraints = model.constraints(tags, threshold)
    assert any(constraints) and not all(constraints)  # a mixed batch: guided and plain images
    found = model.caption(spatial, opts, pooled, attention=True)
    # caption()'s default decoder on a CPU is int8 (decoder_precision="auto")
    assert [f.hypotheses for f in found] == model.generate(spatial, opts, constraints, decoder_precision="int8")
    assert [f.tags for f in found] == tags and [f.constraints for f in found] == constraints
    for f in found:
        assert f.meets(f.hypotheses[0]) or not f.constraints
        assert f.attention.shape == (len(f.hypotheses[0].tokens), 49)
        assert torch.allclose(f.attention.sum(dim=1), torch.ones(len(f.hypotheses[0].tokens)), atol=1e-5)
    # unguided: the same tags, no constraints, plain search; no attention unless asked
    plain = model.caption(spatial, replace(opts, guidance_threshold=None), pooled)
    assert [f.hypotheses for f in plain] == model.generate(spatial, opts, decoder_precision="int8")
    assert [f.tags for f in plain] == tags and all(f.constraints == [] and f.attention is None for f in plain)
    with pytest.raises(ValueError, match="pooled"):
        model.caption(spatial, opts)
    nic = _tiny("show_tell")
    with pytest.raises(ValueError, match="no attention"):
        nic.caption(pooled, opts, pooled, attention=True)


def test_a_guided_caption_far_below_the_unguided_one_is_set_aside():
    """guidance_fallback: an image whose guided caption's log-probability per
    word falls more than the margin below its unguided caption's gets the
    unguided captions (no constraints, set_aside); the others keep theirs."""
    model = _tiny()
    torch.manual_seed(3)
    spatial = torch.randn(12, 49, 512)
    pooled = spatial.mean(dim=1)
    lowest = min(t[0].prob for t in model.word_tags(pooled))
    opts = DecodeOptions(beam_size=2, n_best=2, max_len=6, guidance_threshold=lowest, guidance_fallback=None)
    guided = model.caption(spatial, opts, pooled)
    plain = model.caption(spatial, replace(opts, guidance_threshold=None), pooled)
    assert all(g.constraints for g in guided) and not any(g.set_aside for g in guided)
    gaps = [p.hypotheses[0].mean_logprob - g.hypotheses[0].mean_logprob for g, p in zip(guided, plain)]
    margin = sorted(gaps)[len(gaps) // 2]  # half the images fall further than this, half not
    fell = [gap > margin for gap in gaps]
    assert any(fell) and not all(fell)
    found = model.caption(spatial, replace(opts, guidance_fallback=margin), pooled)
    for f, g, p, down in zip(found, guided, plain, fell):
        assert f.set_aside == down and f.tags == g.tags
        if down:
            assert f.hypotheses == p.hypotheses and f.constraints == []
        else:
            assert f.hypotheses == g.hypotheses and f.constraints == g.constraints
    # Unguided decoding never sets anything aside; a bad margin is refused by name.
    assert not any(f.set_aside for f in model.caption(spatial, replace(opts, guidance_threshold=None,
                                                                        guidance_fallback=0.0), pooled))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance_fallback"):
            replace(opts, guidance_fallback=bad)
    with pytest.raises(TypeError, match="guidance_fallback"):
        replace(opts, guidance_fallback="1")


def test_caption_reads_the_guidance_settings_stored_with_the_model(tmp_path):
    """default_options: a model's calibrated guidance threshold and fallback
    (benchmarks/bench_guidance.py --store) are caption()'s defaults; a
    model without them gets GUIDANCE_THRESHOLD and DecodeOptions' fallback;
    a stored value out of range is a CheckpointError naming it."""
    from showtell.captioner import default_options

    plain = default_options({})
    assert plain.guidance_threshold == GUIDANCE_THRESHOLD
    assert plain.guidance_fallback == DecodeOptions().guidance_fallback
    stored = default_options({"calibration": {"guidance_threshold": 0.6, "guidance_fallback": 0.25,
                                              "confidence_threshold": -1.0}})
    assert (stored.guidance_threshold, stored.guidance_fallback, stored.beam_size) == (0.6, 0.25, 3)
    with pytest.raises(CheckpointError, match="guidance_threshold"):
        default_options({"calibration": {"guidance_threshold": 1.5}})

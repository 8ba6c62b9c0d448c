"""What a new user meets first: confidence on every surface from one
definition and one stored threshold, the n-best score, the caption command's
help, output and exit codes, the training default, the model card, and
advice that fits the error."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from showtell import cli
from showtell.captioner import GUIDANCE_THRESHOLD, Captioner, ScoredCaption, get_captioner
from showtell.defaults import GUIDANCE_FALLBACK
from showtell.checkpoint import save_checkpoint
from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.confidence import NOT_SURE_MARK, THRESHOLD, caption_confidence, confidence, threshold_of
from showtell.images import MAX_ASPECT_RATIO, ImageError, load_image
from showtell.model import CaptionModel
from showtell.text import SPECIAL_TOKENS, Vocabulary
from showtell.webapp import _image_problem, model_card

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORDS = list(SPECIAL_TOKENS) + "a dog cat runs on the grass beach man red ball".split()


def _tiny_checkpoint(path, **extra):
    torch.manual_seed(0)
    model = CaptionModel.build(ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8), Vocabulary(WORDS))
    ckpt = model.checkpoint(DataConfig(max_images=300), TrainConfig())
    ckpt.update(extra)
    save_checkpoint(ckpt, str(path))
    return str(path)


# --- confidence: one definition, one threshold stored with the model -------------------


def test_threshold_comes_from_the_checkpoint_or_the_constant():
    assert threshold_of({}) == THRESHOLD
    assert threshold_of({"calibration": {"confidence_threshold": -1.5}}) == -1.5
    assert threshold_of({"calibration": {}}) == THRESHOLD
    for bad in ("-1", float("nan"), True):
        with pytest.raises(ValueError, match="confidence_threshold"):
            threshold_of({"calibration": {"confidence_threshold": bad}})


def test_a_stored_threshold_reaches_every_caption(tmp_path):
    strict = Captioner(_tiny_checkpoint(tmp_path / "strict.pt", calibration={"confidence_threshold": -0.01}))
    lenient = Captioner(_tiny_checkpoint(tmp_path / "lenient.pt", calibration={"confidence_threshold": -100.0}))
    photo = str(EXAMPLES / "cat.jpg")
    (a,) = strict.caption_each([photo])[0]
    (b,) = lenient.caption_each([photo])[0]
    assert a.text == b.text  # the same weights: only the threshold differs
    assert a.confidence.threshold == -0.01 and not a.confidence.sure and a.confidence.label == "not sure"
    assert b.confidence.threshold == -100.0 and b.confidence.sure and b.confidence.label == "fairly sure"
    assert a.confidence.value == pytest.approx(a.logprob / (len(a.text.split()) + 1))
    assert '"not sure" below a log-probability per word of -0.01' in model_card(strict)


def test_scored_caption_carries_the_same_confidence_as_the_page():
    captioner = get_captioner()
    caps = captioner(str(EXAMPLES / "cat.jpg"), n_best=3)
    assert all(isinstance(c, ScoredCaption) and c.confidence is not None for c in caps)
    # the page's definition (confidence() of the n-best list) is the best caption's own
    assert caps[0].confidence == confidence(caps, captioner.confidence_threshold)
    assert caps[0].confidence == caption_confidence(caps[0].text, caps[0].logprob, captioner.confidence_threshold)
    # ranked by the log-probability per word (length penalty 1): the confidence value is that score
    assert [c.score for c in caps] == sorted((c.score for c in caps), reverse=True)
    assert all(c.score == pytest.approx(c.confidence.value, abs=1e-4) for c in caps)


# --- the caption command ---------------------------------------------------------------


def test_caption_text_output_marks_not_sure_and_n_best_shows_the_ranking_score(capsys):
    photo = str(EXAMPLES / "cat.jpg")
    assert cli.main(["caption", photo]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    expected = get_captioner()(photo, n_best=3)
    assert line == f"{photo}\t{expected[0].text} {NOT_SURE_MARK}"  # the cat is outside Flickr8k's world
    assert cli.main(["caption", photo, "--n-best", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["confidence"] == expected[0].confidence.as_dict()
    assert [c["score"] for c in record["captions"]] == [round(c.score, 4) for c in expected]
    assert [c["sure"] for c in record["captions"]] == [c.confidence.sure for c in expected]
    assert cli.main(["caption", photo, "--n-best", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    scores = [float(line.split("\t")[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)  # printed in the order they are ranked
    assert scores == [round(c.score, 3) for c in expected]


def test_help_shows_real_defaults_and_every_flag_has_help():
    assert cli.GUIDANCE_DEFAULT == GUIDANCE_THRESHOLD
    for parser in (cli.get_caption_parser(), cli.get_evaluate_parser(), cli.get_compare_parser()):
        text = " ".join(parser.format_help().split())
        # The guidance defaults are the model's own calibration, else showtell.defaults' values.
        assert "showtell.captioner" not in text and f"{GUIDANCE_THRESHOLD} for a model without one" in text
        assert f"{GUIDANCE_FALLBACK} for a model without one" in text
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"
    helps = {a.dest: a.help for a in cli.get_caption_parser()._actions}
    assert "greedy (default 3)" in helps["beam_size"] and "(default 20)" in helps["max_len"]
    assert "at most --beam-size" in helps["n_best"]


@pytest.mark.parametrize("args, status", [
    (["caption", "nosuch.jpg"], 1),  # an image that cannot be captioned: reported, exit 1
    (["caption", "examples/cat.jpg", "--beam-size", "0"], 2),  # the command line is wrong: exit 2
    (["caption", "examples/cat.jpg", "--n-best", "5", "--beam-size", "3"], 2),
    (["caption", "examples/cat.jpg", "--checkpoint", "nosuch.pt"], 2),
])
def test_exit_codes_are_the_documented_ones(args, status, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("showtell.captioner.Captioner.__init__", _refuse)  # all found before loading a model
    assert cli.main(args) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    docs = (ROOT / "docs" / "command-line.md").read_text()
    assert f"| {status} |" in docs and f"`showtell {' '.join(args)}`" in docs  # and the docs say so


def _refuse(*args, **kwargs):
    raise AssertionError("a model was loaded before the mistake was reported")


# --- training default, model card, error advice ----------------------------------------


def test_training_defaults_to_the_attention_decoder():
    assert ModelConfig().decoder == "show_attend_tell"
    assert "(default: show_attend_tell)" in cli.get_train_parser().format_help()


def test_model_card_names_every_score_and_the_data_used(tmp_path):
    scores = {"beam_size": 3, "guidance_threshold": 0.8, "length_penalty": 1.0, "decoder_precision": "int8",
              "images": 1000, "bleu4": 21.65,
              "cider": 52.85, "meteor": None, "rouge_l": 46.31, "distinct_captions": 82.0, "mean_length": 9.9}
    path = _tiny_checkpoint(tmp_path / "m.pt", val_scores={"bleu4": 5.0, "cider": 1.4, "distinct_captions": 0.1},
                            test_scores=scores)
    card = model_card(Captioner(path))
    assert "Flickr8k, train split: the first 300 of its 6,000 photos (--max-images 300)" in card
    assert "CIDEr-D 1.4" in card and "distinct captions 0.1 %" in card
    assert ("BLEU-4 21.6, CIDEr-D 52.9, ROUGE-L 46.3, distinct captions 82.0 %, mean caption length 9.9 words "
            "(1,000 photos, beam 3, guided at 0.8, length penalty 1, int8 decoder)") in card
    for raw in ("CIDER", "DISTINCT", "ROUGE_L", "MEAN_LENGTH", "bleu4", "beam_size"):
        assert raw not in card, raw


def test_a_panorama_gets_advice_about_its_shape_not_its_pixels(tmp_path):
    path = tmp_path / "pano.png"
    Image.new("RGB", (4200, 200)).save(path)
    with pytest.raises(ImageError) as info:
        load_image(str(path))
    assert "4200x200" in str(info.value) and f"{MAX_ASPECT_RATIO}:1" in str(info.value)
    assert "Crop it" in info.value.advice and "4000x200" in info.value.advice
    assert "megapixels" not in info.value.advice
    page = _image_problem(str(path), info.value)
    assert page.endswith(info.value.advice) and "megapixels" not in page
    assert math.isclose(4000 / 200, MAX_ASPECT_RATIO)


def test_every_training_flag_has_help_and_its_default():
    for action in cli.get_train_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and not action.help.startswith(" ("), action.option_strings


def test_export_keeps_the_models_threshold(tmp_path):
    from showtell.checkpoint import load_checkpoint

    src = _tiny_checkpoint(tmp_path / "src.pt", calibration={"confidence_threshold": -1.25})
    assert cli.main(["export", src, str(tmp_path / "out.pt"), "--fp16"]) == 0
    assert threshold_of(load_checkpoint(str(tmp_path / "out.pt"))) == -1.25


def test_model_card_names_each_dataset_of_a_mixed_run():
    from showtell.webapp import _data_text

    text = _data_text({"datasets": ["f8=../shared/data/flickr8k", "../shared/data/coco-2733@2"],
                       "train_split": "train", "max_images": 300})
    assert text == ("f8 (train split, the first 300 of its 6,000 photos) and coco-2733 (train split, the first 300 "
                    "of its 2,233 photos, weight 2: each caption seen 2 times an epoch), one vocabulary over all "
                    "(--max-images 300)")

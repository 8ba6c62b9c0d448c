"""The int8 decoder (decoder_precision="int8"): what it claims and where it refuses.

float32 stays exact (the captions pinned elsewhere: test_captioner, test_product);
int8 is within a stated tolerance of float32 on real photos, and a bad value,
an unavailable quantized engine or a place int8 cannot run is a clear error."""
import os
import sys

import pytest
import torch

from showtell.config import ShowAttendTellConfig, ShowTellConfig
from showtell.decoders import FusedAttendSteps, Int8Linear, ShowAttendTellDecoder, ShowTellDecoder
from showtell.decoding import DecodeOptions, beam_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tolerance int8 is held to on real photos (beam 3, guided, caption()'s
# defaults): measured on the first 100 Flickr8k test photos, 89 guided and 93
# unguided captions are float32's (93 and 92 of the first 100 coco-2733
# photos), and the log-probabilities of those differ by at most 0.094.
SAME_CAPTIONS = 0.85  # at least this share of the photos get float32's caption
LOGPROB_BOUND = 0.25  # |int8 - float32| log-probability of a caption both give
N_PHOTOS = 100


@pytest.fixture(scope="module")
def bundled():
    """The bundled model, the encoder output of the first Flickr8k test photos,
    and their best captions (guided and not) in float32 and in int8."""
    from conftest import FLICKR8K, _need

    from showtell.captioner import Captioner
    from showtell.datasets import read_flickr8k

    _need(os.path.join(FLICKR8K, "Flickr8k.token.txt"))
    cap = Captioner(runtime="torch")
    items = read_flickr8k(FLICKR8K, "test")[:N_PHOTOS]
    with torch.inference_mode():
        enc = cap.encode(torch.stack([cap.pixels(it.path) for it in items]))
    best = {}
    for guided in (True, False):
        for precision in ("float32", "int8"):
            found = cap.model.caption(enc.for_decoder(cap.model.feature_kind), cap.options(guided=guided),
                                      enc.pooled, decoder_precision=precision)
            best[guided, precision] = [f.hypotheses[0] for f in found]
    return cap, enc, best


@pytest.mark.parametrize("guided", [True, False])
def test_int8_captions_are_float32_s_within_the_tolerance(bundled, guided):
    _, _, best = bundled
    exact, fast = best[guided, "float32"], best[guided, "int8"]
    same = [(a, b) for a, b in zip(exact, fast) if a.tokens == b.tokens]
    assert len(same) >= SAME_CAPTIONS * N_PHOTOS, f"only {len(same)}/{N_PHOTOS} captions are float32's"
    assert max(abs(a.logprob - b.logprob) for a, b in same) <= LOGPROB_BOUND
    # and int8 is int8, not float32 under another name: its numbers differ
    assert any(a.logprob != b.logprob for a, b in same)


def test_int8_steps_read_int8_weights_and_stay_close_to_float32(bundled):
    cap, enc, _ = bundled
    dec = cap.model.decoder
    with torch.no_grad():
        exact, fast = dec.decoding_steps("float32"), dec.decoding_steps("int8")
        assert isinstance(fast, FusedAttendSteps) and isinstance(fast.hidden_product, Int8Linear)
        assert dec.decoding_steps("int8") is fast  # made once, then reused
        feats = enc.for_decoder("spatial")[:4]
        tokens = torch.full((4,), cap.vocab.start_id)
        a, _ = exact.step(tokens, exact.init_state(feats))
        b, _ = fast.step(tokens, fast.init_state(feats))
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    assert la.argmax(-1).tolist() == lb.argmax(-1).tolist()
    top = la.topk(5, dim=-1).indices  # the words beam search reads
    assert (la.gather(1, top) - lb.gather(1, top)).abs().max() < 0.1


def test_int8_captions_are_the_same_alone_or_batched(bundled):
    # Each row is quantized on its own range, so a photo's int8 caption does
    # not depend on the photos decoded with it (as in float32).
    cap, enc, best = bundled
    feats = enc.for_decoder(cap.model.feature_kind)
    for i in (0, 5, 17):
        alone = cap.model.caption(feats[i:i + 1], cap.options(guided=True), enc.pooled[i:i + 1],
                                  decoder_precision="int8")[0].hypotheses[0]
        assert (alone.tokens, alone.logprob) == (best[True, "int8"][i].tokens, best[True, "int8"][i].logprob)


def test_an_int8_product_reads_each_row_on_its_own_range():
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 32), torch.randn(64)
    product = Int8Linear(weight, bias)
    x = torch.rand(3, 32) * 2 - 1
    with_large = torch.cat([x, 100 * torch.randn(1, 32) + 50])  # a row on another scale
    assert torch.equal(product(x), product(with_large)[:3])
    assert torch.equal(product(x[1:2]), product(x)[1:2])
    exact = x @ weight.t() + bias
    assert torch.allclose(product(x), exact, atol=0.15) and not torch.equal(product(x), exact)
    assert product(torch.zeros(2, 32)).sub(bias).abs().max() < 1e-5  # a flat row: exactly the bias


def test_auto_is_the_default_int8_on_a_cpu_and_float32_elsewhere(bundled, monkeypatch):
    from showtell import decoders
    from showtell.decoders import resolve_decoder_precision
    from showtell.ensemble import EnsembleDecoder

    cap, enc, best = bundled
    assert cap.decoder_precision == "int8"  # Captioner() on a CPU with the float32 encoder
    dec = cap.model.decoder
    # CaptionModel.caption() resolves auto the same way: its default captions are int8's
    found = cap.model.caption(enc.for_decoder(cap.model.feature_kind), cap.options(guided=True), enc.pooled)
    assert [f.hypotheses[0] for f in found] == best[True, "int8"]
    assert resolve_decoder_precision("auto", "cuda", "float32", dec) == "float32"
    assert resolve_decoder_precision("auto", "cpu", "bfloat16", dec) == "float32"
    assert resolve_decoder_precision("auto", "cpu", "float32", EnsembleDecoder([dec, dec])) == "float32"
    assert resolve_decoder_precision("float32", "cpu", "float32", dec) == "float32"
    monkeypatch.setattr(decoders, "_quantized_engines", lambda: [])
    assert resolve_decoder_precision("auto", "cpu", "float32", dec) == "float32"  # no quantized engine
    with torch.no_grad():
        # the low-level generate() and decoding_steps() stay exact unless asked
        assert dec.decoding_steps() is dec.decoding_steps("float32") is dec._fused["float32"][1]
        assert dec.decoding_steps().precision == "float32"
        with pytest.raises(ValueError, match="decoder_precision must be one of"):
            dec.decoding_steps("auto")  # resolved before the steps are made


def test_a_bad_decoder_precision_names_the_option():
    from showtell.captioner import Captioner

    with pytest.raises(ValueError, match="decoder_precision must be one of"):
        Captioner(decoder_precision="int4")
    dec = _small_attend_tell()
    with torch.no_grad(), pytest.raises(ValueError, match="decoder_precision"):
        dec.decoding_steps("fp8")
    with pytest.raises(ValueError, match="decoder_precision='int8' runs on a CPU with precision='float32'"):
        Captioner(decoder_precision="int8", precision="bfloat16")


def test_int8_without_a_quantized_engine_is_a_clear_error(monkeypatch):
    import showtell.decoders as decoders

    monkeypatch.setattr(decoders, "_quantized_engines", lambda: [])
    dec = _small_attend_tell()
    with torch.no_grad(), pytest.raises(RuntimeError, match="decoder_precision='int8' needs one of PyTorch's "
                                                              "quantized engines.*use decoder_precision='float32'"):
        dec.decoding_steps("int8")
    with torch.no_grad():
        assert isinstance(dec.decoding_steps("float32"), FusedAttendSteps)  # float32 is unaffected


def test_int8_refuses_training_gradients_and_other_devices():
    dec = _small_attend_tell()
    with pytest.raises(ValueError, match="is for inference"):
        dec.decoding_steps("int8")  # gradients on
    with torch.no_grad(), pytest.raises(ValueError, match="runs on a CPU only"):
        dec.to("meta").decoding_steps("int8")


def test_int8_show_tell_decodes_like_float32():
    """NIC's int8 steps: PyTorch's dynamically quantized LSTM and linear layers."""
    torch.manual_seed(0)
    dec = ShowTellDecoder(ShowTellConfig(embed_dim=32, hidden_dim=32), 20, 16).eval()
    feats = torch.randn(3, 16)
    opts = DecodeOptions(beam_size=3, max_len=6)
    with torch.no_grad():
        fast = dec.decoding_steps("int8")
        assert fast is not dec and dec.decoding_steps("int8") is fast
        assert type(fast.lstm).__module__.startswith("torch.ao.nn.quantized")
        a, _ = dec.step(torch.tensor([1, 2, 3]), dec.init_state(feats))
        b, _ = fast.step(torch.tensor([1, 2, 3]), fast.init_state(feats))
        assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05)
        found = beam_search(fast, feats, opts, 2, 1, 3)
    assert all(hyps and hyps[0].tokens for hyps in found)
    with torch.no_grad():
        dec.out.weight.mul_(2)  # a changed weight makes a new int8 copy
        assert dec.decoding_steps("int8") is not fast


def test_an_ensemble_decodes_in_float32_only():
    from showtell.ensemble import EnsembleDecoder

    ens = EnsembleDecoder([_small_attend_tell(), _small_attend_tell()])
    with pytest.raises(ValueError, match="float32 only"):
        ens.decoding_steps("int8")


def test_the_command_line_names_the_precision(capsys):
    from showtell.cli import main

    model = os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt")
    # --store records the checkpoint's own (float32) scores
    assert main(["evaluate", model, "--store", "--decoder-precision", "int8"]) == 2
    assert "--decoder-precision" in capsys.readouterr().err
    assert main(["caption", "photo.jpg", "--decoder-precision", "int4"]) == 2
    assert "--decoder-precision: invalid choice: 'int4'" in capsys.readouterr().err


def test_three_worlds_scores_int8_against_float32(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import three_worlds

    calls = []

    def run(args):
        calls.append(args)
        return {}

    monkeypatch.setattr(three_worlds, "_run", run)
    three_worlds.score("m.pt", None, int8=True)
    evaluates = [c for c in calls if c[0] == "evaluate"]
    compares = [c for c in calls if c[0] == "compare"]
    assert len(evaluates) == len(compares) == len(three_worlds.WORLDS)
    assert all(c[1] == "m.pt" and c[-2:] == ["--decoder-precision", "int8"] for c in evaluates)
    # B is the model in int8, A the same model in float32
    assert all(c[1:3] == ["m.pt", "m.pt"] and c[-2:] == ["--int8", "b"] for c in compares)


def _small_attend_tell() -> ShowAttendTellDecoder:
    torch.manual_seed(0)
    return ShowAttendTellDecoder(ShowAttendTellConfig(embed_dim=16, hidden_dim=16, attention_dim=8), 20, 12).eval()

"""Beam search and greedy decoding, on scripted decoders whose preferences
are known, and on a small random model."""
import pytest
import torch

from showtell.decoders import DECODERS
from showtell.decoding import DecodeOptions, beam_search, greedy_decode

from synthetic import END, PAD, START, UNK, ScriptedDecoder, random_decoder, random_features  # noqa: F401

V = 12


def _table(prefs):
    """prefs: {prev: {word: logit}}; unspecified logits are -10."""
    t = torch.full((V, V), -10.0)
    for prev, row in prefs.items():
        for w, logit in row.items():
            t[prev, w] = logit
    return t


def _run(decoder, opts, b=2):
    feats = torch.zeros(b, 4)
    return beam_search(decoder, feats, opts, END, START, UNK), greedy_decode(decoder, feats, opts, END, START, UNK)


def _has_repeated_trigram(words):
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(grams) != len(set(grams))


def test_repeated_trigrams_and_words_are_blocked():
    # Left alone, this decoder loops "4 5 6 4 5 6 ..." and never ends.
    cyc = _table({START: {4: 5}, 4: {5: 5, 7: 1, END: 0}, 5: {6: 5, 8: 1, END: 0}, 6: {4: 5, 9: 1, END: 0},
                  7: {END: 3}, 8: {END: 3}, 9: {END: 3}})
    loose = DecodeOptions(beam_size=3, n_best=3, max_len=10, block_repeat_trigrams=False)
    beams, greedy = _run(ScriptedDecoder(cyc), loose)
    assert _has_repeated_trigram(greedy[0].tokens)
    strict = DecodeOptions(beam_size=3, n_best=3, max_len=10)
    beams, greedy = _run(ScriptedDecoder(cyc), strict)
    for hyp in [h for per in beams for h in per] + greedy:
        assert not _has_repeated_trigram(hyp.tokens), hyp.tokens
    # "the same word twice in a row"
    stutter = _table({START: {4: 5}, 4: {4: 5, 5: 1}, 5: {END: 5}})
    beams, greedy = _run(ScriptedDecoder(stutter), DecodeOptions(beam_size=2, max_len=6))
    assert greedy[0].tokens == [4, 5] and beams[0][0].tokens == [4, 5]
    beams, greedy = _run(ScriptedDecoder(stutter), DecodeOptions(beam_size=2, max_len=6, block_repeat_words=False,
                                                                 block_repeat_trigrams=False))
    assert greedy[0].tokens[:3] == [4, 4, 4]


def test_unknown_word_caption_never_preferred():
    t = _table({START: {UNK: 8, 4: 1}, UNK: {END: 5}, 4: {END: 5}})
    beams, greedy = _run(ScriptedDecoder(t), DecodeOptions(beam_size=3, n_best=2))
    assert greedy[0].tokens == [4]
    assert all(UNK not in h.tokens for per in beams for h in per)
    beams, greedy = _run(ScriptedDecoder(t), DecodeOptions(beam_size=3, ban_unk=False))
    assert greedy[0].tokens == [UNK]


def test_hypothesis_without_end_is_returned_at_length_cap():
    endless = torch.full((V, V), -10.0)
    endless[:, 4:] = 0.0  # uniform over ordinary words; <end> nearly impossible but not forbidden
    endless[:, END] = -1e9
    opts = DecodeOptions(beam_size=3, n_best=3, max_len=7)
    beams, greedy = _run(ScriptedDecoder(endless), opts)
    for per in beams:
        assert len(per) == 3
        for h in per:
            assert len(h.tokens) == 7
    assert len(greedy[0].tokens) == 7


def test_min_len_delays_end():
    t = _table({START: {END: 5, 4: 1}, 4: {END: 5, 5: 1}, 5: {END: 5, 6: 1}, 6: {END: 5}})
    beams, greedy = _run(ScriptedDecoder(t), DecodeOptions(beam_size=2, min_len=3))
    assert len(greedy[0].tokens) == 3 and len(beams[0][0].tokens) == 3
    beams, greedy = _run(ScriptedDecoder(t), DecodeOptions(beam_size=2, min_len=1))
    assert len(greedy[0].tokens) == 1


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_n_best_sorted_distinct_and_batch_equals_one_by_one(decoder):
    dec = random_decoder(decoder)
    feats = random_features(dec, 5, seed=1)
    opts = DecodeOptions(beam_size=5, n_best=4, max_len=8)
    together = beam_search(dec, feats, opts, END, START, UNK)
    for i, per in enumerate(together):
        assert len(per) == 4
        scores = [h.score for h in per]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in per}) == 4
        alone = beam_search(dec, feats[i:i + 1], opts, END, START, UNK)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in per]
        assert [h.score for h in alone] == pytest.approx(scores, abs=1e-4)
    # Beam search finds captions at least as probable as greedy's.
    greedy = greedy_decode(dec, feats, DecodeOptions(beam_size=1, max_len=8), END, START, UNK)
    for g, per in zip(greedy, together):
        assert per[0].score >= g.score - 1e-5


def test_logprob_is_the_models_probability_of_the_caption():
    dec = random_decoder("show_tell")
    feats = torch.randn(1, 10)
    hyp = beam_search(dec, feats, DecodeOptions(beam_size=3, max_len=8), END, START, UNK)[0][0]
    seq = torch.tensor([[START] + hyp.tokens + ([END] if hyp.finished else [])])
    with torch.no_grad():
        logp = dec(feats, seq).log_softmax(-1)[0]
    expected = sum(float(logp[t, w]) for t, w in enumerate(seq[0, 1:].tolist()))
    assert hyp.logprob == pytest.approx(expected, abs=1e-4)


def test_length_penalty_changes_the_ranking_toward_longer_captions():
    t = _table({START: {4: 0.3, 5: 0}, 4: {END: 0}, 5: {6: 0}, 6: {7: 0}, 7: {END: 0}})
    short, _ = _run(ScriptedDecoder(t), DecodeOptions(beam_size=2, length_penalty=0.0), b=1)
    long, _ = _run(ScriptedDecoder(t), DecodeOptions(beam_size=2, length_penalty=1.0), b=1)
    assert short[0][0].tokens == [4]
    assert long[0][0].tokens == [5, 6, 7]


def test_options_are_validated():
    with pytest.raises(ValueError, match="n_best"):
        DecodeOptions(beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="beam_size"):
        DecodeOptions(beam_size=0)
    with pytest.raises(ValueError, match="min_len"):
        DecodeOptions(min_len=30, max_len=20)


def test_float32_on_cuda_means_no_tf32_convolutions(monkeypatch):
    """On an H200 cuDNN's default TF32 changed 1 of 100 captions against the
    CPU's, none without it: float32 inference turns it off, and back on when the
    last of concurrent users (web requests) leaves. Needs no GPU: it only sets flags."""
    import threading

    from showtell.decoding import autocast, exact_float32

    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    with exact_float32("cpu"):
        assert cudnn.allow_tf32  # nothing to do off CUDA
    with autocast(torch.device("cuda"), "float32"):
        assert not cudnn.allow_tf32
    assert cudnn.allow_tf32
    # two overlapping users (threads): TF32 stays off until both have left
    inside, leave = threading.Event(), threading.Event()

    def other():
        with exact_float32("cuda"):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    with exact_float32("cuda"):
        assert not cudnn.allow_tf32
    assert not cudnn.allow_tf32  # the other thread is still inside
    leave.set()
    t.join(10)
    assert cudnn.allow_tf32
    # a process that had turned TF32 off keeps it off
    cudnn.allow_tf32 = False
    with exact_float32("cuda"):
        pass
    assert not cudnn.allow_tf32

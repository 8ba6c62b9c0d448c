"""Constrained beam search: the constraint words appear, disjunctive sets, no
constraint = plain beam search, batched = one by one, on scripted and random
decoders and on the bundled model with a real photo."""
import os

import pytest
import torch

from showtell.constrained import MAX_CONSTRAINTS, constrained_beam_search
from showtell.decoders import DECODERS
from showtell.decoding import DecodeOptions, beam_search

from synthetic import END, PAD, START, UNK, ScriptedDecoder, random_decoder, random_features  # noqa: F401

V = 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table(prefs, rest=-10.0, end=None):
    """prefs: {prev: {word: logit}}; unspecified logits are ``rest`` (``end`` for <end>)."""
    t = torch.full((V, V), rest)
    if end is not None:
        t[:, END] = end
    for prev, row in prefs.items():
        for w, logit in row.items():
            t[prev, w] = logit
    return t


def _search(decoder, constraints, opts, feats=None):
    feats = torch.zeros(len(constraints), 4) if feats is None else feats
    return constrained_beam_search(decoder, feats, opts, END, START, UNK, constraints)


# "4 END" is the model's favourite; 6 and 7 are unlikely but possible detours.
SIMPLE = _table({START: {4: 5, 5: 2, 6: -1}, 4: {END: 5, 6: 0, 7: -1}, 5: {END: 5, 7: 1}, 6: {END: 5, 4: 1},
                 7: {END: 5}})


def test_constraint_word_appears_and_unconstrained_is_plain_beam_search():
    opts = DecodeOptions(beam_size=3, n_best=3, max_len=6)
    plain = beam_search(ScriptedDecoder(SIMPLE), torch.zeros(1, 4), opts, END, START, UNK)[0]
    assert plain[0].tokens == [4]
    res = _search(ScriptedDecoder(SIMPLE), [[(6,)]], opts)[0]
    assert res.satisfied
    assert [h.tokens for h in res.hypotheses][0] == [4, 6]  # the most probable caption holding 6
    for h in res.hypotheses:
        assert 6 in h.tokens
    scores = [h.score for h in res.hypotheses]
    assert scores == sorted(scores, reverse=True)
    # Two constraints: both words, in whatever order is most probable.
    res = _search(ScriptedDecoder(SIMPLE), [[(6,), (7,)]], opts)[0]
    assert res.satisfied and all(6 in h.tokens and 7 in h.tokens for h in res.hypotheses)


def test_disjunctive_set_is_met_by_either_word():
    opts = DecodeOptions(beam_size=3, n_best=3, max_len=6)
    res = _search(ScriptedDecoder(SIMPLE), [[(6, 7)]], opts)[0]
    assert res.satisfied
    found = {w for h in res.hypotheses for w in h.tokens if w in (6, 7)}
    assert found == {6, 7}  # some captions say 6, others 7
    assert all(6 in h.tokens or 7 in h.tokens for h in res.hypotheses)


def test_impossible_constraint_falls_back_and_says_so():
    # Word 8 can never be produced (logit -inf), so no caption can hold it.
    t = SIMPLE.clone()
    t[:, 8] = float("-inf")
    res = _search(ScriptedDecoder(t), [[(8,)]], DecodeOptions(beam_size=2, max_len=5))[0]
    assert not res.satisfied
    assert res.hypotheses and res.hypotheses[0].tokens == [4]


def test_options_still_apply():
    # min_len: the constraint cannot be met by a caption shorter than min_len.
    res = _search(ScriptedDecoder(SIMPLE), [[(6,)]], DecodeOptions(beam_size=3, n_best=2, min_len=3, max_len=6))[0]
    assert all(len(h.tokens) >= 3 and 6 in h.tokens for h in res.hypotheses)
    # An <unk> constraint is refused rather than silently never met.
    with pytest.raises(ValueError, match="special token"):
        _search(ScriptedDecoder(SIMPLE), [[(UNK,)]], DecodeOptions())
    with pytest.raises(ValueError, match="empty"):
        _search(ScriptedDecoder(SIMPLE), [[()]], DecodeOptions())
    with pytest.raises(ValueError, match="at most"):
        _search(ScriptedDecoder(SIMPLE), [[(4,)] * (MAX_CONSTRAINTS + 1)], DecodeOptions())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _search(ScriptedDecoder(SIMPLE), [[(V + 3,)]], DecodeOptions())
    with pytest.raises(ValueError, match="constraints for 2 images"):
        _search(ScriptedDecoder(SIMPLE), [[], []], DecodeOptions(), feats=torch.zeros(3, 4))


def test_length_penalty_ranks_constrained_captions_too():
    # The captions holding 9 that can end: "4 9" (more probable, shorter) and "5 6 9".
    t = _table({START: {4: 0.3, 5: 0}, 4: {9: 0, END: 0}, 5: {6: 0, 7: 0}, 6: {9: 0}, 9: {END: 0}},
               rest=-50.0, end=float("-inf"))
    t[[START, 5, 7, 8, 10, 11], 9] = float("-inf")  # 9 only after 4 or 6
    short = _search(ScriptedDecoder(t), [[(9,)]], DecodeOptions(beam_size=2, length_penalty=0.0))[0]
    long = _search(ScriptedDecoder(t), [[(9,)]], DecodeOptions(beam_size=2, length_penalty=1.0))[0]
    assert short.hypotheses[0].tokens == [4, 9]
    assert long.hypotheses[0].tokens == [5, 6, 9]


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_batched_equals_one_by_one_and_unconstrained_rows_equal_beam_search(decoder):
    dec = random_decoder(decoder)
    feats = random_features(dec, 5, seed=1)
    opts = DecodeOptions(beam_size=4, n_best=3, max_len=8)
    constraints = [[(7,)], [], [(11, 12), (20,)], [], [(25,)]]
    together = constrained_beam_search(dec, feats, opts, END, START, UNK, constraints)
    plain = beam_search(dec, feats, opts, END, START, UNK)
    for i, res in enumerate(together):
        assert res.satisfied
        alone = constrained_beam_search(dec, feats[i:i + 1], opts, END, START, UNK, [constraints[i]])[0]
        assert [h.tokens for h in alone.hypotheses] == [h.tokens for h in res.hypotheses]
        assert [h.score for h in alone.hypotheses] == pytest.approx([h.score for h in res.hypotheses], abs=1e-5)
        scores = [h.score for h in res.hypotheses]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        for h in res.hypotheses:
            for words in constraints[i]:
                assert set(words) & set(h.tokens), (i, words, h.tokens)
        if not constraints[i]:
            # In a batch with constrained images, an unconstrained one is decoded as by plain beam
            # search: the same captions; scores equal up to float summation order, since the
            # decoder runs on more rows (they came out bit-identical on the machine this was written on).
            assert [h.tokens for h in res.hypotheses] == [h.tokens for h in plain[i]]
            assert [h.score for h in res.hypotheses] == pytest.approx([h.score for h in plain[i]], abs=1e-5)
            assert [h.logprob for h in res.hypotheses] == pytest.approx([h.logprob for h in plain[i]], abs=1e-5)
        else:
            # Meeting a constraint costs probability, never gains it.
            assert res.hypotheses[0].score <= plain[i][0].score + 1e-6
    # A batch without any constraint is plain beam search, bit for bit.
    none = constrained_beam_search(dec, feats, opts, END, START, UNK, [[]] * 5)
    assert [r.hypotheses for r in none] == plain


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_one_image_searched_twice_through_source_equals_two_copies_of_it(decoder):
    # The guidance fallback searches each guided image with and without its
    # constraints; ``source`` lets both searches read one row of features
    # (projected once) and must find what two copies of the row would.
    dec = random_decoder(decoder)
    feats = random_features(dec, 2, seed=2)
    opts = DecodeOptions(beam_size=3, n_best=2, max_len=8)
    constraints = [[(7,)], [(11, 12)], [], []]
    copies = beam_search(dec, feats[[0, 1, 0, 1]], opts, END, START, UNK, constraints)
    shared = beam_search(dec, feats, opts, END, START, UNK, constraints, torch.tensor([0, 1, 0, 1]))
    assert [[h.tokens for h in per] for per in shared] == [[h.tokens for h in per] for per in copies]
    assert [h.score for per in shared for h in per] == pytest.approx([h.score for per in copies for h in per], abs=1e-5)
    with pytest.raises(ValueError, match="source must index the 2 rows"):
        beam_search(dec, feats, opts, END, START, UNK, constraints, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="constraints for 4 images but features for 3"):
        beam_search(dec, feats, opts, END, START, UNK, constraints, torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_images_with_nothing_left_to_search_leave_the_batch_and_change_no_caption(decoder):
    # A batch's images finish at different steps; one with no hypothesis left
    # leaves the batch (its rows stop costing a step), and every image's
    # captions stay what it gets alone.
    dec = random_decoder(decoder)
    with torch.no_grad():
        dec.out.bias[END] = 0.3  # captions of a few words, ending at different steps
    rows = []

    class Counting:
        def init_state(self, features):
            return dec.init_state(features)

        def step(self, tokens, state):
            rows.append(len(tokens))
            return dec.step(tokens, state)

        def reorder_state(self, state, order):
            return dec.reorder_state(state, order)

    feats = random_features(dec, 8, seed=3)
    opts = DecodeOptions(beam_size=3, n_best=2, max_len=12)
    constraints = [[(7,)], [], [(11, 12)], [], [], [(25,)], [], []]
    together = beam_search(Counting(), feats, opts, END, START, UNK, constraints)
    assert rows[0] == 8 * 2 * 3 and rows[-1] < rows[0] / 2  # the batch shrank as images finished
    for i in range(8):
        alone = beam_search(dec, feats[i:i + 1], opts, END, START, UNK, [constraints[i]])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-5)


def test_real_model_names_the_cat():
    """The bundled Flickr8k model calls examples/cat.jpg a child with a ball;
    constrained to "cat", its caption says "cat"."""
    from showtell.images import load_image
    from showtell.model import CaptionModel

    model = CaptionModel.from_checkpoint(os.path.join(ROOT, "showtell", "models", "showtell-flickr8k.pt"))
    vocab = model.vocab
    x = model.preprocessing(load_image(os.path.join(ROOT, "examples", "cat.jpg"))).unsqueeze(0)
    with torch.no_grad():
        feats = model.encode(x)
    opts = DecodeOptions(beam_size=3, n_best=2)
    cat = (vocab.index["cat"], vocab.index["cats"])
    res = constrained_beam_search(model.decoder, feats, opts, vocab.end_id, vocab.start_id, vocab.unk_id, [[cat]])[0]
    assert res.satisfied
    for h in res.hypotheses:
        words = vocab.decode(h.tokens)
        assert "cat" in words or "cats" in words, words

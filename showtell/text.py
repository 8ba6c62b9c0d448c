"""Caption tokenizer and vocabulary.

The tokenizer needs no downloaded data (``nltk.word_tokenize`` does): captions
are lowercased, every character that is not a letter, digit or apostrophe
becomes a space, and the result is split on white space. The same function
tokenizes training captions, BLEU references and hypotheses.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

_NON_WORD = re.compile(r"[^a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop punctuation, split: ``"A dog's ball."`` -> ``["a", "dog's", "ball"]``."""
    words = _NON_WORD.sub(" ", text.lower()).split()
    # A lone apostrophe or one at the edges is punctuation, not part of a word.
    words = [w.strip("'") for w in words]
    return [w for w in words if w]


class Vocabulary:
    """Maps words to ids and back. Ids 0..3 are the special tokens."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not hold a word twice")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> "Vocabulary":
        """Vocabulary of the words seen at least ``min_count`` times in tokenized
        ``captions``, most frequent first (ties alphabetical, so builds are reproducible)."""
        counts = Counter(w for tokens in captions for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>`` as ids; unknown words map to ``<unk>``;
        at most ``max_len`` words are kept."""
        if max_len is not None:
            tokens = tokens[:max_len]
        return [self.start_id] + [self.index.get(w, self.unk_id) for w in tokens] + [self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of a generated id sequence, stopping at ``<end>``, without special tokens
        other than ``<unk>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.words[i])
        return words

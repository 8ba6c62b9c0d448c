"""Tags from the encoder's ImageNet classifier, and the caption words they stand for.

Guided captioning (P. Anderson, B. Fernando, M. Johnson, S. Gould, "Guided Open
Vocabulary Image Captioning with Constrained Beam Search", EMNLP 2017): the
encoder is an ImageNet-1k classifier whose head ships with its weights; when it
is confident that a photo shows, say, an espresso, the caption must contain
"coffee" (see :mod:`showtell.constrained`).

From class to word: each class maps to the most specific word of the caption
vocabulary on its WordNet hypernym path (tabby -> domestic_cat -> *cat*,
golden_retriever -> retriever -> ... -> *dog*, espresso -> *coffee*,
mountain_bike -> *bicycle/bike*), or to nothing. The WordNet side is precomputed
in ``showtell/data/imagenet_classes.json`` (scripts/build_imagenet_words.py);
the vocabulary-specific result is a :class:`GuidanceMap`, plain lists of strings
that a checkpoint stores, so captioning needs neither WordNet nor that file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

CLASS_TABLE = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.json")

# Synsets too general to be a constraint; the walk up a hypernym path stops
# below them. A general word says little the caption model does not already say,
# and it would gather unrelated classes into one word whose summed probability
# looks confident whatever the classifier actually recognised: without the stop
# at "animal", 121 classes (lizards, crabs, lions, zebras: words the Flickr8k
# vocabulary lacks) would all become "animal"; without "device", 51 classes
# (clocks, locks, radios...) would become "device"; "covering" 22, "equipment"
# 19, "instrument" 17, "food" 20. So the list holds WordNet's top levels and the
# broad categories just below them whose lemmas are caption words. A class whose
# only in-vocabulary words lie above a stop gives no constraint, and decoding
# for it is plain beam search.
STOP_SYNSETS = {
    "n00001740": "entity",
    "n00001930": "physical_entity",
    "n00002137": "abstraction",
    "n00002684": "object, physical_object",
    "n00003553": "whole, unit",
    "n00004258": "living_thing, animate_thing",
    "n00004475": "organism, being",
    "n00015388": "animal, animate_being, beast, brute, creature, fauna",
    "n00007846": "person, individual, someone, somebody, mortal, soul",
    "n00017222": "plant, flora, plant_life",
    "n00019613": "substance",
    "n00020827": "matter",
    "n00021265": "food, nutrient",
    "n07555863": "food, solid_food",
    "n00021939": "artifact, artefact",
    "n03575240": "instrumentality, instrumentation",
    "n03183080": "device",
    "n03574816": "instrument",  # clocks, barometers: a caption's "instrument" is musical
    "n03094503": "container",
    "n04341686": "structure, construction",
    "n03122748": "covering",
    "n03563967": "implement",
    "n03294048": "equipment",
    "n03076708": "commodity, trade_good, good",
    "n09287968": "geological_formation, formation",
    "n00027167": "location",
    "n04564698": "way",
    "n00031264": "group, grouping",
    # Superordinate categories (Rosch et al. 1976, "Basic objects in natural
    # categories": furniture, vehicle, tool, clothing are their examples) are
    # words people rarely use to name a thing they see: a medicine chest made
    # "a girl is sitting in a furniture", a pickup "vehicle" instead of nothing.
    # Their classes give no constraint unless a basic-level word names them
    # (a pickup is still a "truck", a rocking chair a "chair").
    "n03405725": "furniture, piece_of_furniture, article_of_furniture",
    "n04524313": "vehicle",
    "n03699975": "machine",
    "n03700963": "machine, simple_machine",
    "n04451818": "tool",
    "n03051540": "clothing, article_of_clothing, vesture, wear, wearable, habiliment",
    "n02796623": "barrier",
}

# Above the class itself, a lemma names a synset only if the synset is among the
# lemma's two most frequent noun senses (WordNet's order, from its sense-tagged
# corpus): "bike" (sense 2: bicycle) and "dish" (sense 2: food) count; "wheel"
# (sense 7) and "cycle" (sense 6) do not name a bicycle, nor "game" (sense 4+) a
# grouse. Senses the corpus never saw are in no particular order, so their rank
# says nothing: a lemma with no attested sense counts ("mug", 4th of 4 untagged).
# The class's own head word always counts: ImageNet's photos show that synset,
# so "crane" the machine and "mouse" the computer's are named by their word
# (but not "board" for "dining_table, board", whose head word is "dining_table").
# Rank 3 would add "table" for a dining table and "bowl" for a soup bowl, but
# also "arm" for a missile and "ball" for a bubble: a wrong constraint forces a
# wrong word, while a missing one only leaves the caption as it was.
MAX_SENSE_RANK = 2

# Caption writers name things at the basic level: "a dog", not "a terrier".
# When a word higher on the path (still below the stops) is this many times
# more frequent than the most specific one, the higher one is taken. Frequency
# is read from the vocabulary's order (Vocabulary.build sorts words by count,
# and by Zipf's law a rank 10x smaller is a word about 10x more frequent):
# terrier, retriever, poodle, beagle -> dog; but coffee stays coffee (beverage is
# rarer) and duck stays duck (bird is less than 10x more frequent).
BASIC_LEVEL_RATIO = 10


def load_class_table(path: str = CLASS_TABLE) -> dict[str, Any]:
    """The committed ImageNet class table (classes, hypernym paths, synset lemmas)."""
    with open(path) as f:
        table = json.load(f)
    if len(table.get("classes", ())) != 1000:
        raise ValueError(f"{path}: expected 1000 ImageNet classes, got {len(table.get('classes', ()))}")
    return table


def _forms(lemma: str, vocab: set[str]) -> list[str]:
    """The vocabulary words that say ``lemma``: itself and its plural (captions say
    "two dogs" as often as "a dog"). Multiword lemmas never match: the tokenizer
    splits on spaces, so the vocabulary has no "golden_retriever"."""
    w = lemma.lower()
    if "_" in w or "-" in w:
        return []
    plural = w[:-1] + "ies" if w.endswith("y") and w[-2:-1] not in "aeiou" else \
        w + "es" if w.endswith(("s", "x", "z", "ch", "sh")) else w + "s"
    return [f for f in (w, plural) if f in vocab]


def _synset_words(entry: Mapping[str, Any], vocab: set[str], is_class: bool) -> list[str]:
    words = []
    for i, (lemma, rank, tagged) in enumerate(zip(entry["lemmas"], entry["sense_rank"], entry["tagged_senses"])):
        if (is_class and i == 0) or rank <= MAX_SENSE_RANK or tagged == 0:
            words += [w for w in _forms(lemma, vocab) if w not in words]
    return words


def class_words(table: Mapping[str, Any], vocab_words: Sequence[str]) -> list[tuple[str, ...]]:
    """For each class, the caption words that name it, or ``()``.

    Walking up the class's hypernym paths (cut below :data:`STOP_SYNSETS`), the
    first level with any in-vocabulary lemma gives the words (a disjunctive set:
    any one of them names the class; WordNet may give a class several paths, and
    all synsets of that level count). A higher level replaces it when its words
    are :data:`BASIC_LEVEL_RATIO` times more frequent. ``vocab_words`` must be in
    frequency order, as :meth:`showtell.text.Vocabulary.build` makes them."""
    vocab = set(vocab_words)
    rank = {w: i for i, w in enumerate(vocab_words)}
    synsets = table["synsets"]
    out = []
    for cls in table["classes"]:
        paths = []
        for path in cls["paths"]:
            cut = next((i for i, s in enumerate(path) if s in STOP_SYNSETS), len(path))
            paths.append(path[:cut])
        levels = []  # the in-vocabulary words of each level that has any, most specific first
        for depth in range(max(len(p) for p in paths)):
            words: list[str] = []
            for p in paths:
                if depth < len(p):
                    words += [w for w in _synset_words(synsets[p[depth]], vocab, depth == 0) if w not in words]
            if words:
                levels.append(words)
        chosen: list[str] = levels[0] if levels else []
        for words in levels[1:]:
            if min(rank[w] for w in words) * BASIC_LEVEL_RATIO <= min(rank[w] for w in chosen):
                chosen = words
        out.append(tuple(chosen))
    return out


@dataclass(frozen=True)
class Tag:
    """One ImageNet class the encoder's classifier sees in a photo."""
    class_index: int
    name: str
    prob: float
    words: tuple[str, ...]  # the caption words that name it; () if none


@dataclass(frozen=True)
class WordTag:
    """A set of caption words and the probability that the photo shows one of
    the classes they name: the sum over all of those classes."""
    words: tuple[str, ...]
    prob: float
    classes: tuple[str, ...]  # its most probable classes (at most 3), most probable first


@dataclass(frozen=True)
class GuidanceMap:
    """The 1,000 ImageNet class names and, per class, the caption words of one
    vocabulary that name it. Plain strings, so a checkpoint can store it
    (:meth:`to_dict` / :meth:`from_dict`)."""
    names: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if len(self.names) != len(self.words):
            raise ValueError(f"guidance map has {len(self.names)} class names but {len(self.words)} word sets")
        # Classes that name the same word set form one group; their probabilities add up.
        groups: dict[tuple[str, ...], int] = {}
        group_of_class = [groups.setdefault(w, len(groups)) if w else -1 for w in self.words]
        object.__setattr__(self, "_group_words", list(groups))
        object.__setattr__(self, "_group_of_class", torch.tensor(group_of_class, dtype=torch.long))

    @classmethod
    def for_vocabulary(cls, vocab_words: Sequence[str], table: Mapping[str, Any] | None = None) -> "GuidanceMap":
        """The map for a caption vocabulary (in frequency order), from the committed class table."""
        table = load_class_table() if table is None else table
        return cls(tuple(c["name"] for c in table["classes"]), tuple(class_words(table, vocab_words)))

    def to_dict(self) -> dict[str, list]:
        return {"names": list(self.names), "words": [list(w) for w in self.words]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], vocab_words: Sequence[str] | None = None) -> "GuidanceMap":
        """Rebuild from :meth:`to_dict`'s output; with ``vocab_words``, check that
        every word is in that vocabulary (a map belongs to one vocabulary)."""
        if not isinstance(d, Mapping) or set(d) != {"names", "words"}:
            raise ValueError("a guidance map must be a dict with exactly the keys 'names' and 'words'")
        names, words = d["names"], d["words"]
        if not all(isinstance(n, str) for n in names):
            raise ValueError("guidance map: class names must be strings")
        if not all(isinstance(ws, (list, tuple)) and all(isinstance(w, str) for w in ws) for ws in words):
            raise ValueError("guidance map: each class's words must be a list of strings")
        if vocab_words is not None:
            vocab = set(vocab_words)
            missing = sorted({w for ws in words for w in ws} - vocab)
            if missing:
                raise ValueError(f"guidance map names words that are not in the vocabulary: {missing[:10]}")
        return cls(tuple(names), tuple(tuple(ws) for ws in words))

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.size(1) != len(self.names):
            raise ValueError(f"expected classifier logits of shape (B, {len(self.names)}), got {tuple(logits.shape)}")
        return logits.detach().float().softmax(dim=-1).cpu()

    def tags(self, logits: torch.Tensor, k: int = 5) -> list[list[Tag]]:
        """The ``k`` most probable classes of each image, from classifier logits (B, 1000)."""
        prob, idx = self._probs(logits).topk(k, dim=-1)  # (B, k)
        return [[Tag(i, self.names[i], p, self.words[i]) for i, p in zip(ri, rp)]
                for ri, rp in zip(idx.tolist(), prob.tolist())]

    def word_tags(self, logits: torch.Tensor, k: int = 3) -> list[list[WordTag]]:
        """The ``k`` most probable word sets of each image, each with the summed
        probability of every class that maps to it (five dog breeds at 15% each
        are 75% "dog": the classifier is unsure which dog, not whether a dog)."""
        probs = self._probs(logits)  # (B, 1000)
        mapped = self._group_of_class >= 0
        n_groups = len(self._group_words)
        if n_groups == 0:
            return [[] for _ in range(probs.size(0))]
        group_prob = torch.zeros(probs.size(0), n_groups).index_add_(
            1, self._group_of_class[mapped], probs[:, mapped])  # (B, G)
        top_prob, top_group = group_prob.topk(min(k, n_groups), dim=-1)  # (B, k)
        # Each tag's most probable classes (at most 3), for every image and tag at once:
        # the group's members come first (probabilities >= 0 against the others' -1).
        in_group = self._group_of_class.view(1, 1, -1) == top_group.unsqueeze(2)  # (B, k, 1000)
        members = in_group.sum(dim=2).clamp(max=3).tolist()  # (B, k)
        best = torch.where(in_group, probs.unsqueeze(1), -1.0).topk(3, dim=2).indices.tolist()  # (B, k, 3)
        return [[WordTag(self._group_words[g], p, tuple(self.names[i] for i in classes[:n]))
                 for g, p, classes, n in zip(gs, ps, bs, ns)]
                for gs, ps, bs, ns in zip(top_group.tolist(), top_prob.tolist(), best, members)]


def confident_constraints(word_tags: Sequence[WordTag], word_index: Mapping[str, int], threshold: float,
                          max_constraints: int = 1) -> list[tuple[int, ...]]:
    """The constraints for one image: the word ids of each word set whose
    probability is at least ``threshold``, most probable first, at most
    ``max_constraints`` of them (each constraint is a disjunctive set: any one
    of its words satisfies it). ``[]`` when nothing is confident."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if max_constraints < 0:
        raise ValueError(f"max_constraints must be >= 0, got {max_constraints}")
    out = []
    for tag in sorted(word_tags, key=lambda t: -t.prob):
        if tag.prob < threshold or len(out) >= max_constraints:
            break
        missing = [w for w in tag.words if w not in word_index]
        if missing:
            raise ValueError(f"guidance words {missing} are not in the caption vocabulary: "
                             f"the guidance map was built for another vocabulary")
        out.append(tuple(word_index[w] for w in tag.words))
    return out

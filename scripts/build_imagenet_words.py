"""Build showtell/data/imagenet_classes.json: the 1,000 ImageNet-1k classes with
their WordNet 3.0 hypernym paths, so that guided captioning (showtell.guidance)
can map a class to a caption word without WordNet installed.

Run once; the output is committed. Inputs, all local:

- the sorted ImageNet-1k wnid list, one per line (n01440764 ... n15075141): the
  order of every ImageNet-1k classifier's outputs. timm's wheel ships it as
  ``timm/data/_info/imagenet_synsets.txt`` (``pip download --no-deps timm`` and
  unzip that one file; timm is not a dependency of showtell);
- WordNet 3.0 from Debian's ``wordnet-base`` (``/usr/share/wordnet``): the
  hypernym pointers of ``data.noun`` and the sense order of ``index.noun``;
- the human class names from torchvision's weights metadata (no download).

    python scripts/build_imagenet_words.py /tmp/timm/data/_info/imagenet_synsets.txt

The output holds, per class, its index, wnid, name and every hypernym path as a
list of wnids (the class first, ``entity`` last), and, per synset met on those
paths, its lemmas with each lemma's noun sense rank (1 = the lemma's most
frequent meaning) and how many of the lemma's senses WordNet ranks by corpus
counts (guidance uses both to skip rare senses such as "wheel" for a bicycle).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Known positions in the standard order; a wrong or reordered list fails here.
KNOWN = {0: "n01440764", 207: "n02099601", 281: "n02123045", 671: "n03792782", 967: "n07920052"}
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "showtell", "data", "imagenet_classes.json")


def read_wnids(path: str) -> list[str]:
    with open(path) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"{path}: expected 1000 distinct wnids, got {len(wnids)} ({len(set(wnids))} distinct)")
    if wnids != sorted(wnids):
        raise SystemExit(f"{path}: wnids are not in sorted order, which is the order of ImageNet-1k classifiers")
    for i, w in KNOWN.items():
        if wnids[i] != w:
            raise SystemExit(f"{path}: class {i} is {wnids[i]}, expected {w}")
    return wnids


def read_synsets(wordnet_dir: str) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets), from data.noun (format: wndb(5))."""
    synsets = {}
    with open(os.path.join(wordnet_dir, "data.noun")) as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" | ")[0].split()
            n_words = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(n_words)]
            i = 4 + 2 * n_words
            n_ptrs = int(fields[i])
            ptrs = [fields[i + 1 + 4 * j: i + 5 + 4 * j] for j in range(n_ptrs)]
            # '@' hypernym, '@i' instance hypernym: both lead up the tree.
            synsets[fields[0]] = (lemmas, [off for sym, off, pos, _ in ptrs if sym in ("@", "@i") and pos == "n"])
    return synsets


def read_sense_ranks(wordnet_dir: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(lowercased lemma, offset) -> (the synset's rank among the lemma's noun
    senses, how many of the lemma's senses are ranked by counts in WordNet's
    sense-tagged corpus), from index.noun. Senses past that count are in no
    particular order."""
    ranks = {}
    with open(os.path.join(wordnet_dir, "index.noun")) as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, n_senses = fields[0], int(fields[2])
            tagged = int(fields[-n_senses - 1])
            for rank, off in enumerate(fields[-n_senses:], start=1):
                ranks[(lemma, off)] = (rank, tagged)
    return ranks


def hypernym_paths(off: str, synsets) -> list[list[str]]:
    """Every path from ``off`` up to a root, most specific first."""
    up = synsets[off][1]
    if not up:
        return [[off]]
    return [[off] + p for h in up for p in hypernym_paths(h, synsets)]


def class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights  # metadata only; nothing is downloaded

    names = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000:
        raise SystemExit(f"torchvision lists {len(names)} ImageNet categories, expected 1000")
    return names


def build(wnids: list[str], wordnet_dir: str, names: list[str]) -> dict:
    synsets = read_synsets(wordnet_dir)
    ranks = read_sense_ranks(wordnet_dir)
    classes, seen = [], {}
    for i, (wnid, name) in enumerate(zip(wnids, names)):
        off = wnid[1:]
        if off not in synsets:
            raise SystemExit(f"{wnid} (class {i}, {name}) is not a WordNet 3.0 noun synset")
        paths = hypernym_paths(off, synsets)
        for p in paths:
            for o in p:
                seen[o] = synsets[o][0]
        classes.append({"index": i, "wnid": wnid, "name": name, "paths": [["n" + o for o in p] for p in paths]})
    table = {}
    for o in sorted(seen):
        lemmas = seen[o]
        rank_tagged = [ranks[(lem.lower(), o)] for lem in lemmas]
        table["n" + o] = {"lemmas": lemmas, "sense_rank": [r for r, _ in rank_tagged],
                          "tagged_senses": [t for _, t in rank_tagged]}
    return {
        "about": "ImageNet-1k classes in classifier order with WordNet 3.0 hypernym paths; "
                 "built by scripts/build_imagenet_words.py",
        "classes": classes,
        "synsets": table,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("synsets", help="sorted ImageNet-1k wnid list, e.g. timm's imagenet_synsets.txt")
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0 dict folder (data.noun, index.noun)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    for f in ("data.noun", "index.noun"):
        if not os.path.isfile(os.path.join(args.wordnet, f)):
            raise SystemExit(f"{args.wordnet}/{f} not found: apt-get install wordnet-base")
    table = build(read_wnids(args.synsets), args.wordnet, class_names())
    with open(args.out, "w") as f:
        # One class or synset per line: small, and diffs stay readable.
        f.write('{"about": %s,\n"classes": [\n' % json.dumps(table["about"]))
        f.write(",\n".join(json.dumps(c) for c in table["classes"]))
        f.write('],\n"synsets": {\n')
        f.write(",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in table["synsets"].items()))
        f.write("}}\n")
    n_paths = sum(len(c["paths"]) for c in table["classes"])
    print(f"wrote {args.out}: {len(table['classes'])} classes, {n_paths} hypernym paths, "
          f"{len(table['synsets'])} synsets", file=sys.stderr)


if __name__ == "__main__":
    main()

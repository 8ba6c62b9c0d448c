"""Small made-up things the tests generate: tiny JPEG photos with captions
in Karpathy's split format (what scripts/get_coco.sh leaves for COCO), and a
scripted decoder whose preferences are known."""
import json
import os

import numpy as np
import torch
from PIL import Image

PAD, START, END, UNK = 0, 1, 2, 3  # the special ids of every showtell vocabulary


class ScriptedDecoder(torch.nn.Module):
    """Next-word logits are a fixed function of the previous word:
    ``table[prev]`` (V,). The state is the previous word (B, 1)."""

    feature_kind = "pooled"

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float)

    def init_state(self, features):
        return (torch.full((features.size(0), 1), START, dtype=torch.long),)

    def step(self, tokens, state):
        return self.table[tokens], (tokens.unsqueeze(1),)

    def reorder_state(self, state, rows):
        return tuple(s.index_select(0, rows) for s in state)


def random_decoder(decoder: str):
    """A small seeded decoder (vocabulary 30, features of 10) whose captions run
    a few words rather than ending at once."""
    from showtell.config import ModelConfig
    from showtell.decoders import build_decoder

    torch.manual_seed(0)
    dec = build_decoder(ModelConfig(decoder=decoder, embed_dim=16, hidden_dim=16, attention_dim=8), 30, 10).eval()
    with torch.no_grad():
        dec.out.bias[END] = -1.0
    return dec

def random_features(decoder, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded rows of the features ``decoder`` reads (random_decoder's sizes):
    (n, 10) pooled or (n, 6, 10) spatial."""
    torch.manual_seed(seed)
    return torch.randn(n, 10) if decoder.feature_kind == "pooled" else torch.randn(n, 6, 10)


WORDS = ["a", "dog", "cat", "man", "woman", "runs", "sits", "on", "the", "grass", "beach", "red", "ball", "with"]


def make_karpathy_set(root, splits: dict[str, int], seed: int = 0, size: int = 32) -> tuple[str, str]:
    """Write ``splits`` (e.g. {"train": 200, "restval": 50, "val": 30, "test": 20})
    photos of ``size`` pixels, five captions each, under ``root`` in COCO's
    layout (train2014/, val2014/) with ``dataset_coco.json``. The colour of a
    photo says what its captions say, so there is something to learn.
    Returns (annotations file, image root)."""
    rng = np.random.default_rng(seed)
    images, imgid = [], 0
    for split, n in splits.items():
        folder = "train2014" if split in ("train", "restval") else "val2014"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for _ in range(n):
            topic = int(rng.integers(0, 4))
            pixels = np.full((size, size, 3), 40 + 50 * topic, dtype=np.uint8)
            pixels += rng.integers(0, 30, size=pixels.shape, dtype=np.uint8)
            name = f"COCO_{folder}_{imgid:012d}.jpg"
            Image.fromarray(pixels).save(os.path.join(root, folder, name), quality=90)
            sentences = []
            for _ in range(5):
                words = ["a", WORDS[1 + topic], WORDS[5 + topic % 2], "on", "the",
                         WORDS[int(rng.integers(9, len(WORDS)))]]
                sentences.append({"raw": " ".join(words).capitalize() + ".", "tokens": words})
            images.append({"filepath": folder, "filename": name, "imgid": imgid, "split": split,
                           "cocoid": imgid, "sentences": sentences})
            imgid += 1
    ann = os.path.join(root, "dataset_coco.json")
    with open(ann, "w", encoding="utf-8") as f:
        json.dump({"dataset": "coco", "images": images}, f)
    return ann, str(root)

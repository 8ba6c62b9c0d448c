"""The judgments by eye (docs/judgments.json) stay on the same photos: the
sample that scripts/judge_photos.py draws with the recorded seed, every
verdict one of the three kinds, and its counts what the README quotes."""
import json
import os
import re
import sys

from conftest import DATA, ROOT, _need

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import judge_photos  # noqa: E402


def test_judged_photos_are_the_seeded_sample_and_every_verdict_is_a_kind():
    data = _need(os.path.join(DATA, "coco-2733"))
    record = judge_photos.load()
    sample = judge_photos.draw_sample(data, record["seed"], judge_photos.N)
    assert [p["image_id"] for p in record["photos"]] == [it.image_id for it in sample]
    assert len(record["photos"]) == 40
    for photo in record["photos"]:
        assert photo["shows"] and photo["captions"]
        for judged in photo["captions"].values():
            assert judged["verdict"] in judge_photos.VERDICTS, photo
    # The README's table quotes these counts.
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for model, counts in judge_photos.summary(record).items():
        quoted = f"{counts['right']} / {counts['partly']} / {counts['wrong']}"
        assert quoted in readme, f"README should quote {model}'s judgments as {quoted}"

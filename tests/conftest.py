"""Shared fixtures. Real data is read in place from ../shared/data (or
$SHOWTELL_DATA); it is never copied into the repository."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.environ.get("SHOWTELL_DATA", os.path.join(ROOT, "..", "shared", "data"))
FLICKR8K = os.path.join(DATA, "flickr8k")
COCO_MINI = os.path.join(DATA, "coco-mini")


def _need(path: str) -> str:
    if not os.path.exists(path):
        msg = (f"test data not found at {os.path.abspath(path)}: these tests read the real Flickr8k / "
               f"COCO data in place from ../shared/data (or set SHOWTELL_DATA)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def flickr8k_root() -> str:
    return _need(os.path.join(FLICKR8K, "Flickr8k.token.txt")) and FLICKR8K


@pytest.fixture(scope="session")
def coco_mini() -> str:
    return _need(os.path.join(COCO_MINI, "annotations", "captions_train2017.json")) and COCO_MINI


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's feature cache."""
    monkeypatch.setenv("SHOWTELL_CACHE", str(tmp_path / "cache"))

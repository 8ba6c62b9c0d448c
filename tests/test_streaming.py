"""Cached features are read row by row from disk (os.preadv), so a training
epoch's resident memory stays flat however large the cache file is."""
import os

import numpy as np
import pytest

from showtell.features import NpyRows


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_rows_read_from_disk_equal_the_array(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((50, 7, 3)).astype(np.float16)
    np.save(tmp_path / "a.npy", arr)
    rows = NpyRows(str(tmp_path / "a.npy"))
    assert rows.shape == arr.shape and rows.dtype == arr.dtype and len(rows) == 50 and rows.ndim == 3
    index = np.array([7, 3, 3, 4, 5, 49, 0, 8])  # any order, repeats, runs of neighbours
    assert np.array_equal(rows[index], arr[index])
    assert np.array_equal(rows[-1], arr[-1]) and np.array_equal(rows[10:20:3], arr[10:20:3])
    assert np.array_equal(np.asarray(rows), arr) and rows[np.array([], dtype=int)].shape == (0, 7, 3)
    with pytest.raises(IndexError):
        rows[np.array([50])]


def test_reading_every_row_keeps_resident_memory_flat(tmp_path):
    """64 MB of rows read in random batches: the memory map's resident size
    grows by the file, the row reader's does not."""
    n, row = 4096, (16, 256)  # 16 KB rows of float32: 64 MB
    path = str(tmp_path / "big.npy")
    np.save(path, np.ones((n,) + row, dtype=np.float32))
    batches = np.random.default_rng(0).permutation(n).reshape(-1, 128)

    def growth(array) -> float:
        start, total = _rss_mb(), 0.0
        for b in batches:
            total += float(np.asarray(array[np.sort(b)], dtype=np.float32)[:, 0, 0].sum())
        assert total == n
        return _rss_mb() - start

    assert growth(NpyRows(path)) < 16
    assert growth(np.load(path, mmap_mode="r")) > 48  # what the row reader avoids
